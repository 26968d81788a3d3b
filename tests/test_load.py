"""Capacity, queues, failures and failover (p2pllm_abm/load.py and the tick that uses it)."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.dynamics import best_paths, petals_scores, route_requests
from p2pllm_abm.load import arrival_ranks, serve, splice_paths
from p2pllm_abm.metrics import PERCENTILES, nan_percentiles, request_summary, stage_rows
from p2pllm_abm.network import PeerTable, latency
from tests.strategies import span_networks
from tests.test_dynamics import environment
from tests.test_economics import params


@given(hops=st.lists(st.integers(-1, 5), min_size=1, max_size=40), seed=st.integers(0, 2**31 - 1))
def test_arrival_ranks_order_each_peers_arrivals(hops, seed):
    """The ranks of a peer's arrivals are 0, 1, ..., a_i - 1 (a queue order), 0 for no hop."""
    hops = np.array(hops)
    ranks = np.asarray(arrival_ranks(jnp.asarray(hops), jax.random.key(seed), 6))
    for peer in range(6):
        assert sorted(ranks[hops == peer].tolist()) == list(range(int((hops == peer).sum())))
    assert (ranks[hops < 0] == 0).all()


@given(backlog=st.lists(st.floats(0, 50), min_size=3, max_size=3), arrivals=st.lists(st.integers(0, 20), min_size=3,
       max_size=3), capacity=st.lists(st.floats(0.1, 30), min_size=3, max_size=3))
def test_serve_conserves_requests(backlog, arrivals, capacity):
    """served + left = backlog + arrivals, served <= capacity, and a queue is left only when the peer
    served its full capacity; a failing peer's queue is lost."""
    b, a, mu = (jnp.asarray(x, dtype=float) for x in (backlog, arrivals, capacity))
    served, left = serve(b, a, mu, None)
    np.testing.assert_allclose(served + left, b + a, rtol=1e-12)
    assert (served <= mu + 1e-12).all() and ((left == 0) | np.isclose(served, mu)).all()
    _, lost = serve(b, a, mu, jnp.array([True, False, True]))
    assert lost[0] == lost[2] == 0 and lost[1] == left[1]


def test_queue_waits_match_the_closed_form():
    """One peer of capacity mu = step_ms / c = 2 and 5 requests per step: the backlog after t steps
    is 3t, and the k-th arrival of step t waits (3 (t - 1) + k) / mu * step_ms before its c ms, so
    the recorded hop-time percentiles are those of that set."""
    cfg = load_config("paper_28", overrides=[
        "network.peers=1", "network.stages=1", "network.initial_distribution=null", "network.cost_range=[5,5]", "network.latency_range=[0,0]",
        "network.step_ms=10", "clients.count=5", "run.record_interval=10", "allocation.enabled=false",
        "report.table_steps=[0]"])
    model = P2PLLMModel(cfg)
    model.run(10)
    assert float(model.engine.state.backlog[0]) == pytest.approx(30.0)
    times = np.array([(3 * (t - 1) + k) / 2 * 10 + 5 for t in range(1, 11) for k in range(5)])
    row = stage_rows(model.metrics_frame()).iloc[-1]
    for q in (50, 95, 99):
        assert row[f"hop_time_p{q}"] == pytest.approx(np.percentile(times, q), rel=1e-12)
    assert row["throughput"] == pytest.approx(2.0) and row["utilisation"] == pytest.approx(1.0)
    assert row["queued"] == pytest.approx(30.0)


#: route_requests compiled once per (routing, stages): the networks below are padded to 9 peers
routed_jit = jax.jit(route_requests, static_argnames=("routing", "n_stages"))
paths_jit = jax.jit(best_paths, static_argnames=("n_stages",))


def _padded(peers, rows: int = 9):
    """``peers`` with dead rows appended up to ``rows`` (dead peers take no part in routing)."""
    extra = rows - len(peers)
    return PeerTable(np.concatenate([peers.stage_start, np.zeros(extra, int)]),
                     np.concatenate([peers.stage_end, np.ones(extra, int)]), np.concatenate([peers.cost, np.ones(extra)]),
                     np.concatenate([peers.price, np.ones(extra)]), np.concatenate([peers.position, np.zeros((extra, 2))]),
                     np.concatenate([peers.alive, np.zeros(extra, bool)]), peers.n_stages, peers.latency_range)


def _network_with_failures(peers, draw_failing):
    env = environment(peers, np.full(3, 0.5), np.random.default_rng(0).uniform(0, 1, (3, 2)), params())
    failing = np.array(draw_failing, dtype=bool)[: len(peers)] & peers.alive
    return env._replace(failing=jnp.asarray(failing), hop_overhead=18.0), failing


def _completions(peers, usable, boundary):
    """Every chain of usable peers tiling [boundary, m), by brute force."""
    if boundary == peers.n_stages:
        yield []
        return
    for peer in np.flatnonzero(usable & (peers.stage_start == boundary)).tolist():
        for rest in _completions(peers, usable, int(peers.stage_end[peer])):
            yield [peer, *rest]


@pytest.mark.parametrize("routing", ["path", "petals"])
@settings(max_examples=15)
@given(peers=span_networks(), failing=st.lists(st.booleans(), min_size=9, max_size=9))
def test_failover_reroutes_from_the_failed_boundary(routing, peers, failing):
    """Path failover keeps the hops before the first failed one, never uses a failing peer, and
    drops a request only when no completion from that boundary over live peers that did not fail
    exists; the new suffix is the best completion (Petals' scores: compute + overhead + latency)."""
    peers = _padded(peers)
    env, failing = _network_with_failures(peers, failing)
    price = jnp.asarray(peers.price)
    routed = routed_jit(jax.random.key(1), env, price, routing, peers.n_stages)
    before = routed_jit(jax.random.key(1), env._replace(failing=None), price, routing, peers.n_stages).hops
    usable = peers.alive & ~failing
    for client in range(3):
        old = [p for p in np.asarray(before[client]).tolist() if p >= 0]
        new = [p for p in np.asarray(routed.hops[client]).tolist() if p >= 0]
        hit = [k for k, p in enumerate(old) if failing[p]]
        if not hit:
            assert new == old
            continue
        prefix = old[: hit[0]]
        boundary = int(peers.stage_start[old[hit[0]]])
        options = list(_completions(peers, usable, boundary))
        assert bool(routed.complete[client]) == bool(options)
        if not options:
            continue
        assert new[: len(prefix)] == prefix and not failing[new].any()
        if routing == "petals":
            home = np.asarray(env.geometry.client_position[client])
            origin = peers.position[prefix[-1]] if prefix else home

            def time(chain):
                spots = [origin, *peers.position[chain]]
                hops = sum(latency(a, b, peers.latency_range) for a, b in zip(spots, spots[1:]))
                return sum(peers.cost[chain] + 18.0) + hops + latency(peers.position[chain[-1]], home, peers.latency_range)

            assert time(new[len(prefix):]) == pytest.approx(min(time(chain) for chain in options), rel=1e-9, abs=1e-9)


@settings(max_examples=15)
@given(failing=st.lists(st.booleans(), min_size=20, max_size=20), seed=st.integers(0, 1000))
def test_stage_failover_takes_the_next_choice(failing, seed):
    """Per-stage failover replaces exactly the failed hops, by a live peer of the same stage that
    did not fail (the best of the same noisy weights), and leaves a hop empty only when its stage
    has no such peer."""
    from tests.test_dynamics import market_table

    peers = market_table(seed)
    env, failing = _network_with_failures(peers, failing)
    price = jnp.asarray(peers.price)
    routed = route_requests(jax.random.key(seed), env, price, "stage", 2)
    before = np.asarray(route_requests(jax.random.key(seed), env._replace(failing=None), price, "stage", 2).hops)
    after = np.asarray(routed.hops)
    for client, stage in itertools.product(range(3), range(2)):
        if not failing[before[client, stage]]:
            assert after[client, stage] == before[client, stage]
        elif (usable := peers.alive & ~failing & (peers.stage == stage)).any():
            assert usable[after[client, stage]]
        else:
            assert after[client, stage] == -1
    assert (np.asarray(routed.retries) == failing[before].sum(axis=1)).all()


@settings(max_examples=15)
@given(peers=span_networks(served=True))
def test_best_paths_from_an_origin_finish_the_prefix_optimally(peers):
    """best_paths started after a peer (failover's origin) returns the cheapest completion from
    that peer's end boundary (Petals' deterministic scores), by brute force."""
    peers = _padded(peers)
    env, _ = _network_with_failures(peers, [False] * 9)
    score, weight = petals_scores(env, jnp.asarray(peers.price))
    for origin in np.flatnonzero(peers.alive & (peers.stage_end < peers.n_stages)).tolist():
        path = np.asarray(paths_jit(env, score, weight, peers.n_stages, jnp.full(3, origin))[0])
        chain = [p for p in path.tolist() if p >= 0]
        options = list(_completions(peers, peers.alive, int(peers.stage_end[origin])))
        assert bool(chain) == bool(options)
        if chain:
            assert chain in options


@given(prefix=st.integers(0, 3), suffix=st.integers(1, 3))
def test_splice_keeps_the_prefix_then_the_suffix(prefix, suffix):
    width = prefix + suffix + 1
    old = np.array([-1] * (width - prefix - 2) + list(range(10, 10 + prefix)) + [99, 98])
    new = np.array([-1] * (width - suffix) + list(range(50, 50 + suffix)))
    first = width - 2  # the column of 99, the failed hop
    spliced = np.asarray(splice_paths(jnp.asarray(old)[None], jnp.array([first]), jnp.asarray(new)[None]))[0]
    assert [p for p in spliced.tolist() if p >= 0] == list(range(10, 10 + prefix)) + list(range(50, 50 + suffix))
    assert (spliced[: width - prefix - suffix] == -1).all()


SCENARIOS = {
    "stage": ["failures.rate=0.2", "failures.downtime=2", "network.step_ms=5"],
    "path": ["clients.routing=path", "failures.rate=0.3", "failures.max_retries=0", "network.span_length_probs=[0.5,0.5]",
             "allocation.enabled=false"],
    "petals": ["clients.routing=petals", "allocation.rule=petals", "failures.rate=0.25", "churn.join_rate=1",
               "churn.leave_rate=0.05", "network.step_ms=5", "clients.load_aware=true"],
    "outside": ["market.outside_option=1.0", "failures.rate=0.9", "failures.downtime=null", "churn.join_rate=0.5"],
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_request_accounting_closes(name):
    """Every request sent ends as exactly one of served / failed over / dropped (with a reason):
    sent = clients x steps at request rate 1, and served + failed_over + dropped = sent."""
    cfg = load_config("paper_28", overrides=["run.steps=30", "run.record_interval=10", "report.table_steps=[0]",
                                             *SCENARIOS[name]])
    model = P2PLLMModel(cfg)
    model.run(30)
    requests = request_summary(model.outcomes)
    assert requests["sent"] == cfg.clients.count * 30
    assert requests["served"] + requests["failed_over"] + requests["dropped"] == requests["sent"]
    assert sum(requests["dropped_by_reason"].values()) == requests["dropped"]
    if name == "path":
        assert requests["failed_over"] == 0 and requests["dropped_by_reason"]["retries"] > 0  # no failover allowed
    if name == "outside":
        assert requests["dropped_by_reason"]["walked_away"] > 0
    if name in ("stage", "petals"):
        assert requests["failed_over"] > 0 and requests["dropped_by_reason"]["retries"] == 0


def test_failures_with_the_ledger_penalise_failed_hops_and_conserve_money():
    """With the ledger on, a hop whose peer failed is not paid and its SLA penalty is taken; the
    books balance after every step."""
    cfg = load_config("paper_table1_ledger", overrides=[
        "network.peers=28", "network.initial_distribution=null", "failures.rate=0.1", "run.steps=20",
        "run.record_interval=10", "report.table_steps=[0]", "ledger.check_every_step=true"])
    model = P2PLLMModel(cfg)
    model.run(20)
    assert model.ledger.failed_hops > 0
    assert model.ledger.summary()["conserved"]
    rows = model.ledger.sla.escrows
    assert (rows.delivered[: rows.size] == np.inf).sum() == model.ledger.failed_hops  # one penalty row each


@settings(max_examples=200)
@given(rows=st.integers(0, 30), columns=st.integers(1, 5), missing=st.floats(0.0, 1.0), rounded=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_load_percentiles_are_numpys_nanpercentile(rows, columns, missing, rounded, seed):
    """nan_percentiles (all groups by one sort) gives np.nanpercentile's numbers exactly: NaN
    ignored, groups of one value, ties (rounded samples), and groups without any value (NaN); the
    groups as rows, also of a transposed (non-contiguous) view."""
    rng = np.random.default_rng(seed)
    samples = rng.exponential(10.0, (rows, columns))
    samples = np.round(samples) if rounded else samples
    samples[rng.random((rows, columns)) < missing] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups
        expected = np.nanpercentile(samples, PERCENTILES, axis=0) if rows else np.full((3, columns), np.nan)
    np.testing.assert_array_equal(nan_percentiles(samples.T), expected)
    np.testing.assert_array_equal(nan_percentiles(np.ascontiguousarray(samples.T)), expected)
