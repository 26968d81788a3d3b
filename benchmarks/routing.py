"""Routing speed: single-objective paths against networkx, and the exact Pareto set.

    python -m benchmarks.routing            # or: make bench-routing
    python -m benchmarks.routing --quick    # 10^3 and 10^4 peers only

Networks of 10^3, 10^4 and 10^5 peers over 32 stages with spans (lengths 1, 2, 3 with
probabilities 0.5, 0.3, 0.2), costs ~ U(1, 50) per stage served, prices ~ U(1, 10), latencies in
[1, 20] ms from positions, a client at the centre, alpha = 0.5. Every peer links to every peer
that starts where it ends (the paper's DAG), so the graph has about n^2 / 32 edges.

Single objective (the weighted sum, client latencies included), timed from the PeerTable:

- ``ours``: :func:`p2pllm_abm.routing.best_path`, Alg. 2 boundary by boundary;
- ``Alg. 2 (CSR)``: :func:`build_dag` + :func:`edge_weights` + :func:`topological_order` +
  :func:`shortest_path`, the paper's algorithms on the explicit edge list;
- ``networkx``: the same DAG as an ``nx.DiGraph`` with edge weights (build time shown apart),
  queried with ``nx.shortest_path`` (bidirectional Dijkstra) and by DP over ``nx.topological_sort``
  (how ``nx.dag_longest_path`` works); the faster one is the baseline.

All of them must agree on the optimal length (checked). Graphs whose edge list would not fit in
memory are not built: the row says so and gives networkx's time extrapolated per edge from the
largest measured size. Exact Pareto set: :func:`p2pllm_abm.pareto.pareto_paths`, with the
frontier size, its supported points and the labels kept. Times are medians of 3 after a warm-up
(one run where a run takes minutes).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import networkx as nx
import numpy as np

from p2pllm_abm.config import NetworkConfig
from p2pllm_abm.network import PeerTable
from p2pllm_abm.pareto import pareto_paths
from p2pllm_abm.routing import (
    best_path,
    boundary_members,
    build_dag,
    edge_weights,
    shortest_path,
    topological_order,
)

from .timing import fmt, timed

STAGES = 32
SPAN_LENGTH_PROBS = [0.5, 0.3, 0.2]
ALPHA = 0.5
CLIENT = np.array([0.5, 0.5])
#: explicit edge lists (CSR arrays, networkx graphs) are built only up to this many edges
MAX_EXPLICIT_EDGES = 5_000_000


def network(n: int, seed: int = 0) -> PeerTable:
    rng = np.random.default_rng(seed)
    peers = PeerTable.from_config(NetworkConfig(peers=n, stages=STAGES, span_length_probs=SPAN_LENGTH_PROBS), rng)
    peers.price = rng.uniform(1.0, 10.0, n)
    return peers


def edge_count(peers: PeerTable) -> int:
    starts, ends = boundary_members(peers)
    return len(starts[0]) + len(ends[-1]) + sum(len(ends[b]) * len(starts[b]) for b in range(1, STAGES))


def csr_route(peers: PeerTable) -> float:
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    return shortest_path(dag, edge_weights(dag, peers, ALPHA, CLIENT), topological_order(dag))[0]


def networkx_graph(peers: PeerTable) -> tuple[nx.DiGraph, int, int]:
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    tails, heads = dag.edges()
    graph = nx.DiGraph()
    graph.add_weighted_edges_from(zip(tails.tolist(), heads.tolist(), edge_weights(dag, peers, ALPHA, CLIENT).tolist()))
    return graph, dag.source, dag.sink


def networkx_dag_shortest_path(graph: nx.DiGraph, source: int, sink: int) -> list[int]:
    """Shortest path by DP over ``nx.topological_sort``, the way ``nx.dag_longest_path`` works
    (which itself cannot be used: with negated weights it returns the empty path)."""
    dist, previous = {source: 0.0}, {}
    for u in nx.topological_sort(graph):
        if u not in dist:
            continue
        for v, data in graph.adj[u].items():
            candidate = dist[u] + data["weight"]
            if candidate < dist.get(v, np.inf):
                dist[v], previous[v] = candidate, u
    path = [sink]
    while path[-1] != source:
        path.append(previous[path[-1]])
    return path[::-1]


def networkx_length(graph: nx.DiGraph, path: list[int]) -> float:
    return sum(graph[u][v]["weight"] for u, v in zip(path, path[1:]))


def bytes_per_edge(peers: PeerTable) -> float:
    """networkx's memory per edge of this DAG, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    graph, _, _ = networkx_graph(peers)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / graph.number_of_edges()


def main() -> None:
    parser = argparse.ArgumentParser(description="routing benchmark")
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 peers only")
    sizes = (1_000, 10_000) if parser.parse_args().quick else (1_000, 10_000, 100_000)
    per_edge_bytes = bytes_per_edge(network(1_000))
    rows, per_edge_seconds = [], None
    for n in sizes:
        peers = network(n)
        edges = edge_count(peers)
        explicit = edges <= MAX_EXPLICIT_EDGES
        print(f"{n:,} peers, {edges:,} edges ...", flush=True)
        ours, (length, _) = timed(lambda: best_path(peers, ALPHA, CLIENT))
        row = {"peers": n, "edges": edges, "ours": ours}
        if explicit:
            row["csr"], csr_length = timed(lambda: csr_route(peers))
            started = time.perf_counter()
            graph, source, sink = networkx_graph(peers)
            row["nx_build"] = time.perf_counter() - started
            dijkstra, path = timed(lambda: nx.shortest_path(graph, source, sink, weight="weight"), warmup=False)
            dag_dp, dp_path = timed(lambda: networkx_dag_shortest_path(graph, source, sink), warmup=False)
            for other in (csr_length, networkx_length(graph, path), networkx_length(graph, dp_path)):
                assert abs(other - length) <= 1e-9 * max(1.0, abs(length)), (other, length)
            row["nx"] = min(dijkstra, dag_dp)
            row["nx_method"] = "Dijkstra" if dijkstra <= dag_dp else "DAG DP"
            per_edge_seconds = row["nx"] / edges
            del graph
            gc.collect()
        else:
            row["nx_estimate"] = per_edge_seconds * edges
        repeats = 1 if n >= 100_000 else 3
        row["pareto"], front = timed(lambda: pareto_paths(peers, CLIENT), repeats=repeats, warmup=repeats > 1)
        row["front"], row["supported"], row["labels"] = len(front), int(front.supported.sum()), front.labels
        rows.append(row)

    print("\nSingle-objective routing (alpha = 0.5) and the exact Pareto set, 32 stages with spans\n")
    print("| peers | edges | ours | Alg. 2 (CSR) | networkx (build) | networkx / ours | Pareto set | frontier "
          "(supported) | labels |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "nx" in row:
            csr, baseline = fmt(row["csr"]), f"{fmt(row['nx'])} {row['nx_method']} ({fmt(row['nx_build'])})"
            ratio = f"{row['nx'] / row['ours']:,.0f}x"
        else:
            gigabytes = row["edges"] * per_edge_bytes / 2**30
            csr = "not built"
            baseline = f"not built: ~{gigabytes:,.0f} GiB; est. {fmt(row['nx_estimate'])}"
            ratio = f"~{row['nx_estimate'] / row['ours']:,.0f}x (est.)"
        print(f"| {row['peers']:,} | {row['edges']:,} | {fmt(row['ours'])} | {csr} | {baseline} | {ratio} "
              f"| {fmt(row['pareto'])} | {row['front']} ({row['supported']}) | {row['labels']:,} |")
    print(f"\nnetworkx {nx.__version__}: {per_edge_bytes:.0f} bytes per edge (tracemalloc at 10^3 peers); "
          f"estimates scale its measured time per edge at the largest size it ran.")


if __name__ == "__main__":
    main()
