"""Per-stage price competition in JAX (paper section 3.3, eq. 1-5).

All functions take arrays over *all* peers plus ``stage`` (the market each peer competes in)
and compute every stage at once with segment operations; peers with ``alive == False`` take no
part (choice probability 0, price unchanged). With ``jax_enable_x64`` (set by the package) all
math is float64.

Semantics: ``w_i = alpha p_i + (1 - alpha) c_i`` (eq. 1); a request picks peer ``i`` of its
stage with the Boltzmann probability ``P_i = exp(-w_i/T) / sum_j exp(-w_j/T)`` (eq. 3);
expected revenue ``R_i = D p_i P_i`` (eq. 2, the paper's per-request revenue for D = 1); prices
move by gradient ascent ``p_i <- max(floor, p_i + eta dR_i/dp_i)`` (eq. 4-5), where
``dR_i/dp_i = D P_i (1 - (alpha/T) p_i (1 - P_i))`` — at T = 1 the paper's
``P (1 + alpha p (P - 1))``. The floor (``market.price_floor``, default 0) keeps a large step
from pushing a price negative; prices never go below it.

Two variants, both off by default (the paper's reading), are parameters of the same functions:

- **marginal cost in profit** (``market.marginal_cost = kappa > 0``): a peer maximises its profit
  ``R_i = D (p_i - kappa c_i) P_i`` instead of its revenue; the derivative becomes
  ``D P_i (1 - (alpha/T) (p_i - kappa c_i) (1 - P_i))``.
- **an outside option** (``market.outside_option = w_0``): a request may buy nothing in a stage, an
  alternative of weight ``w_0``, so ``P_i = exp(-w_i/T) / (exp(-w_0/T) + sum_j exp(-w_j/T))``. It
  bounds the price of a peer alone in its stage. ``w_0 = inf`` (no outside option) adds
  ``exp(-inf) = 0`` exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array


class MarketParams(NamedTuple):
    """Scalars of the price game (traced, so sweeping them does not recompile)."""

    alpha: float
    temperature: float
    demand: float
    eta: float
    price_floor: float
    marginal_cost: float = 0.0  #: kappa: profit is D (p - kappa c) P (0: the paper's revenue)
    outside_weight: float = float("inf")  #: w_0 of the no-purchase alternative (inf: none)


def market_params(market) -> MarketParams:
    """The :class:`MarketParams` of a ``market`` config section (:class:`~p2pllm_abm.config.MarketConfig`)."""
    outside = float("inf") if market.outside_option is None else float(market.outside_option)
    return MarketParams(market.alpha, market.temperature, market.demand, market.eta, market.price_floor,
                        market.marginal_cost, outside)


def outside_logit(params: MarketParams) -> Array:
    """``-w_0 / T``, the no-purchase alternative's logit (``-inf`` without an outside option; the
    inner ``where`` keeps derivatives in T finite there)."""
    weight = jnp.asarray(params.outside_weight, dtype=float)
    finite = jnp.isfinite(weight)
    return jnp.where(finite, -jnp.where(finite, weight, 0.0) / params.temperature, -jnp.inf)


def unit_cost(cost: Array, params: MarketParams) -> Array:
    """``kappa c_i``: what serving a request costs the peer in the profit variant (0 by default)."""
    return params.marginal_cost * cost


def node_weights(price: Array, cost: Array, alpha: float | Array) -> Array:
    """Eq. 1: ``w_i = alpha p_i + (1 - alpha) c_i``."""
    return alpha * price + (1.0 - alpha) * cost


def choice_logits(price: Array, cost: Array, alive: Array, alpha: float, temperature: float) -> Array:
    """``-w_i / T`` for live peers, ``-inf`` for the others."""
    return jnp.where(alive, -node_weights(price, cost, alpha) / temperature, -jnp.inf)


def stage_logsumexp(logits: Array, stage: Array, n_stages: int) -> Array:
    """``log sum_{j in s} exp(logit_j)`` per stage ``s``, shifted by the stage maximum so that
    nothing overflows (logits of -1e4 or +1e4 are fine); ``-inf`` for a stage with no live peer."""
    top = jax.ops.segment_max(logits, stage, num_segments=n_stages)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    mass = jax.ops.segment_sum(jnp.exp(logits - top[stage]), stage, num_segments=n_stages)
    return top + jnp.log(mass)


def choice_probabilities(
    price: Array, cost: Array, stage: Array, alive: Array, alpha: float, temperature: float, n_stages: int,
    outside: Array | float = -jnp.inf,
) -> Array:
    """Eq. 3 with ``epsilon_i = w_i``: the probability that a request picks peer ``i`` in its stage
    (``outside``: the logit of a no-purchase alternative, :func:`outside_logit`)."""
    logits = choice_logits(price, cost, alive, alpha, temperature)
    return jnp.exp(logits - jnp.logaddexp(stage_logsumexp(logits, stage, n_stages), outside)[stage])


def expected_revenue(
    price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int
) -> Array:
    """Eq. 2: ``R_i = D (p_i - kappa c_i) P_i`` (``kappa = 0``: the paper's ``D p_i P_i``)."""
    probs = choice_probabilities(price, cost, stage, alive, params.alpha, params.temperature, n_stages,
                                 outside_logit(params))
    return params.demand * (price - unit_cost(cost, params)) * probs


def log_rival_mass(logits: Array, stage: Array, n_stages: int) -> Array:
    """``log sum_{j != i, j in stage(i)} exp(logit_j)``: the rest of peer ``i``'s stage
    (``-inf`` for a peer alone in its stage).

    Computed without cancellation: for every peer but its stage's leader (largest logit) the sum
    includes the leader's term, so ``sum - own`` shifted by the stage maximum is at least 1; the
    leader's own rest is summed directly, shifted by the stage's second-largest logit. Exact even
    when one peer's logit exceeds all others by far more than float64's range (~745)."""
    peers = jnp.arange(logits.shape[0])
    top = jax.ops.segment_max(logits, stage, num_segments=n_stages)
    top = jnp.where(jnp.isfinite(top), top, 0.0)[stage]
    leader_index = jax.ops.segment_min(jnp.where(logits == top, peers, logits.shape[0]), stage, num_segments=n_stages)
    leader = peers == leader_index[stage]
    second = jax.ops.segment_max(jnp.where(leader, -jnp.inf, logits), stage, num_segments=n_stages)
    second = jnp.where(jnp.isfinite(second), second, 0.0)[stage]
    own = jnp.exp(logits - top)
    others = jax.ops.segment_sum(own, stage, num_segments=n_stages)[stage] - own
    rest = jax.ops.segment_sum(jnp.where(leader, 0.0, jnp.exp(logits - second)), stage, num_segments=n_stages)[stage]
    return jnp.where(leader, second + jnp.log(rest), top + jnp.log(jnp.maximum(others, 0.0)))


def log_competing_mass(logits: Array, stage: Array, params: MarketParams, n_stages: int) -> Array:
    """``L_i``: :func:`log_rival_mass` plus the outside option's ``exp(-w_0/T)``, everything a
    request weighs against peer ``i`` (finite for a lone peer only with an outside option)."""
    return jnp.logaddexp(log_rival_mass(logits, stage, n_stages), outside_logit(params))


def revenue_gradient(
    price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int
) -> Array:
    """``dR_i/dp_i`` for every peer by ``jax.grad``, each peer's rivals' prices held fixed.

    Peer ``i``'s revenue as a function of its own price ``q`` is
    ``D (q - kappa c_i) sigmoid(-w_i(q)/T - L_i)`` with ``L_i`` the log of its rivals' (and the
    outside option's) mass, a constant (``stop_gradient``), so the gradient of the sum over peers
    is exactly the vector of own-price derivatives, in O(n). Zero for dead peers.
    """
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    rivals = jax.lax.stop_gradient(log_competing_mass(logits, stage, params, n_stages))

    def own_revenue(q: Array) -> Array:
        own_logit = -node_weights(q, cost, params.alpha) / params.temperature
        return params.demand * (q - unit_cost(cost, params)) * jax.nn.sigmoid(own_logit - rivals)

    gradient = jax.grad(lambda q: jnp.sum(jnp.where(alive, own_revenue(q), 0.0)))(price)
    return jnp.where(alive, gradient, 0.0)


def price_step(
    price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int
) -> Array:
    """Eq. 5: one simultaneous gradient-ascent step of every live peer, kept ``>= price_floor``."""
    gradient = revenue_gradient(price, cost, stage, alive, params, n_stages)
    stepped = jnp.maximum(price + params.eta * gradient, params.price_floor)
    return jnp.where(alive, stepped, price)
