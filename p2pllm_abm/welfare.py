"""Welfare of each stage's market, the planner's benchmark and market-power measures.

Money units, per step, for the market's logit (``market.alpha``, ``T``, demand ``D``); a request's
utility from peer ``i`` is ``-w_i / alpha`` in price units (eq. 1 divided by the price weight).

- **Consumer surplus** of the logit choice (the expected best utility, Small & Rosen 1981):
  ``CS = D (T/alpha) (log sum_j exp(-w_j/T) + w_ref/T)``, the log-sum taken over the stage's peers
  and the outside option. ``w_ref`` sets the zero: the outside option's weight ``w_0`` when there is
  one (``CS >= 0``, 0 when every request walks away), else 0 (a free, instant peer); logit
  surplus is defined only up to such a constant, and differences do not depend on it.
- **Compute time bought**: ``D sum_i P_i c_i`` (ms of compute per step).
- **Revenue** ``D sum_i p_i P_i`` (eq. 2) and **producer surplus** ``D sum_i (p_i - kappa c_i) P_i``.
- **Social welfare** ``W = CS + PS``. Payments are transfers, so by the Gibbs variational
  principle ``W = D [(T/alpha) H(P) - sum_i P_i ((1 - alpha)/alpha + kappa) c_i - P_0 w_0/alpha +
  w_ref/alpha]`` (``H`` the entropy of the choice, ``P_0`` the outside share), which is maximised
  by ``P_i`` proportional to ``exp(-((1 - alpha) + alpha kappa) c_i / T)``. The **planner**
  attains it with prices equal to marginal cost, ``p_i = kappa c_i`` (0 in the paper's revenue
  game; without an outside option any common shift of a stage's prices is as good: the price
  level is a pure transfer). The planner here chooses prices, and through them the allocation of
  requests to peers; the peers' layers are taken as they are.
- **Deadweight loss** ``W* - W >= 0`` and, with an outside option (where welfare has a natural
  zero), the **price of anarchy** ``W*/W``.
- **HHI** of the stage's request shares ``s_i = P_i / sum_j P_j`` (0-10,000), the share-weighted
  **markup** ``p_i - kappa c_i``, **Lerner index** ``(p_i - kappa c_i)/p_i`` and **own-price
  elasticity** ``e_i = (dP_i/dp_i)(p_i/P_i) = -(alpha/T) p_i (1 - P_i)``. At an equilibrium of the
  revenue game ``e_i = -1`` exactly; in general the Lerner index equals ``-1/e_i`` (the inverse
  elasticity rule).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .economics import MarketParams, choice_logits, choice_probabilities, outside_logit, stage_logsumexp, unit_cost
from .equilibrium import NashGap, nash_gap

#: per-stage columns of :class:`Welfare`, in metrics.parquet's order
WELFARE_METRICS = ("consumer_surplus", "compute_time_bought", "producer_surplus", "social_welfare",
                   "planner_welfare", "deadweight_loss", "hhi", "markup", "lerner", "elasticity")


class Welfare(NamedTuple):
    """Per-stage welfare (``(n_stages,)`` each; see the module docstring)."""

    consumer_surplus: Array
    compute_time_bought: Array
    revenue: Array
    producer_surplus: Array
    social_welfare: Array
    planner_welfare: Array
    deadweight_loss: Array
    price_of_anarchy: Array  #: ``W*/W`` with an outside option, NaN without one
    hhi: Array
    markup: Array
    lerner: Array
    elasticity: Array


def _reference_weight(params: MarketParams) -> Array:
    weight = jnp.asarray(params.outside_weight, dtype=float)
    return jnp.where(jnp.isfinite(weight), weight, 0.0)


def consumer_surplus(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams,
                     n_stages: int) -> Array:
    """``D (T/alpha) (log-sum + w_ref/T)`` per stage, in money units."""
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    log_sum = jnp.logaddexp(stage_logsumexp(logits, stage, n_stages), outside_logit(params))
    return params.demand * params.temperature / params.alpha * (log_sum + _reference_weight(params) / params.temperature)


def social_welfare(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams,
                   n_stages: int) -> Array:
    """``CS + PS`` per stage."""
    probs = choice_probabilities(price, cost, stage, alive, params.alpha, params.temperature, n_stages,
                                 outside_logit(params))
    profit = jax.ops.segment_sum(jnp.where(alive, (price - unit_cost(cost, params)) * probs, 0.0), stage,
                                 num_segments=n_stages)
    return consumer_surplus(price, cost, stage, alive, params, n_stages) + params.demand * profit


def planner_price(cost: Array, params: MarketParams) -> Array:
    """The welfare-maximising prices: marginal cost ``kappa c_i``."""
    return unit_cost(jnp.asarray(cost, dtype=float), params)


def welfare(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int) -> Welfare:
    """Every stage's :class:`Welfare` at ``price`` (``alpha > 0``: surplus needs a price scale)."""
    probs = choice_probabilities(price, cost, stage, alive, params.alpha, params.temperature, n_stages,
                                 outside_logit(params))
    probs = jnp.where(alive, probs, 0.0)

    def per_stage(values):
        return jax.ops.segment_sum(jnp.where(alive, values, 0.0), stage, num_segments=n_stages)

    bought = per_stage(probs)
    share = probs / jnp.where(bought > 0, bought, 1.0)[stage]
    markup = price - unit_cost(cost, params)
    elasticity = -(params.alpha / params.temperature) * price * (1.0 - probs)
    demand = params.demand
    surplus = consumer_surplus(price, cost, stage, alive, params, n_stages)
    producer = demand * per_stage(probs * markup)
    total = surplus + producer  # social_welfare at price, from the terms already computed
    best = social_welfare(planner_price(cost, params), cost, stage, alive, params, n_stages)
    with_outside = jnp.isfinite(jnp.asarray(params.outside_weight, dtype=float))
    return Welfare(
        consumer_surplus=surplus,
        compute_time_bought=demand * per_stage(probs * cost),
        revenue=demand * per_stage(probs * price),
        producer_surplus=producer,
        social_welfare=total,
        planner_welfare=best,
        deadweight_loss=jnp.maximum(best - total, 0.0),
        price_of_anarchy=jnp.where(with_outside & (total > 0), best / jnp.where(total > 0, total, 1.0), jnp.nan),
        hhi=per_stage((100.0 * share) ** 2),
        markup=per_stage(share * markup),
        lerner=per_stage(share * markup / jnp.where(price > 0, price, 1.0)),
        elasticity=per_stage(share * elasticity),
    )


def record_measures(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int,
                    with_welfare: bool) -> tuple[NashGap, Welfare | None]:
    """What a record measures at ``price``: the Nash certificate of eq. 6
    (:func:`~p2pllm_abm.equilibrium.nash_gap`) and, ``with_welfare``, every stage's :func:`welfare`."""
    return (nash_gap(price, cost, stage, alive, params, n_stages),
            welfare(price, cost, stage, alive, params, n_stages) if with_welfare else None)


def welfare_summary(stages: Welfare, params: MarketParams) -> dict[str, Any]:
    """summary.json's ``welfare`` block: per-stage lists and totals (welfare sums over stages; the
    price of anarchy of the totals only with an outside option)."""
    per_stage = {name: [float(v) for v in np.asarray(getattr(stages, name))] for name in Welfare._fields}
    totals = {name: float(np.sum(per_stage[name])) for name in
              ("consumer_surplus", "compute_time_bought", "revenue", "producer_surplus", "social_welfare",
               "planner_welfare", "deadweight_loss")}
    outside = bool(np.isfinite(params.outside_weight))
    totals["price_of_anarchy"] = (totals["planner_welfare"] / totals["social_welfare"]
                                  if outside and totals["social_welfare"] > 0 else None)
    per_stage["price_of_anarchy"] = [v if np.isfinite(v) else None for v in per_stage["price_of_anarchy"]]
    note = ("money units per step; consumer surplus measured from the outside option" if outside else
            "money units per step; consumer surplus measured from a free instant peer (w_ref = 0); the price of "
            "anarchy needs market.outside_option (without it welfare has no natural zero)")
    return {"per_stage": per_stage, "total": totals, "note": note}
