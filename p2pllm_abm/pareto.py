"""The exact Pareto set of (total price, total time) paths (paper section 3.2, Figure 2).

The paper routes a client by the weighted sum ``alpha * price + (1 - alpha) * time`` (eq. 1 along
a path). A weighted sum only ever selects *supported* Pareto paths, those on the lower convex hull
of the objective points; this module finds every Pareto path, marks which ones some alpha selects
and with which alpha interval, and measures the frontier's hypervolume.

:func:`pareto_paths` is a bi-objective label-correcting search over the DAG of
:mod:`p2pllm_abm.routing`, taken boundary by boundary: a node starting at stage boundary ``b`` has
only predecessors ending at ``b``, so visiting the boundaries in increasing order is a topological
order (the one Alg. 1 would give up to ties). Every node keeps only its non-dominated labels
``(price so far, time so far)``, and a label whose best possible completion (exact per-objective
lower bounds to the sink) is beaten in both objectives by a complete path already known (the
extreme paths, and cheapest and fastest completions of the labels kept so far) is pruned. All
labels of one boundary are extended to all its successors in one array operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from .network import PeerTable
from .routing import best_path, boundary_members, check_route_arguments, hop_times, path_objectives, sink_times

#: rows x labels per array block when extending labels (bounds memory at about 100 MB)
_BLOCK = 4_000_000


@dataclass(frozen=True)
class ParetoFrontier:
    """Non-dominated paths, by increasing total price (so by decreasing total time).

    ``supported[k]`` says whether some alpha in [0, 1] makes path ``k`` weighted-sum optimal;
    then ``alpha_low[k] <= alpha <= alpha_high[k]`` are exactly those alphas (a single alpha for a
    point in the middle of a hull edge, where it ties with the edge's ends); ``nan`` otherwise.
    """

    price: np.ndarray
    time: np.ndarray
    paths: list[np.ndarray]  #: peers of each path, in order
    supported: np.ndarray
    alpha_low: np.ndarray
    alpha_high: np.ndarray
    labels: int  #: labels the search kept (its work)

    def __len__(self) -> int:
        return len(self.price)

    def reference_point(self) -> tuple[float, float]:
        """The default reference point of :meth:`hypervolume`: the nadir point (the largest price and
        time on the frontier) plus 10% of the frontier's extent in each objective."""
        return _padded_max(self.price), _padded_max(self.time)

    def hypervolume(self, reference: tuple[float, float] | None = None) -> float:
        """Area dominated by the frontier inside the box below ``reference = (price, time)``
        (default: :meth:`reference_point`)."""
        if len(self) == 0:
            return 0.0
        ref_price, ref_time = self.reference_point() if reference is None else reference
        inside = (self.price < ref_price) & (self.time < ref_time)
        price, time = self.price[inside], self.time[inside]
        widths = np.diff(np.append(price, ref_price))
        return float(np.sum(widths * (ref_time - time)))

    def to_frame(self) -> pd.DataFrame:
        """One row per Pareto path: price, time, supported, alpha interval, peers."""
        return pd.DataFrame({
            "price": self.price, "time": self.time, "supported": self.supported,
            "alpha_low": self.alpha_low, "alpha_high": self.alpha_high,
            "path": [tuple(int(i) for i in p) for p in self.paths],
        })


def _padded_max(values: np.ndarray) -> float:
    span = float(values.max() - values.min())
    return float(values.max()) + (0.1 * span if span > 0 else max(0.1 * abs(float(values.max())), 1.0))


class Completions(NamedTuple):
    """What a path can still add after each peer (from its end to the sink), per peer: the least
    price and the least time (exact lower bounds, by dynamic programming from the sink), and the
    time of that cheapest completion and the price of that fastest one (two feasible completions).
    ``source`` holds the same four numbers for whole paths."""

    price: np.ndarray
    time: np.ndarray
    cheapest_time: np.ndarray
    fastest_price: np.ndarray
    source: tuple[float, float, float, float]


def completions(peers: PeerTable, client: np.ndarray | None = None) -> Completions:
    """:class:`Completions` of every live peer (``inf`` where the sink cannot be reached)."""
    starts, ends = boundary_members(peers)
    m = peers.n_stages
    price, time, cheapest_time, fastest_price = (np.full(len(peers), np.inf) for _ in range(4))
    source = (np.inf,) * 4
    for boundary in range(m, -1, -1):
        tails = ends[boundary] if boundary > 0 else np.array([-1])
        if boundary == m:
            price[tails] = fastest_price[tails] = 0.0
            time[tails] = cheapest_time[tails] = sink_times(peers, tails, client)
            continue
        heads = starts[boundary]
        if not heads.size or not tails.size:
            continue
        hops = hop_times(peers, tails, heads, client).T  # (tails, heads)
        cheap = int(np.argmin(peers.price[heads] + price[heads]))
        totals = hops + time[heads][None, :]
        fast = np.argmin(totals, axis=1)
        rows = np.arange(len(tails))
        values = (peers.price[heads[cheap]] + price[heads[cheap]], totals[rows, fast],
                  hops[:, cheap] + cheapest_time[heads[cheap]], peers.price[heads[fast]] + fastest_price[heads[fast]])
        if boundary == 0:
            source = tuple(float(np.ravel(v)[0]) for v in values)
        else:
            price[tails], time[tails], cheapest_time[tails], fastest_price[tails] = values
    return Completions(price, time, cheapest_time, fastest_price, source)


def _skyline(price: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, by increasing price (one of equal points)."""
    order = np.lexsort((time, price))
    ordered = time[order]
    return order[ordered < np.concatenate([[np.inf], np.minimum.accumulate(ordered)[:-1]])]


def _merge(price: np.ndarray, time: np.ndarray, more_price: np.ndarray, more_time: np.ndarray):
    price, time = np.concatenate([price, more_price]), np.concatenate([time, more_time])
    keep = _skyline(price, time)
    return price[keep], time[keep]


def _dominated_by(incumbent_price, incumbent_time, price, time, slack_price: float, slack_time: float) -> np.ndarray:
    """Whether some incumbent point is better than ``(price, time)`` by more than the slacks in
    both objectives (incumbents: a skyline by increasing price)."""
    at = np.searchsorted(incumbent_price, price - slack_price, side="right") - 1
    return (at >= 0) & (incumbent_time[np.maximum(at, 0)] <= time - slack_time)


def _robust_front(time: np.ndarray, fastest_hop: np.ndarray, slowest_hop: np.ndarray, slack: float) -> np.ndarray:
    """Indices of the labels (sorted by price, then time) that no earlier label dominates at every
    head of a block whatever the hop latencies: label ``j`` goes when an earlier one has
    ``time + slowest hop <= time_j + fastest hop_j`` (by more than ``slack``)."""
    worst = time + slowest_hop
    before = np.concatenate([[np.inf], np.minimum.accumulate(worst)[:-1]])
    return np.flatnonzero(time + fastest_hop < before + slack)


def _nondominated(price: np.ndarray, time: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Per row, the labels no other label of the row dominates (first of exact duplicates kept).

    The columns are sorted by ``price`` (equal within a row up to one shift per row, so equal-price
    groups, starting at ``group_start``, are the same in every row); ``time`` is ``(rows, cols)``."""
    cols = time.shape[1]
    group_of = np.repeat(np.arange(len(group_start)), np.diff(np.append(group_start, cols)))
    running = np.minimum.accumulate(time, axis=1)
    before = np.concatenate([np.full((time.shape[0], 1), np.inf), running[:, :-1]], axis=1)
    before_group = before[:, group_start][:, group_of]
    group_min = np.minimum.reduceat(time, group_start, axis=1)[:, group_of]
    is_min = time == group_min
    count = np.cumsum(is_min, axis=1)
    first_min = is_min & ((count - (count - is_min)[:, group_start][:, group_of]) == 1)
    return first_min & (time < before_group) & np.isfinite(time)


def pareto_paths(peers: PeerTable, client: np.ndarray | None = None, prune: bool = True) -> ParetoFrontier:
    """Every Pareto-optimal source-to-sink path by (total price, total time), with time as in
    :func:`~p2pllm_abm.routing.path_objectives` (client endpoint latencies when ``client`` is a
    position). Paths with equal objective pairs are represented once.

    With ``prune`` (the default), a label is dropped when even its ideal completion (its price and
    time plus the least price and least time to the sink) is beaten in both objectives, by more than
    a relative 1e-9 (rounding), by a known complete path: the extreme paths, and the cheapest and
    fastest completions of every label kept so far. That never drops a Pareto path; ``prune=False``
    gives the same set with more labels."""
    check_route_arguments(peers, client=client)
    starts, ends = boundary_members(peers)
    m = peers.n_stages
    rest = completions(peers, client)
    if not np.isfinite(rest.source[0]):  # no source-to-sink path
        return _frontier(np.empty(0), np.empty(0), [], 0)
    least_price, least_time, cheapest_time, fastest_price = rest.source
    incumbent_price, incumbent_time = _merge(np.empty(0), np.empty(0), np.array([least_price, fastest_price]),
                                             np.array([cheapest_time, least_time]))
    slack_price = 1e-9 * max(1.0, float(incumbent_price[-1]))
    slack_time = 1e-9 * max(1.0, float(incumbent_time[0]))

    # every label's node (-1 = source) and parent label, by label id, for tracing paths at the end;
    # labels waiting at each end boundary as (ids, node, price so far, time so far) chunks
    node, parent = [np.array([-1])], [np.array([-1])]
    pool: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(m + 1)]
    pool[0].append((np.array([0]), np.array([-1]), np.zeros(1), np.zeros(1)))
    count = 1
    for boundary in range(m):
        heads = starts[boundary]
        if not heads.size or not pool[boundary]:
            continue
        ids, tails_of, lp, lt = (np.concatenate(column) for column in zip(*pool[boundary]))
        keep = np.ones(len(ids), dtype=bool)
        if prune and boundary > 0:  # incumbents found since these labels were made
            keep = ~_dominated_by(incumbent_price, incumbent_time, lp + rest.price[tails_of],
                                  lt + rest.time[tails_of], slack_price, slack_time)
        order = np.flatnonzero(keep)[np.lexsort((lt[keep], lp[keep]))]
        if not order.size:
            continue
        ids, tails_of, lp, lt = ids[order], tails_of[order], lp[order], lt[order]
        tails, tail_of = np.unique(tails_of, return_inverse=True)
        rows = max(1, _BLOCK // len(ids))
        for lo in range(0, len(heads), rows):
            block = heads[lo:lo + rows]
            hops = hop_times(peers, tails, block, client)
            latency = hops - peers.cost[block][:, None]
            label = _robust_front(lt, latency.min(axis=0)[tail_of], latency.max(axis=0)[tail_of], slack_time)
            price_so_far, time_so_far = lp[label], lt[label]
            group_start = np.flatnonzero(np.r_[True, price_so_far[1:] != price_so_far[:-1]])
            new_price = price_so_far[None, :] + peers.price[block][:, None]
            new_time = time_so_far[None, :] + hops[:, tail_of[label]]
            if prune:
                hopeless = _dominated_by(incumbent_price, incumbent_time, new_price + rest.price[block][:, None],
                                         new_time + rest.time[block][:, None], slack_price, slack_time)
                new_time = np.where(hopeless | ~np.isfinite(rest.price[block])[:, None], np.inf, new_time)
            r, c = np.nonzero(_nondominated(new_price, new_time, group_start))
            if not r.size:
                continue
            kept_node, kept_price, kept_time = block[r], new_price[r, c], new_time[r, c]
            new_ids = np.arange(count, count + r.size)
            count += r.size
            node.append(kept_node)
            parent.append(ids[label[c]])
            kept_end = peers.stage_end[kept_node]
            for end in np.unique(kept_end):
                mine = kept_end == end
                pool[end].append((new_ids[mine], kept_node[mine], kept_price[mine], kept_time[mine]))
            if prune:
                incumbent_price, incumbent_time = _merge(
                    incumbent_price, incumbent_time,
                    np.concatenate([kept_price + rest.price[kept_node], kept_price + rest.fastest_price[kept_node]]),
                    np.concatenate([kept_time + rest.cheapest_time[kept_node], kept_time + rest.time[kept_node]]))
    if not pool[m]:
        return _frontier(np.empty(0), np.empty(0), [], count)
    ids, last, final_price, final_time = (np.concatenate(column) for column in zip(*pool[m]))
    final_time = final_time + sink_times(peers, last, client)
    keep = _skyline(final_price, final_time)
    all_node, all_parent = np.concatenate(node), np.concatenate(parent)
    paths = [_trace(int(i), all_node, all_parent) for i in ids[keep]]
    return _frontier(final_price[keep], final_time[keep], paths, count)


def _trace(label: int, node: np.ndarray, parent: np.ndarray) -> np.ndarray:
    path = []
    while node[label] >= 0:
        path.append(int(node[label]))
        label = int(parent[label])
    return np.array(path[::-1], dtype=np.int64)


def _frontier(price: np.ndarray, time: np.ndarray, paths: list[np.ndarray],
              labels: int) -> ParetoFrontier:
    supported, alpha_low, alpha_high = supported_alphas(price, time)
    return ParetoFrontier(price, time, paths, supported, alpha_low, alpha_high, labels)


def supported_alphas(price: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which points of a frontier (price ascending, time descending) lie on its lower convex hull,
    and the interval of alpha for which each is optimal for ``alpha * price + (1 - alpha) * time``.

    Hull vertices ``a`` (cheaper) and ``b`` tie at ``alpha = (T_a - T_b) / ((T_a - T_b) + (P_b - P_a))``;
    a vertex is optimal between the ties with its two hull neighbours (``[alpha, 1]`` for the
    cheapest, ``[0, alpha]`` for the fastest). A point strictly inside a hull edge is optimal only
    at that edge's alpha."""
    k = len(price)
    supported = np.zeros(k, dtype=bool)
    alpha_low, alpha_high = np.full(k, np.nan), np.full(k, np.nan)
    hull: list[int] = []
    for i in range(k):  # monotone chain, lower hull; collinear points stay
        while len(hull) >= 2 and _cross(price, time, hull[-2], hull[-1], i) < 0:
            hull.pop()
        hull.append(i)
    if not hull:
        return supported, alpha_low, alpha_high
    vertices = [h for j, h in enumerate(hull) if j in (0, len(hull) - 1)
                or _cross(price, time, hull[j - 1], h, hull[j + 1]) != 0]
    ties = [_tie_alpha(price, time, a, b) for a, b in zip(vertices, vertices[1:])]
    for j, v in enumerate(vertices):
        alpha_high[v] = ties[j - 1] if j > 0 else 1.0
        alpha_low[v] = ties[j] if j < len(ties) else 0.0
    for j, (a, b) in enumerate(zip(vertices, vertices[1:])):
        for inner in hull[hull.index(a) + 1 : hull.index(b)]:
            alpha_low[inner] = alpha_high[inner] = ties[j]
    supported[hull] = True
    return supported, alpha_low, alpha_high


def _cross(price, time, o: int, a: int, b: int) -> float:
    return (price[a] - price[o]) * (time[b] - time[o]) - (time[a] - time[o]) * (price[b] - price[o])


def _tie_alpha(price, time, a: int, b: int) -> float:
    saved_time, extra_price = time[a] - time[b], price[b] - price[a]
    return float(saved_time / (saved_time + extra_price))


def weighted_sum_sweep(peers: PeerTable, alphas, client: np.ndarray | None = None) -> pd.DataFrame:
    """The paper's routing (Alg. 1-2) for every alpha: the chosen path and its objectives."""
    rows = []
    for alpha in alphas:
        objective, path = best_path(peers, float(alpha), client)
        price, time = path_objectives(peers, path, client) if path else (np.inf, np.inf)
        rows.append({"alpha": float(alpha), "objective": objective, "price": price, "time": time,
                     "path": tuple(path)})
    return pd.DataFrame(rows)


def path_counts(peers: PeerTable) -> tuple[np.ndarray, float]:
    """Number of paths from each peer to the sink, and from the source (floats: they can be huge)."""
    starts, ends = boundary_members(peers)
    m = peers.n_stages
    counts = np.zeros(len(peers))
    counts[ends[m]] = 1.0
    from_boundary = np.zeros(m + 1)
    from_boundary[m] = 1.0
    for boundary in range(m - 1, -1, -1):
        from_boundary[boundary] = counts[starts[boundary]].sum()
        if boundary > 0:
            counts[ends[boundary]] = from_boundary[boundary]
    return counts, float(from_boundary[0])


def sample_path_objectives(peers: PeerTable, client: np.ndarray | None = None, max_paths: int = 20_000,
                           rng: np.random.Generator | None = None) -> pd.DataFrame:
    """(price, time) of every path when there are at most ``max_paths``, else of ``max_paths``
    paths drawn uniformly at random (each next peer with probability proportional to its number
    of completions). Column ``sampled`` says which."""
    counts, total = path_counts(peers)
    starts, _ = boundary_members(peers)
    if total == 0:
        return pd.DataFrame({"price": [], "time": [], "sampled": []})
    if total <= max_paths:
        paths = _enumerate(peers, starts)
    else:
        rng = np.random.default_rng(0) if rng is None else rng
        paths = [_draw(peers, starts, counts, rng) for _ in range(max_paths)]
    objectives = np.array([path_objectives(peers, p, client) for p in paths])
    return pd.DataFrame({"price": objectives[:, 0], "time": objectives[:, 1], "sampled": total > max_paths})


def _enumerate(peers: PeerTable, starts: list[np.ndarray]) -> list[list[int]]:
    complete, stack = [], [[int(v)] for v in starts[0][::-1]]
    while stack:
        path = stack.pop()
        end = int(peers.stage_end[path[-1]])
        if end == peers.n_stages:
            complete.append(path)
        else:
            stack.extend(path + [int(v)] for v in starts[end][::-1])
    return complete


def _draw(peers: PeerTable, starts, counts: np.ndarray, rng: np.random.Generator) -> list[int]:
    path, boundary = [], 0
    while boundary < peers.n_stages:
        options = starts[boundary]
        weights = counts[options]
        node = int(rng.choice(options, p=weights / weights.sum()))
        path.append(node)
        boundary = int(peers.stage_end[node])
    return path
