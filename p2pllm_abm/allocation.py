"""Layer reallocation by compute share (paper section 3.4, eq. 7-8).

A peer's share of its stage is its inverse compute cost over the stage's total inverse cost,
``s_l(c_i) = c_i^-1 / sum_{j in l} c_j^-1`` (eq. 7). In a stage it does not serve yet, a peer
counts itself in the denominator: the share it *would* have after moving. Its optimal stage is
``argmax_l s_l(c_i)`` (eq. 8). The network is efficient when no peer can raise its share by
moving.

``allocation.reading = "head_count"`` is a labelled alternative reading: every peer counts 1, so
``s_l = 1 / |l|`` and peers balance the *number* of peers per stage (the reading under which the
paper's Table 1 ends at exactly 50 peers per stage). Both readings share this code: a peer's
*share weight* is ``1/c_i`` or 1.
"""

from __future__ import annotations

import heapq
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .costs import span_sum
from .equilibrium import padded_size
from .registries import AllocationRule, allocation_rules

#: relative share differences below this are rounding, not gains (capacities are updated
#: incrementally, so two exactly equal shares can differ in the last bits)
TIE_TOLERANCE = 1e-12


def share_weight(cost: np.ndarray, reading: str = "compute_share") -> np.ndarray:
    """What a peer counts in eq. 7: ``1/c_i`` (``"compute_share"``) or 1 (``"head_count"``). ``cost``
    is per peer ``(n,)`` or, for stage-dependent costs, per peer and stage ``(n, m)``: ``c_i(s)``."""
    cost = np.asarray(cost, dtype=float)
    if reading == "compute_share":
        return 1.0 / cost
    if reading == "head_count":
        return np.ones_like(cost)
    raise ValueError(f"reading = {reading!r} is invalid: allowed 'compute_share' or 'head_count'")


def current_cost(cost: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Each peer's cost where it is: ``cost`` itself, or ``c_i(stage_i)`` of stage costs ``(n, m)``."""
    cost = np.asarray(cost, dtype=float)
    return cost if cost.ndim == 1 else cost[np.arange(len(cost)), stage]


def stage_capacity(cost: np.ndarray, stage: np.ndarray, alive: np.ndarray, n_stages: int,
                   reading: str = "compute_share") -> np.ndarray:
    """Capacity ``sum_{j in l}`` of the share weights (``1/c_j``, or 1 per peer) of every stage ``l``
    (live peers only; ``cost`` per peer, or per peer and stage)."""
    weight = share_weight(current_cost(cost, stage), reading)
    return np.bincount(stage[alive], weights=weight[alive], minlength=n_stages)


def candidate_shares(inverse_cost: np.ndarray, current: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Eq. 7 for peers (share weights ``inverse_cost``, stages ``current``) in every stage: the
    share where they are, and the share they would have after moving anywhere else (counting
    themselves there). ``inverse_cost`` has the shape of ``current`` (one weight per peer) or one
    more axis of stages (stage-dependent costs). Shape ``current.shape + (n_stages,)``."""
    inverse_cost, current = np.asarray(inverse_cost, dtype=float), np.asarray(current)
    if inverse_cost.ndim == current.ndim:
        inverse_cost = np.repeat(inverse_cost[..., None], len(capacity), axis=-1)
    joined = capacity + inverse_cost
    np.put_along_axis(joined, current[..., None], capacity[current][..., None], axis=-1)
    return inverse_cost / joined


def joining_stage(weight: np.ndarray, capacity: np.ndarray) -> int:
    """Eq. 8 for a peer joining the network: the stage where its share ``w_l / (C_l + w_l)`` (its
    share weights ``w`` per stage, counting itself) is largest."""
    return int(np.argmax(weight / (capacity + weight)))


def share_gains(cost: np.ndarray, stage: np.ndarray, alive: np.ndarray, n_stages: int,
                reading: str = "compute_share") -> tuple[np.ndarray, np.ndarray]:
    """For every peer, its best stage by eq. 8 and the share it would gain by moving there
    (gain 0 and best = own stage when it is already in a best stage up to
    :data:`TIE_TOLERANCE`, and for dead peers)."""
    shares = candidate_shares(share_weight(cost, reading), stage, stage_capacity(cost, stage, alive, n_stages, reading))
    best = np.argmax(shares, axis=1)
    rows = np.arange(len(stage))
    current = shares[rows, stage]
    gain = np.where(alive & (shares[rows, best] > current * (1.0 + TIE_TOLERANCE)), shares[rows, best] - current, 0.0)
    return np.where(gain > 0, best, stage), gain


def reallocation_scan(weight: Array, stage: Array, alive: Array, candidates: Array, hysteresis: float | Array,
                      n_stages: int) -> tuple[Array, Array]:
    """Eq. 7-8's sequential moves as one traceable scan over ``candidates`` (distinct peer indices;
    ``-1`` pads are skipped): a candidate moves to its eq.-8 optimal stage when the share there
    exceeds its current share by more than the factor ``1 + hysteresis`` (and more than rounding,
    :data:`TIE_TOLERANCE`), and every move updates the capacities the next candidate sees.
    ``weight`` is each peer's share weight :func:`share_weight`, ``(n,)`` or per stage ``(n, m)``.
    Returns the new stages and each candidate's stage after its turn (``-1`` for pads).

    A peer has one turn at most, so its stage at its turn is the one it started in: the candidates'
    stages and weights are gathered before the scan, which carries only the ``n_stages``
    capacities (carrying the ``(n,)`` stages costs a copy of them per turn inside a compiled loop)."""
    weight = jnp.asarray(weight)
    per_stage = weight if weight.ndim == 2 else jnp.broadcast_to(weight[:, None], (weight.shape[0], n_stages))
    rows = jnp.arange(stage.shape[0])
    capacity = jax.ops.segment_sum(jnp.where(alive, per_stage[rows, stage], 0.0), stage, num_segments=n_stages)
    valid = candidates >= 0
    row = jnp.maximum(candidates, 0)

    def turn(capacity, candidate):
        valid, current, own = candidate
        shares = own / (capacity + own).at[current].set(capacity[current])  # eq. 7, counting itself elsewhere
        target = jnp.argmax(shares)
        move = valid & (shares[target] > shares[current] * (1.0 + hysteresis) * (1.0 + TIE_TOLERANCE))
        moved = capacity.at[current].add(-own[current]).at[target].add(own[target])
        return jnp.where(move, moved, capacity), jnp.where(valid, jnp.where(move, target, current), -1)

    _, after = jax.lax.scan(turn, capacity, (valid, stage[row], per_stage[row]))
    return stage.at[jnp.where(valid, row, stage.shape[0])].set(after.astype(stage.dtype), mode="drop"), after


reallocation_scan_jit = jax.jit(reallocation_scan, static_argnames=("n_stages",))


def reallocate(
    cost: np.ndarray,
    stage: np.ndarray,
    alive: np.ndarray,
    candidates: np.ndarray,
    hysteresis: float,
    n_stages: int,
    reading: str = "compute_share",
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Let ``candidates`` (live peer indices, in the order given) move one after another
    (:func:`reallocation_scan`, compiled). ``cost`` is per peer, or per peer and stage (``c_i(s)``:
    a peer's cost, and so its weight, changes with the stage it moves to). Returns the new stage
    array and the moves as ``(peer, from, to)``."""
    candidates = np.asarray(candidates, dtype=np.int64)
    padded = np.full(padded_size(len(candidates)), -1)
    padded[: len(candidates)] = candidates
    new_stage, after = reallocation_scan_jit(share_weight(cost, reading), jnp.asarray(stage), jnp.asarray(alive),
                                         jnp.asarray(padded), float(hysteresis), n_stages=n_stages)
    return np.array(new_stage), turns_to_moves(candidates, stage, np.asarray(after))


def turns_to_moves(candidates: np.ndarray, stage: np.ndarray, after: np.ndarray) -> list[tuple[int, int, int]]:
    """The moves ``(peer, from, to)`` of one reallocation, in turn order, from its ``candidates``,
    the stages before it, and each candidate's stage after its turn (``after``; pads beyond the
    candidates ignored). A peer has one turn at most, so its stage before its turn is ``stage``."""
    after = after[: len(candidates)]
    return [(peer, int(stage[peer]), int(to)) for peer, to in zip(candidates.tolist(), after.tolist())
            if to != stage[peer]]


def move_candidates(alive: np.ndarray, move_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded random order of ``ceil(move_fraction * live peers)`` live peers."""
    live = np.flatnonzero(alive)
    count = int(np.ceil(move_fraction * len(live)))
    return rng.permutation(live)[:count]


# -- eq. 8 as a check --------------------------------------------------------------------------------

class AllocationCheck(NamedTuple):
    efficient: bool  #: no peer can raise its eq.-7 share by moving
    violators: "np.ndarray"  #: peers that would gain by moving
    target_stage: "np.ndarray"  #: their eq.-8 optimal stage
    share_gain: "np.ndarray"  #: the share each would gain
    peers_per_stage: "np.ndarray"
    capacity_per_stage: "np.ndarray"  #: sum of 1/c per stage
    capacity_ratio: float  #: max / min stage capacity (1 = perfectly balanced)


def allocation_equilibrium(cost, stage, alive, n_stages: int, reading: str = "compute_share") -> AllocationCheck:
    """Check eq. 8 (under ``reading``, see :mod:`p2pllm_abm.allocation`) for every live peer and
    report the balance of the allocation's compute capacity."""
    cost, stage, alive = np.asarray(cost), np.asarray(stage), np.asarray(alive)
    best, gain = share_gains(cost, stage, alive, n_stages, reading)
    violators = np.flatnonzero(gain > 0)
    capacity = stage_capacity(cost, stage, alive, n_stages)
    return AllocationCheck(
        efficient=len(violators) == 0,
        violators=violators,
        target_stage=best[violators],
        share_gain=gain[violators],
        peers_per_stage=np.bincount(stage[alive], minlength=n_stages),
        capacity_per_stage=capacity,
        capacity_ratio=float(capacity.max() / capacity.min()) if capacity.min() > 0 else float("inf"),
    )



# -- Petals' block selection (allocation.rule = petals) --------------------------------------------
#: Petals' bias against moving: a server removes itself with (1 + eps) of its throughput when it looks
#: for a better place, so that float error never makes it chase its own shadow
PETALS_EPS = 1e-3
#: greedy re-placement passes at most (Petals loops until no server moves; the bias makes that finite)
MAX_PASSES = 100


def block_throughput(start: np.ndarray, end: np.ndarray, throughput: np.ndarray, counted: np.ndarray,
                     n_stages: int) -> np.ndarray:
    """The swarm's throughput per stage (block), ``T[b] = sum of throughput_i over counted servers
    with start_i <= b < end_i``."""
    delta = np.zeros(n_stages + 1)
    np.add.at(delta, start[counted], throughput[counted])
    np.add.at(delta, end[counted], -throughput[counted])
    return np.cumsum(delta)[:n_stages]


def choose_best_start(throughput: np.ndarray, length: int) -> int:
    """Petals' ``_choose_best_start``: of the windows of ``length`` blocks, the one whose sorted
    throughputs are lexicographically smallest (the window holding the weakest block; ties go to
    the next-weakest block, then to the smallest start)."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(throughput, dtype=float), length)
    keys = np.sort(windows, axis=1)
    return int(np.lexsort((np.arange(len(keys)), *keys.T[::-1]))[0])


def petals_should_move(peer: int, start: np.ndarray, end: np.ndarray, throughput: np.ndarray, counted: np.ndarray,
                       n_stages: int, balance_quality: float, rng: np.random.Generator) -> int | None:
    """Petals' ``should_choose_other_blocks`` for server ``peer``: the start it would move to, or
    None when it stays. It removes itself, picks its best start; then it simulates a greedy
    re-placement of every counted server (passes in random order until nobody moves) and moves only
    when that lifts the swarm's weakest block from ``T0`` to ``T1`` with ``T0 / T1 < balance_quality
    - eps`` (never when a gap would open, or ``T1 < T0``)."""
    eps = PETALS_EPS
    length = end - start
    current = block_throughput(start, end, throughput, counted, n_stages)
    initial = current.min()
    own = throughput[peer]
    current[start[peer]:end[peer]] -= own * (1 + eps)
    if initial > eps and current.min() <= 0:
        return None  # leaving would make the swarm disjoint
    target = choose_best_start(current, int(length[peer]))
    if target == start[peer]:
        return None
    simulated = start.copy()
    current[start[peer]:end[peer]] += own * eps
    simulated[peer] = target
    current[target:target + length[peer]] += own
    servers = np.flatnonzero(counted)
    for _ in range(MAX_PASSES):
        moved = False
        for server in rng.permutation(servers).tolist():
            first, size, rate = simulated[server], int(length[server]), throughput[server]
            current[first:first + size] -= rate * (1 + eps)
            best = choose_best_start(current, size)
            current[first:first + size] += rate * eps
            if best != first:
                simulated[server], moved = best, True
            current[best:best + size] += rate
        if not moved:
            break
    final = current.min()
    if final < initial or final < eps:
        return None
    return target if initial / final < balance_quality - eps else None


# -- the built-in allocation rules (registered as a plug-in registers its own) ----------------------

def market_moves(model: Any, candidates: np.ndarray) -> list[tuple[int, int, int]]:
    """Eq. 7-8 for a model's ``candidates``, each in turn to the stage of its largest share (with
    stage-dependent costs, eq. 7-8 with ``c_i(s)``)."""
    alloc, peers = model.config.allocation, model.peers
    stage_dependent = model.config.network.cost_source == "profile"  # c_i(s) differ between stages
    _, moves = reallocate(peers.stage_cost if stage_dependent else peers.cost, peers.stage, peers.alive, candidates,
                          alloc.hysteresis, peers.n_stages, alloc.reading)
    return moves


def least_capacity_stages(capacity: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Eq. 8 for newcomers whose share weight ``w_j`` is the same in every stage, one after another:
    ``w / (C_l + w)`` is largest where ``C_l`` is smallest, so each takes the stage of least capacity
    (the first on ties) and adds its weight there; a heap makes it O(k log m). Capacities are
    compared, not shares: two shares of nearly equal capacities can round to the same float."""
    heap = [(float(c), stage) for stage, c in enumerate(capacity)]
    heapq.heapify(heap)
    starts = np.empty(len(weight), dtype=np.int64)
    for j, w in enumerate(weight.tolist()):
        c, stage = heapq.heappop(heap)
        starts[j] = stage
        heapq.heappush(heap, (c + w, stage))
    return starts


def market_joins(alloc: Any, stage_cost: np.ndarray, length: np.ndarray, stage_start: np.ndarray,
                 stage_end: np.ndarray, cost: np.ndarray, counted: np.ndarray, n_stages: int) -> np.ndarray:
    """Eq. 8 for newcomers of costs ``stage_cost`` ``(k, n_stages)``, one after another (one stage per
    peer, validated): each to the stage of its largest share, counting itself."""
    capacity = stage_capacity(cost, stage_start, counted, n_stages, alloc.reading)
    weight = share_weight(stage_cost, alloc.reading)
    if (weight == weight[:, :1]).all():  # the same weight everywhere: eq. 8 picks the least capacity
        return least_capacity_stages(capacity, weight[:, 0])
    starts = np.zeros(len(length), dtype=np.int64)
    for j in range(len(length)):
        starts[j] = joining_stage(weight[j], capacity)
        capacity[starts[j]] += weight[j, starts[j]]
    return starts


def petals_moves(model: Any, candidates: np.ndarray) -> list[tuple[int, int, int]]:
    """Petals' rebalancing for each of a model's ``candidates`` in turn (:func:`petals_should_move`):
    joining (reloading) servers count, as in Petals; the moves as ``(peer, from, to)``."""
    peers, alloc = model.peers, model.config.allocation
    start, end = peers.stage_start.copy(), peers.stage_end.copy()
    counted = peers.alive | model.membership.reloading
    throughput = 1.0 / peers.cost
    moves = []
    for peer in candidates.tolist():
        target = petals_should_move(peer, start, end, throughput, counted, peers.n_stages, alloc.balance_quality,
                                    model.rng)
        if target is not None:
            span = end[peer] - start[peer]
            moves.append((peer, int(start[peer]), target))
            start[peer], end[peer] = target, target + span
            throughput[peer] = 1.0 / peers.span_cost(np.array([target]), np.array([target + span]),
                                                     np.array([peer]))[0]
    return moves


def petals_joins(alloc: Any, stage_cost: np.ndarray, length: np.ndarray, stage_start: np.ndarray,
                 stage_end: np.ndarray, cost: np.ndarray, counted: np.ndarray, n_stages: int) -> np.ndarray:
    """Petals' block selection for newcomers, one after another: each to the window holding the
    weakest block."""
    throughput = block_throughput(stage_start, stage_end, 1.0 / cost, counted, n_stages)
    starts = np.zeros(len(length), dtype=np.int64)
    for j in range(len(length)):
        span = int(min(length[j], n_stages))
        starts[j] = choose_best_start(throughput, span)
        own = 1.0 / span_sum(stage_cost[j:j + 1], starts[j:j + 1], starts[j:j + 1] + span)[0]
        throughput[starts[j]:starts[j] + span] += own
    return starts


allocation_rules.register("market", AllocationRule(
    moves=market_moves, joins=market_joins, fused=True,
    doc="the paper's eq. 7-8: to the stage of largest share"))
allocation_rules.register("petals", AllocationRule(
    moves=petals_moves, joins=petals_joins, spans=True,
    doc="Petals' block selection: the span that most raises the weakest stage's throughput"))
