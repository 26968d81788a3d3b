"""Path finding through the network (paper section 3.1-3.2, Alg. 1-2).

The network is a DAG: peer ``v`` may follow peer ``u`` when ``stage_start[v] == stage_end[u]``;
a virtual source precedes every peer serving stage 0 and a virtual sink follows every peer
serving the last stage. A client with preference ``alpha`` scores a path by
``alpha * sum(price) + (1 - alpha) * (sum(cost) + sum(latency))`` (eq. 1 summed along the path,
with the latencies between consecutive peers). Both algorithms are iterative and run in
O(V + E).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .network import PeerTable


@dataclass(frozen=True)
class PeerDAG:
    """Compatibility DAG in CSR form over the peers ``0..n-1`` plus ``source = n``, ``sink = n+1``."""

    n_peers: int
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def source(self) -> int:
        return self.n_peers

    @property
    def sink(self) -> int:
        return self.n_peers + 1

    @property
    def n_nodes(self) -> int:
        return self.n_peers + 2

    def successors(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """All edges as ``(tails, heads)``."""
        return np.repeat(np.arange(self.n_nodes), np.diff(self.indptr)), self.indices


def build_dag(stage_start: np.ndarray, stage_end: np.ndarray, alive: np.ndarray, n_stages: int) -> PeerDAG:
    """Edges ``u -> v`` for live peers with ``stage_start[v] == stage_end[u]``, ``source -> v`` for
    ``stage_start[v] == 0`` and ``u -> sink`` for ``stage_end[u] == n_stages``."""
    n = len(stage_start)
    live = np.flatnonzero(alive)
    # live peers grouped by the boundary they start at; the sink "starts" at n_stages
    starters = np.concatenate([live[np.argsort(stage_start[live], kind="stable")], [n + 1]])
    boundary = np.concatenate([np.sort(stage_start[live]), [n_stages]])
    first = np.searchsorted(boundary, np.arange(n_stages + 2))
    heads = [starters[first[stage_end[u]] : first[stage_end[u] + 1]] if alive[u] else starters[:0] for u in range(n)]
    heads += [starters[first[0] : first[1]], starters[:0]]  # source, sink
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in heads])])
    return PeerDAG(n_peers=n, indptr=indptr, indices=np.concatenate(heads).astype(np.int64))


def topological_order(dag: PeerDAG) -> np.ndarray:
    """Alg. 1: reverse DFS post-order, with an explicit stack (no recursion limit).

    Raises ``ValueError`` if the graph has a cycle (the ``temp`` marks of Alg. 1)."""
    visited = np.zeros(dag.n_nodes, dtype=bool)
    on_stack = np.zeros(dag.n_nodes, dtype=bool)
    indptr, indices = dag.indptr, dag.indices
    result = []
    for root in range(dag.n_nodes):
        if visited[root]:
            continue
        stack = [(root, int(indptr[root]))]
        on_stack[root] = True
        while stack:
            u, cursor = stack[-1]
            if cursor < indptr[u + 1]:
                stack[-1] = (u, cursor + 1)
                v = int(indices[cursor])
                if on_stack[v]:
                    raise ValueError(f"the peer graph has a cycle through node {v}")
                if not visited[v]:
                    on_stack[v] = True
                    stack.append((v, int(indptr[v])))
            else:
                stack.pop()
                on_stack[u] = False
                visited[u] = True
                result.append(u)
    return np.array(result[::-1], dtype=np.int64)


def edge_weights(dag: PeerDAG, peers: PeerTable, alpha: float) -> np.ndarray:
    """Weight of every edge ``u -> v``: ``w_v + (1 - alpha) l_uv`` with ``w_v`` from eq. 1;
    edges into the sink weigh 0 and edges out of the source carry no latency."""
    tails, heads = dag.edges()
    into_peer = heads < dag.n_peers
    between_peers = into_peer & (tails < dag.n_peers)
    weights = np.zeros(len(heads))
    v = heads[into_peer]
    weights[into_peer] = alpha * peers.price[v] + (1.0 - alpha) * peers.cost[v]
    weights[between_peers] += (1.0 - alpha) * peers.latency(tails[between_peers], heads[between_peers])
    return weights


def shortest_path(dag: PeerDAG, weights: np.ndarray, order: np.ndarray | None = None) -> tuple[float, list[int]]:
    """Alg. 2: dynamic programming over the topological order.

    Returns the length of the shortest source-to-sink path and its peers (virtual nodes left out);
    ``(inf, [])`` when no path exists (some stage has no live peer)."""
    order = topological_order(dag) if order is None else order
    dist = np.full(dag.n_nodes, np.inf)
    prev = np.full(dag.n_nodes, -1, dtype=np.int64)
    dist[dag.source] = 0.0
    for u in order.tolist():
        lo, hi = dag.indptr[u], dag.indptr[u + 1]
        if lo == hi or not np.isfinite(dist[u]):
            continue
        heads = dag.indices[lo:hi]
        candidate = dist[u] + weights[lo:hi]
        better = candidate < dist[heads]
        dist[heads[better]] = candidate[better]
        prev[heads[better]] = u
    if not np.isfinite(dist[dag.sink]):
        return float("inf"), []
    path = []
    node = int(prev[dag.sink])
    while node != dag.source:
        path.append(node)
        node = int(prev[node])
    return float(dist[dag.sink]), path[::-1]


def path_objectives(peers: PeerTable, path: list[int] | np.ndarray) -> tuple[float, float]:
    """``(total price, total time)`` of a path: time is compute cost plus hop latencies."""
    path = np.asarray(path, dtype=np.int64)
    hops = peers.latency(path[:-1], path[1:]).sum() if len(path) > 1 else 0.0
    return float(peers.price[path].sum()), float(peers.cost[path].sum() + hops)


def best_path(peers: PeerTable, alpha: float) -> tuple[float, list[int]]:
    """The weighted-sum optimal path for a client with preference ``alpha`` (Alg. 1 + Alg. 2)."""
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    return shortest_path(dag, edge_weights(dag, peers, alpha))
