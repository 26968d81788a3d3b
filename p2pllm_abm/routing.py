"""Path finding through the network (paper section 3.1-3.2, Alg. 1-2).

The network is a DAG: peer ``v`` may follow peer ``u`` when ``stage_start[v] == stage_end[u]``;
a virtual source precedes every peer serving stage 0 and a virtual sink follows every peer
serving the last stage. A client with preference ``alpha`` scores a path by
``alpha * sum(price) + (1 - alpha) * (sum(cost) + sum(latency))`` (eq. 1 summed along the path,
with the latencies between consecutive peers and, for a client at a position, from the client to
the first peer and from the last peer back). Both algorithms are iterative and run in O(V + E).
The exact bi-objective Pareto set is in :mod:`p2pllm_abm.pareto`.
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


def edge_objectives(dag: PeerDAG, peers: PeerTable, client: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(price, time)`` of every edge ``u -> v``: ``(p_v, c_v + l_uv)``. Edges out of the source
    carry the client's latency to ``v`` and edges into the sink ``(0, l_u,client)``; without a
    ``client`` position (an ``(2,)`` point in the unit square) both endpoint latencies are 0."""
    tails, heads = dag.edges()
    into_peer = heads < dag.n_peers
    from_peer = tails < dag.n_peers
    price, time = np.zeros(len(heads)), np.zeros(len(heads))
    v = heads[into_peer]
    price[into_peer] = peers.price[v]
    time[into_peer] = peers.cost[v]
    between = into_peer & from_peer
    time[between] += peers.latency(tails[between], heads[between])
    if client is not None:
        first, last = into_peer & ~from_peer, from_peer & ~into_peer
        time[first] += peers.client_latency(heads[first], client)
        time[last] += peers.client_latency(tails[last], client)
    return price, time


def edge_weights(dag: PeerDAG, peers: PeerTable, alpha: float, client: np.ndarray | None = None) -> np.ndarray:
    """Weight of every edge: ``alpha * price + (1 - alpha) * time`` of :func:`edge_objectives`,
    i.e. ``w_v`` of eq. 1 plus ``(1 - alpha)`` times the hop's latency."""
    price, time = edge_objectives(dag, peers, client)
    return alpha * price + (1.0 - alpha) * time


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


def path_objectives(peers: PeerTable, path: list[int] | np.ndarray,
                    client: np.ndarray | None = None) -> tuple[float, float]:
    """``(total price, total time)`` of a path: time is compute cost plus hop latencies, plus the
    client's latencies to the first and from the last peer when ``client`` is given. Sums run
    along the path, in the order the routing algorithms accumulate them."""
    path = np.asarray(path, dtype=np.int64)
    time = np.concatenate([peers.cost[path[:1]], peers.latency(path[:-1], path[1:]) + peers.cost[path[1:]]])
    if client is not None:
        time = np.concatenate([[peers.client_latency(path[0], client) + time[0]], time[1:],
                               [peers.client_latency(path[-1], client)]])
    return float(np.cumsum(peers.price[path])[-1]), float(np.cumsum(time)[-1])


def check_route_arguments(peers: PeerTable, alpha: float | None = None, client: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` naming the argument, its value and what is allowed: the peers' costs and
    prices (:meth:`~p2pllm_abm.network.PeerTable.check_values`), ``alpha`` in [0, 1], ``client`` a
    finite point ``(x, y)`` or ``None``."""
    peers.check_values()
    if alpha is not None and not (np.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha = {alpha} is invalid: allowed 0 <= alpha <= 1")
    if client is not None:
        point = np.asarray(client, dtype=float)
        if point.shape != (2,) or not np.isfinite(point).all():
            raise ValueError(f"client = {client!r} is invalid: allowed a finite position (x, y), or None")


def boundary_members(peers: PeerTable) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Live peers by the stage boundary they start at (``0..m-1``) and end at (``0..m``; none end
    at 0). A peer starting at ``b`` follows exactly the peers ending at ``b``, so visiting the
    boundaries in increasing order is a topological order of the DAG."""
    live = np.flatnonzero(peers.alive)
    starts = [live[peers.stage_start[live] == b] for b in range(peers.n_stages)]
    ends = [live[peers.stage_end[live] == b] for b in range(peers.n_stages + 1)]
    return starts, ends


def hop_times(peers: PeerTable, tails: np.ndarray, heads: np.ndarray, client: np.ndarray | None) -> np.ndarray:
    """Times of all edges ``tails[j] -> heads[r]`` as a ``(len(heads), len(tails))`` array, as
    :func:`edge_objectives` computes them: ``c_head + l(tail, head)``. ``tails = [-1]`` stands for
    the source (the client's latency to ``head``, or none without a client)."""
    if tails.size and tails[0] < 0:
        latency = (peers.client_latency(heads, client)[:, None] if client is not None
                   else np.zeros((len(heads), 1)))
    else:
        latency = peers.latency(tails[None, :], heads[:, None])
    return peers.cost[heads][:, None] + latency


def sink_times(peers: PeerTable, tails: np.ndarray, client: np.ndarray | None) -> np.ndarray:
    """Times of the edges ``tails -> sink``: the latency back to the client, or 0."""
    return peers.client_latency(tails, client) if client is not None else np.zeros(len(tails))


def best_path(peers: PeerTable, alpha: float, client: np.ndarray | None = None) -> tuple[float, list[int]]:
    """The weighted-sum optimal path for a client with preference ``alpha`` (and position
    ``client``, if its endpoint latencies count): Alg. 2 over the boundary order of
    :func:`boundary_members`, relaxing all edges into one boundary's peers in one array operation
    (the same edge weights and relaxation as :func:`shortest_path` on :func:`build_dag`, without
    materialising the O(n^2 / m) edges). ``(inf, [])`` when no path exists."""
    check_route_arguments(peers, alpha, client)
    starts, ends = boundary_members(peers)
    dist = np.full(len(peers), np.inf)
    previous = np.full(len(peers), -1)
    for boundary, heads in enumerate(starts):
        tails = ends[boundary] if boundary > 0 else np.array([-1])
        if not heads.size or not tails.size:
            continue
        weights = alpha * peers.price[heads][:, None] + (1.0 - alpha) * hop_times(peers, tails, heads, client)
        candidates = (dist[tails][None, :] if boundary > 0 else 0.0) + weights
        best = np.argmin(candidates, axis=1)
        dist[heads] = candidates[np.arange(len(heads)), best]
        previous[heads] = tails[best]
    last = ends[peers.n_stages]
    if not last.size:
        return float("inf"), []
    totals = dist[last] + (1.0 - alpha) * sink_times(peers, last, client)
    end = int(np.argmin(totals))
    if not np.isfinite(totals[end]):
        return float("inf"), []
    path = [int(last[end])]
    while previous[path[-1]] >= 0:
        path.append(int(previous[path[-1]]))
    return float(totals[end]), path[::-1]
