"""Deterrence for the configured protocol (paper 4.2: the protocol should make honesty pay): the
expected profit of a peer that cheats at rate q against that of an honest peer, and the smallest
sampling probability at which cheating no longer pays.

The one-hop condition of :func:`~p2pllm_abm.verification.minimal_sampling_rate`,
``c < P_det (price + S)``, leaves out what a configured protocol adds: the SLA penalty of a failed
hop, the forced exit after a slash (a caught cheater loses its future earnings), and the warm-up
during which every hop is checked. Here a peer serves ``horizon`` hops over a run, each paying
``price`` and costing ``cost`` of compute (price units). A cheater serves its first ``warmup`` hops
at rate ``q_warmup`` (0 for a patient cheater, q for a naive one) under detection ``d_warmup``, then
the rest at rate q under detection d. A cheated hop saves ``cost``; when caught (probability d) its
payment is refunded, the SLA penalty ``L`` and the slash ``S`` are taken from the stake and, with
``exits``, the peer is out of the market: no more hops. The expected profit over the run is a
geometric sum (survival ``1 - q d`` per hop):

    E_cheat = sum_h s^h v(q),  v(q) = (1 - q)(price - cost) + q (price - d (price + L + S)),
    E_honest = horizon (price - cost).

Everything is a JAX function of the parameters, so the design experiment
(``experiments/mechanism_design.py``) differentiates through it. The whistleblower share changes
who receives a slash, not what the cheater loses, so it does not enter the cheater's condition.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Protocol(NamedTuple):
    """What one peer faces over a run, per hop and in price units."""

    price: float  #: payment per hop
    cost: float  #: compute a skipped hop saves (ms x verification.compute_price)
    slash: float  #: S, taken from the stake per confirmed fraud
    sla_penalty: float  #: L, taken from the stake per failed hop (ledger.sla_penalty x price)
    detection: float  #: d, chance a cheated hop after the warm-up is caught
    warmup_detection: float  #: chance a cheated warm-up hop is caught (spot checks: every warm-up hop is checked)
    warmup: float  #: hops a peer serves under the warm-up (verification.warmup)
    horizon: float  #: hops a peer serves over the run
    exits: bool  #: a caught cheater leaves the market (verification.exit_on_slash)


def expected_hops(q: Array, d: Array, hops: Array, exits: Array) -> tuple[Array, Array]:
    """Expected hops served and the survival after ``hops`` hops at cheat rate q and detection d."""
    risk = jnp.where(exits, q * d, 0.0)
    survive = jnp.exp(hops * jnp.log1p(-jnp.minimum(risk, 1.0 - 1e-15)))
    small = risk < 1e-12
    expected = jnp.where(small, hops, (1.0 - survive) / jnp.where(small, 1.0, risk))
    return expected, survive


def _hop_value(q: Array, d: Array, p: Protocol) -> Array:
    """Expected profit of one hop served at cheat rate q under detection d."""
    honest = p.price - p.cost
    cheated = p.price - d * (p.price + p.sla_penalty + p.slash)
    return (1.0 - q) * honest + q * cheated


def cheater_profit(q: Array, p: Protocol, q_warmup: Array = 0.0) -> Array:
    """Expected profit over the run of a peer cheating at rate q after the warm-up and ``q_warmup``
    during it (0: a patient cheater)."""
    warm = jnp.minimum(p.warmup, p.horizon)
    served_warm, survive_warm = expected_hops(q_warmup, p.warmup_detection, warm, p.exits)
    served_after, _ = expected_hops(q, p.detection, p.horizon - warm, p.exits)
    return (served_warm * _hop_value(q_warmup, p.warmup_detection, p)
            + survive_warm * served_after * _hop_value(q, p.detection, p))


def honest_profit(p: Protocol) -> Array:
    """Expected profit over the run of an honest peer (Section 4.2: cost ``c``, revenue ``price``)."""
    return p.horizon * (p.price - p.cost)


def deviation_gain(q: Array, p: Protocol, q_warmup: Array = 0.0) -> Array:
    """What cheating at rate q (after a warm-up at ``q_warmup``) gains over honesty; <= 0: deterred."""
    return cheater_profit(q, p, q_warmup) - honest_profit(p)


#: :func:`deviation_gain` at many cheat rates in one call
gains_at_rates = jax.jit(jax.vmap(deviation_gain, in_axes=(0, None)))

#: the cheat rates a best response is searched over: a grid, then a finer grid around its best point
RATE_GRID = np.linspace(0.0, 1.0, 201)


def best_response_rate(p: Protocol) -> tuple[float, float]:
    """A patient cheater's best cheat rate after the warm-up and its gain over honesty: the maximum of
    :func:`deviation_gain` over q in [0, 1], on :data:`RATE_GRID` and then on a grid 200 times finer
    around its best point. ``(0.0, 0.0)`` when no rate gains."""
    rates, gains = best_response_rates(Protocol(*(jnp.asarray([field]) for field in p)))
    return float(rates[0]), float(gains[0])


#: :func:`gains_at_rates` for many protocols (arrays in every field): one grid for all, or a grid each
_gains_per_protocol = jax.jit(jax.vmap(gains_at_rates, in_axes=(None, 0)))
_gains_per_protocol_grid = jax.jit(jax.vmap(gains_at_rates, in_axes=(0, 0)))


def best_response_rates(protocols: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_response_rate` of many peers at once (each field of ``protocols`` an array over
    them): their rates and gains."""
    gains = np.asarray(_gains_per_protocol(jnp.asarray(RATE_GRID), protocols))
    k = np.argmax(gains, axis=1)
    low, high = RATE_GRID[np.maximum(k - 1, 0)], RATE_GRID[np.minimum(k + 1, len(RATE_GRID) - 1)]
    fine = low[:, None] + (high - low)[:, None] * np.linspace(0.0, 1.0, 401)
    fine_gains = np.asarray(_gains_per_protocol_grid(jnp.asarray(fine), protocols))
    j = np.argmax(fine_gains, axis=1)
    best = fine_gains[np.arange(len(j)), j]
    return np.where(best > 0, fine[np.arange(len(j)), j], 0.0), np.maximum(best, 0.0)


def sampling_threshold(protocol_at: Callable[[float], Protocol], q: float | None = None) -> float | None:
    """The smallest sampling probability in [0, 1] at which cheating does not pay: at rate ``q``, or
    (``q=None``) at the best response rate. ``protocol_at(p)`` gives the :class:`Protocol` at
    sampling probability p. The gain falls as p rises, so the threshold is found by bisection to
    1e-9. 0 when nothing gains even unchecked; None when even p = 1 does not deter."""
    def gains(p: float) -> bool:
        proto = protocol_at(p)
        return (float(gains_at_rates(jnp.asarray([q]), proto)[0]) if q is not None else best_response_rate(proto)[1]) > 0

    if not gains(0.0):
        return 0.0
    if gains(1.0):
        return None
    low, high = 0.0, 1.0
    while high - low > 1e-9:
        mid = (low + high) / 2
        low, high = (mid, high) if gains(mid) else (low, mid)
    return high
