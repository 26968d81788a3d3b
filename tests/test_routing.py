"""Alg. 1-2 against brute-force enumeration on random layered networks with spans."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pllm_abm.network import PeerTable
from p2pllm_abm.routing import (
    PeerDAG,
    best_path,
    build_dag,
    edge_weights,
    path_objectives,
    shortest_path,
    topological_order,
)
from tests.strategies import span_networks


def all_paths(peers):
    """Every chain of live peers whose spans tile [0, m), by brute force over peer sequences."""
    live = [i for i in range(len(peers)) if peers.alive[i]]
    for length in range(1, peers.n_stages + 1):
        for seq in itertools.permutations(live, length):
            if peers.stage_start[seq[0]] != 0 or peers.stage_end[seq[-1]] != peers.n_stages:
                continue
            if all(peers.stage_end[u] == peers.stage_start[v] for u, v in zip(seq, seq[1:])):
                yield list(seq)


def weighted(peers, path, alpha):
    price, time = path_objectives(peers, path)
    return alpha * price + (1 - alpha) * time


@given(peers=span_networks(), alpha=st.floats(0.0, 1.0))
def test_shortest_path_equals_brute_force(peers, alpha):
    length, path = best_path(peers, alpha)
    candidates = list(all_paths(peers))
    if not candidates:
        assert (length, path) == (float("inf"), [])
        return
    best = min(weighted(peers, p, alpha) for p in candidates)
    assert path in candidates
    assert length == pytest.approx(best, rel=1e-12, abs=1e-9)
    assert weighted(peers, path, alpha) == pytest.approx(length, rel=1e-12, abs=1e-9)


@given(peers=span_networks())
def test_topological_order_respects_every_edge(peers):
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    order = topological_order(dag)
    assert sorted(order.tolist()) == list(range(dag.n_nodes))
    rank = np.empty(dag.n_nodes, dtype=np.int64)
    rank[order] = np.arange(dag.n_nodes)
    tails, heads = dag.edges()
    assert np.all(rank[tails] < rank[heads])
    live = np.flatnonzero(peers.alive)
    expected_edges = sum(peers.stage_end[u] == peers.stage_start[v] for u in live for v in live)
    expected_edges += np.sum(peers.stage_start[live] == 0) + np.sum(peers.stage_end[live] == peers.n_stages)
    assert len(heads) == expected_edges


def test_edge_weights_are_eq1_plus_weighted_latency():
    peers = PeerTable(np.array([0, 1]), np.array([1, 2]), np.array([10.0, 20.0]), np.array([3.0, 5.0]),
                      np.array([[0.0, 0.0], [1.0, 1.0]]), np.ones(2, dtype=bool), 2, (1.0, 20.0))
    length, path = best_path(peers, 0.25)
    assert path == [0, 1]
    # w_0 + w_1 + (1 - alpha) * l_01, with l_01 = 20 (the square's diagonal)
    assert length == pytest.approx(0.25 * 8 + 0.75 * 30 + 0.75 * 20.0)
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, 2)
    assert edge_weights(dag, peers, 0.25)[dag.indptr[1]] == 0.0  # last peer -> sink


def test_cycle_is_reported():
    cyclic = PeerDAG(n_peers=2, indptr=np.array([0, 1, 2, 3, 3]), indices=np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="cycle"):
        topological_order(cyclic)


def test_million_node_chain_needs_no_recursion():
    n = 1_000_000
    stage = np.arange(n)
    dag = build_dag(stage, stage + 1, np.ones(n, dtype=bool), n)
    order = topological_order(dag)
    assert order[0] == dag.source and order[-1] == dag.sink
    assert np.array_equal(order[1:-1], np.arange(n))
    length, path = shortest_path(dag, np.ones(len(dag.indices)), order)
    assert path == list(range(n)) and length == n + 1


@given(peers=span_networks(), alpha=st.floats(0.0, 1.0), client=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_boundary_dp_equals_alg2_on_the_csr_dag(peers, alpha, client):
    client = np.array(client)
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    expected, _ = shortest_path(dag, edge_weights(dag, peers, alpha, client))
    length, path = best_path(peers, alpha, client)
    assert length == pytest.approx(expected, rel=1e-12, abs=1e-9)
    if path:
        price, time = path_objectives(peers, path, client)
        assert alpha * price + (1 - alpha) * time == pytest.approx(length, rel=1e-12, abs=1e-9)
