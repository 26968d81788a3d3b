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

import numpy as np

#: relative share differences below this are rounding, not gains (capacities are updated
#: incrementally, so two exactly equal shares can differ in the last bits)
TIE_TOLERANCE = 1e-12


def share_weight(cost: np.ndarray, reading: str = "compute_share") -> np.ndarray:
    """What a peer counts in eq. 7: ``1/c_i`` (``"compute_share"``) or 1 (``"head_count"``)."""
    cost = np.asarray(cost, dtype=float)
    if reading == "compute_share":
        return 1.0 / cost
    if reading == "head_count":
        return np.ones_like(cost)
    raise ValueError(f"reading = {reading!r} is invalid: allowed 'compute_share' or 'head_count'")


def stage_capacity(cost: np.ndarray, stage: np.ndarray, alive: np.ndarray, n_stages: int,
                   reading: str = "compute_share") -> np.ndarray:
    """Capacity ``sum_{j in l}`` of the share weights (``1/c_j``, or 1 per peer) of every stage ``l``
    (live peers only)."""
    return np.bincount(stage[alive], weights=share_weight(cost, reading)[alive], minlength=n_stages)


def candidate_shares(inverse_cost: np.ndarray, current: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Eq. 7 for peers (inverse costs ``inverse_cost``, stages ``current``) in every stage: the
    share where they are, and the share they would have after moving anywhere else (counting
    themselves there). Shape ``inverse_cost.shape + (n_stages,)``."""
    inverse_cost, current = np.asarray(inverse_cost, dtype=float), np.asarray(current)
    joined = capacity + inverse_cost[..., None]
    np.put_along_axis(joined, current[..., None], capacity[current][..., None], axis=-1)
    return inverse_cost[..., None] / joined


def share_gains(cost: np.ndarray, stage: np.ndarray, alive: np.ndarray, n_stages: int,
                reading: str = "compute_share") -> tuple[np.ndarray, np.ndarray]:
    """For every peer, its best stage by eq. 8 and the share it would gain by moving there
    (gain 0 and best = own stage when it is already in a best stage up to
    :data:`TIE_TOLERANCE`, and for dead peers)."""
    shares = candidate_shares(share_weight(cost, reading), stage, stage_capacity(cost, stage, alive, n_stages, reading))
    best = np.argmax(shares, axis=1)
    rows = np.arange(len(cost))
    current = shares[rows, stage]
    gain = np.where(alive & (shares[rows, best] > current * (1.0 + TIE_TOLERANCE)), shares[rows, best] - current, 0.0)
    return np.where(gain > 0, best, stage), gain


def reallocate(
    cost: np.ndarray,
    stage: np.ndarray,
    alive: np.ndarray,
    candidates: np.ndarray,
    hysteresis: float,
    n_stages: int,
    reading: str = "compute_share",
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Let ``candidates`` (live peer indices, in the order given) move one after another.

    A candidate moves to its eq.-8 optimal stage when the share there exceeds its current share
    by more than the factor ``1 + hysteresis`` (and more than rounding, :data:`TIE_TOLERANCE`); every move updates the capacities the next
    candidate sees. Returns the new stage array and the moves as ``(peer, from, to)``.
    """
    stage = stage.copy()
    capacity = stage_capacity(cost, stage, alive, n_stages, reading)
    weight = share_weight(cost, reading)
    moves = []
    for peer in candidates.tolist():
        inverse = float(weight[peer])
        current = int(stage[peer])
        shares = candidate_shares(inverse, current, capacity)
        target = int(np.argmax(shares))
        if shares[target] > shares[current] * (1.0 + hysteresis) * (1.0 + TIE_TOLERANCE):
            capacity[current] -= inverse
            capacity[target] += inverse
            stage[peer] = target
            moves.append((peer, current, target))
    return stage, moves


def move_candidates(alive: np.ndarray, move_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded random order of ``ceil(move_fraction * live peers)`` live peers."""
    live = np.flatnonzero(alive)
    count = int(np.ceil(move_fraction * len(live)))
    return rng.permutation(live)[:count]
