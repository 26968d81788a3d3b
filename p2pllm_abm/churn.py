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

from typing import NamedTuple

import numpy as np

from .config import Config, initial_distribution
from .costs import stage_times
from .profiles import load_profile
from .registries import allocation_rules


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


def joining_starts(cfg: Config, arrivals: Newcomers, stage_start: np.ndarray, stage_end: np.ndarray,
                   cost: np.ndarray, counted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first stage of each newcomer, one after another (each sees the ones placed before it):
    the allocation rule's ``joins`` (eq. 8 for ``market``, Petals' block selection for ``petals``) or, with
    allocation off, drawn in the initial distribution's proportions. ``cost`` is every peer's current cost; ``counted``
    marks the peers already placed (live, and for Petals also reloading)."""
    n_stages = cfg.network.stages
    k = len(arrivals.length)
    alloc = cfg.allocation
    if not alloc.enabled:
        shares = np.asarray(initial_distribution(cfg.network), dtype=float)
        start = rng.choice(n_stages, size=k, p=shares / shares.sum())
        return np.minimum(start, n_stages - np.minimum(arrivals.length, n_stages))
    return allocation_rules.get(alloc.rule).joins(alloc, arrivals.stage_cost, arrivals.length, stage_start,
                                                  stage_end, cost, counted, n_stages)


def spare_rows(cfg: Config) -> int:
    """Rows beyond ``network.peers`` for joining peers: ``churn.headroom`` of the peers (the table grows
    by a tenth when they run out); with the ledger on, whose accounts are opened at genesis, also
    enough for the run's expected joins plus six standard deviations (joins beyond are refused and
    counted as ``joins_refused``)."""
    rows = int(np.ceil(cfg.churn.headroom * cfg.network.peers))
    if cfg.ledger.enabled:
        expected = cfg.churn.join_rate * cfg.run.steps
        rows = max(rows, int(np.ceil(expected + 6 * np.sqrt(expected))) + 16)
    return rows
