"""Peers joining, leaving, failing and coming back: the membership phase before each step's requests.

Each function is a policy (who joins, leaves, fails) drawn from the run's churn generator; the
model applies it to the :class:`~p2pllm_abm.network.PeerTable`, the Mesa agents and the jitted
state (:meth:`~p2pllm_abm.model.P2PLLMModel.membership_phase`).

- **Leaves** (``churn.leave_rate = h``): every present peer leaves for good with probability ``h``
  per step, so sessions are geometric with mean ``1 / h`` steps.
- **Joins** (``churn.join_rate = lambda``): ``Poisson(lambda)`` peers arrive per step. Cost, span
  length and position are drawn as at start (``network.cost_range`` per stage, or a device from
  ``network.device_mix`` and the cost profile; ``network.span_length_probs``; uniform in the unit
  square); the price is ``network.initial_price``. The stage comes from the allocation rule: eq. 8
  for ``market`` (the stage where the newcomer's share is largest, counting itself), Petals' block
  selection for ``petals`` (the window holding the weakest block), and, with allocation off, a
  stage drawn in the proportions of ``network.initial_distribution``.
- **Failures** (``failures.rate = f``): every live peer fails during a step's requests with
  probability ``f``; it is down for ``failures.downtime`` steps (for good when null).
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from .allocation import block_throughput, choose_best_start, joining_stage, share_weight, stage_capacity
from .config import Config, initial_distribution
from .costs import load_profile, span_sum, stage_times


class Newcomers(NamedTuple):
    """Peers about to join, drawn as at start (one row each)."""

    stage_cost: np.ndarray  #: (k, n_stages) c_i(s)
    length: np.ndarray  #: (k,) span lengths
    position: np.ndarray  #: (k, 2)


def leaving(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Rows of the present peers that leave this step (each with probability ``rate``)."""
    if rate <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(present & (rng.random(len(present)) < rate))


def failing(alive: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of the live peers that fail during this step's requests (each with probability ``rate``)."""
    if rate <= 0:
        return np.zeros(len(alive), dtype=bool)
    return alive & (rng.random(len(alive)) < rate)


def newcomers(cfg: Config, rng: np.random.Generator) -> Newcomers:
    """``Poisson(churn.join_rate)`` peers drawn as at start (:class:`Newcomers`)."""
    net = cfg.network
    count = int(rng.poisson(cfg.churn.join_rate)) if cfg.churn.join_rate > 0 else 0
    if net.cost_source == "profile":
        names = list(net.device_mix)
        weights = np.array([net.device_mix[name] for name in names], dtype=float)
        device = rng.choice(len(names), size=count, p=weights / weights.sum())
        profile = load_profile(net.cost_profile)
        times = np.array([stage_times(profile, name, net.cost_metric) for name in names])
        stage_cost = times[device].reshape(count, net.stages)
    else:
        stage_cost = np.repeat(rng.uniform(*net.cost_range, size=count)[:, None], net.stages, axis=1)
    probs = np.asarray(net.span_length_probs, dtype=float)
    length = 1 + rng.choice(len(probs), size=count, p=probs / probs.sum())
    return Newcomers(stage_cost, length, rng.uniform(0.0, 1.0, size=(count, 2)))


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


def joining_starts(cfg: Config, arrivals: Newcomers, stage_start: np.ndarray, stage_end: np.ndarray,
                   cost: np.ndarray, counted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first stage of each newcomer, one after another (each sees the ones placed before it):
    eq. 8 (``allocation.rule = market``), Petals' block selection (``petals``) or, with allocation off,
    drawn in the initial distribution's proportions. ``cost`` is every peer's current cost; ``counted``
    marks the peers already placed (live, and for Petals also reloading)."""
    n_stages = cfg.network.stages
    k = len(arrivals.length)
    alloc = cfg.allocation
    if not alloc.enabled:
        shares = np.asarray(initial_distribution(cfg.network), dtype=float)
        start = rng.choice(n_stages, size=k, p=shares / shares.sum())
        return np.minimum(start, n_stages - np.minimum(arrivals.length, n_stages))
    starts = np.zeros(k, dtype=np.int64)
    if alloc.rule == "market":  # one stage per peer (validated)
        capacity = stage_capacity(cost, stage_start, counted, n_stages, alloc.reading)
        weight = share_weight(arrivals.stage_cost, alloc.reading)
        if (weight == weight[:, :1]).all():  # the same weight everywhere: eq. 8 picks the least capacity
            return least_capacity_stages(capacity, weight[:, 0])
        for j in range(k):
            starts[j] = joining_stage(weight[j], capacity)
            capacity[starts[j]] += weight[j, starts[j]]
        return starts
    throughput = block_throughput(stage_start, stage_end, 1.0 / cost, counted, n_stages)
    for j in range(k):
        length = int(min(arrivals.length[j], n_stages))
        starts[j] = choose_best_start(throughput, length)
        own = 1.0 / span_sum(arrivals.stage_cost[j:j + 1], starts[j:j + 1], starts[j:j + 1] + length)[0]
        throughput[starts[j]:starts[j] + length] += own
    return starts
