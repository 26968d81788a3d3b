"""The Petals baseline: block selection, rebalancing and min-latency routing on hand-built networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.allocation import block_throughput, choose_best_start, petals_should_move
from p2pllm_abm.dynamics import route_requests
from p2pllm_abm.network import PeerTable, latency
from tests.test_dynamics import environment
from tests.test_economics import params


def test_block_throughput_sums_the_spans():
    start, end = np.array([0, 1, 0, 2]), np.array([2, 3, 1, 3])
    throughput = np.array([1.0, 2.0, 4.0, 8.0])
    counted = np.array([True, True, True, False])
    np.testing.assert_array_equal(block_throughput(start, end, throughput, counted, 3), [5.0, 3.0, 2.0])


@pytest.mark.parametrize("throughput,length,start", [
    ([5, 1, 3, 2], 2, 1),  # windows sorted (1,5) (1,3) (2,3): the one holding the weakest, then the next-weakest
    ([5, 1, 3, 2], 1, 1),
    ([2, 2, 2], 2, 0),  # ties go to the smallest start
    ([1, 4, 4, 1], 2, 0),  # (1,4) (4,4) (1,4): a tie between starts 0 and 2
])
def test_choose_best_start_is_petals_rule(throughput, length, start):
    brute_force = min((sorted(throughput[i:i + length]), i) for i in range(len(throughput) - length + 1))[1]
    assert choose_best_start(np.array(throughput, dtype=float), length) == brute_force == start


def _swarm(per_stage):
    start = np.repeat(np.arange(len(per_stage)), per_stage)
    return start, start + 1, np.ones(len(start)), np.ones(len(start), dtype=bool)


def test_petals_moves_only_when_the_bottleneck_rises_enough():
    """Six unit servers on [4, 1, 1]: a greedy re-placement reaches [2, 2, 2], lifting the weakest
    block from 1 to 2 (quality 0.5 < 0.75): a server of block 0 moves to block 1 (the first weakest).
    Five on [3, 1, 1] can reach no better minimum than 1: nobody moves. balance_quality 0: never."""
    rng = np.random.default_rng(0)
    start, end, thr, counted = _swarm([4, 1, 1])
    assert petals_should_move(0, start, end, thr, counted, 3, 0.75, rng) == 1
    assert petals_should_move(4, start, end, thr, counted, 3, 0.75, rng) is None  # leaving opens a gap
    assert petals_should_move(0, start, end, thr, counted, 3, 0.0, rng) is None
    start, end, thr, counted = _swarm([3, 1, 1])
    assert all(petals_should_move(p, start, end, thr, counted, 3, 0.75, rng) is None for p in range(5))


def test_petals_routing_is_the_fastest_path_whatever_the_prices():
    """routing = petals: every client takes the path of least compute + 18 ms per hop + latencies
    (brute force), so all clients with the same view herd on it, and prices do not matter."""
    rng = np.random.default_rng(3)
    n = 8
    peers = PeerTable(np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([1, 1, 1, 1, 2, 2, 2, 2]), rng.uniform(1, 50, n),
                      rng.uniform(0, 10, n), rng.uniform(0, 1, (n, 2)), np.ones(n, dtype=bool), 2)
    home = np.full((5, 2), 0.5)
    env = environment(peers, np.full(5, 0.5), home, params())._replace(hop_overhead=18.0)

    def time(a, b):
        return (latency(home[0], peers.position[a], peers.latency_range) + peers.cost[a] + 18 + peers.latency(a, b)
                + peers.cost[b] + 18 + latency(peers.position[b], home[0], peers.latency_range))

    best = min(((a, b) for a in range(4) for b in range(4, 8)), key=lambda ab: time(*ab))
    for price in (peers.price, peers.price[::-1] * 100):
        hops = np.asarray(route_requests(jax.random.key(0), env, jnp.asarray(price), "petals", 2).hops)
        assert (hops == np.array(best)).all()


def test_petals_rebalancing_lifts_the_bottleneck_to_its_stopping_point():
    """28 equal servers start on [22, 2, 2, 2]; with every server checking each period, Petals'
    rule stops only when a greedy re-placement (which reaches 7 per block) would not lift the
    weakest block by more than 1 / 0.75: so it ends with at least 6 servers on every block."""
    model = P2PLLMModel(load_config("paper_28", overrides=[
        "allocation.rule=petals", "clients.routing=petals", "network.initial_distribution=[22,2,2,2]",
        "network.cost_range=[10,10]", "allocation.move_fraction=1.0", "run.record_interval=10",
        "report.table_steps=[0]"]))
    model.run(60)
    assert model.peers.stage_counts().min() >= 6 and model.moves > 0


def test_petals_spans_keep_their_length_and_fit():
    """On a network of two-stage spans with joins, servers that move or join keep a span that fits."""
    model = P2PLLMModel(load_config("paper_28", overrides=[
        "allocation.rule=petals", "clients.routing=petals", "network.span_length_probs=[0.5,0.5]",
        "allocation.move_fraction=1.0", "churn.join_rate=0.5", "run.record_interval=10", "report.table_steps=[0]"]))
    lengths = model.peers.stage_end[:28] - model.peers.stage_start[:28]
    model.run(40)
    peers = model.peers
    kept = peers.present[:28]
    assert ((peers.stage_end - peers.stage_start)[:28][kept] == lengths[kept]).all()
    assert (peers.stage_start[peers.present] >= 0).all() and (peers.stage_end[peers.present] <= peers.n_stages).all()
    np.testing.assert_allclose(peers.cost[peers.present], peers.span_cost(peers.stage_start, peers.stage_end,
                                                                         np.arange(len(peers)))[peers.present])
