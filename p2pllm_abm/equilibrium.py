"""Best responses and Nash-gap certificates of each stage's price game (paper section 3.4, eq. 6).

Peer ``i``'s revenue as a function of its own price ``q``, the rivals' prices fixed, is

    R_i(q) = D q sigmoid(x_i - b q - L_i),    b = alpha / T,  x_i = -(1 - alpha) c_i / T,

with ``L_i = log sum_{j != i} exp(-w_j / T)`` over the live rivals of its stage (eq. 2-3). Its
derivative is ``D sigmoid(.) g(q)`` with ``g(q) = 1 - b q (1 - P_i(q))`` (the first-order condition
``1 = (alpha/T) q (1 - P_i)``). ``b q`` and ``1 - P_i(q)`` both increase strictly in ``q``, so
``g`` falls strictly from ``g(0) = 1`` to ``-inf``: ``R_i`` increases up to the unique root of
``g`` and decreases after it. ``R_i`` is therefore strictly quasi-concave on ``q >= 0`` and the
root is its global maximiser (the best response is the root, or the price floor if that is
higher). With ``u = b q - 1`` the condition reads ``u e^u = exp(x_i - 1 - L_i)``, so ``q* = (1 + W(exp(x_i - 1 -
L_i))) / b`` (Lambert W) and ``1/b <= q* <= (1 + log1p(exp(x_i - 1 - L_i))) / b``, a bracket that
bisection shrinks to machine precision. The tests use the Lambert-W form as an independent oracle.

These certificates never look at the update rule that produced the prices: a stage is an
epsilon-Nash equilibrium when every peer's best-response revenue exceeds its current revenue by at
most epsilon.

A peer alone in its stage (``L_i = -inf``), or any peer when ``alpha = 0``, has revenue
increasing without bound in its price: it has no best response, and its gap is ``inf``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .registries import Parameter, PriceRule, price_rules
from .economics import (MarketParams, choice_logits, choice_probabilities, log_competing_mass, log_rival_mass,
                        outside_logit, price_step, unit_cost)

#: bisection halvings: more than enough to reach adjacent float64 numbers from any bracket
_BISECTIONS = 200
#: halvings between two checks of whether any bracket still changes (a divisor of _BISECTIONS)
_HALVINGS_PER_CHECK = 4


class NashGap(NamedTuple):
    """A certificate for every peer and every stage."""

    best_response: Array  #: per peer, argmax_q R_i(q, p_-i) over q >= floor (inf when unbounded)
    best_revenue: Array  #: per peer, R_i at its best response
    revenue: Array  #: per peer, R_i at its current price
    gain: Array  #: per peer, best_revenue - revenue (>= 0)
    stage_gap: Array  #: per stage, max gain (the epsilon of the epsilon-Nash equilibrium)
    stage_relative_gap: Array  #: per stage, max gain / best_revenue
    second_order_ok: Array  #: per peer, d2R/dq2 < 0 at an interior best response (by jax.grad)


class OwnTerms(NamedTuple):
    """What peer ``i``'s revenue at its own price ``q``, ``D (q - u_i) sigmoid(x_i - b q - L_i)``,
    depends on when its rivals' prices are fixed."""

    x: Array  #: own logit at price 0, ``-(1 - alpha) c_i / T``
    b: Array  #: ``alpha / T``
    rivals: Array  #: ``L_i``, log of the rivals' (and the outside option's) mass
    unit: Array  #: ``u_i = kappa c_i``, the cost of serving one request (0 in the paper's reading)


def _own_revenue(q: Array, terms: OwnTerms, demand: float) -> Array:
    """``D (q - u) sigmoid(x - b q - L)``, every peer's revenue (profit) at own price ``q``."""
    return demand * (q - terms.unit) * jax.nn.sigmoid(terms.x - terms.b * q - terms.rivals)


def _bisect_decreasing(f, low: Array, high: Array) -> Array:
    """Root of a decreasing function with ``f(low) >= 0 >= f(high)``, elementwise: up to
    :data:`_BISECTIONS` halvings, :data:`_HALVINGS_PER_CHECK` at a time, stopping after a round that
    changed no bracket. A halving is a function of the brackets alone, so once none changes none
    ever will: the result is the one all :data:`_BISECTIONS` halvings give (brackets reach adjacent
    float64 numbers in about 60)."""
    def halve(bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = f(mid) > 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    def step(carry):
        done, bounds, _ = carry
        halved = bounds
        for _ in range(_HALVINGS_PER_CHECK):
            halved = halve(halved)
        return done + _HALVINGS_PER_CHECK, halved, jnp.any((halved[0] != bounds[0]) | (halved[1] != bounds[1]))

    def running(carry):
        done, _, changed = carry
        return changed & (done < _BISECTIONS)

    _, (low, high), _ = jax.lax.while_loop(running, step, (0, (low, high), jnp.asarray(True)))
    return 0.5 * (low + high)


def _stage_terms(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams,
                 n_stages: int) -> OwnTerms:
    """:class:`OwnTerms` of every peer at ``price``."""
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    own_logit_at_zero = -(1.0 - params.alpha) * cost / params.temperature
    slope = params.alpha / params.temperature * jnp.ones_like(cost)
    return OwnTerms(own_logit_at_zero, slope, log_competing_mass(logits, stage, params, n_stages),
                    unit_cost(cost, params))


def _root_of_foc(terms: OwnTerms, price_floor: float) -> Array:
    """The best response given :class:`OwnTerms`: with the markup ``m = q - u`` the first-order
    condition ``1 = b m (1 - P(q))`` is the revenue game's with own logit ``x - b u``, so bisection
    over ``[1/b, (1 + log1p(exp(x - b u - 1 - L)))/b]`` finds ``m``; then ``q = u + m`` and the
    floor; ``inf`` when unbounded (no rival and no outside option, or ``b = 0``)."""
    b, rivals = terms.b, terms.rivals
    safe_b = jnp.where(b > 0, b, 1.0)
    x = terms.x - safe_b * terms.unit

    def foc(m):
        return 1.0 - safe_b * m * jax.nn.sigmoid(safe_b * m + rivals - x)

    low = jnp.ones_like(x) / safe_b
    high = (1.0 + jnp.logaddexp(0.0, x - 1.0 - rivals)) / safe_b
    markup = _bisect_decreasing(foc, low, jnp.where(jnp.isfinite(high), high, low))
    return jnp.where(jnp.isfinite(rivals) & (b > 0), jnp.maximum(terms.unit + markup, price_floor), jnp.inf)


def best_response(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int) -> Array:
    """Every peer's best-response price to its rivals' current prices: the root of the
    first-order condition ``1 = (alpha/T) q (1 - P_i(q))`` by bisection on the bracket
    ``[1/b, (1 + log1p(exp(x - 1 - L)))/b]``, then ``max(floor, root)``. ``inf`` for a peer with
    no rival or when ``alpha = 0``; dead peers keep their price."""
    return jnp.where(alive, _root_of_foc(_stage_terms(price, cost, stage, alive, params, n_stages),
                                         params.price_floor), price)


def _gains(price, cost, stage, alive, params: MarketParams, n_stages: int):
    """Best responses, revenues there and now, and each peer's gain (inf when unbounded)."""
    terms = _stage_terms(price, cost, stage, alive, params, n_stages)
    response = best_response(price, cost, stage, alive, params, n_stages)
    unbounded = ~jnp.isfinite(response)
    revenue = _own_revenue(price, terms, params.demand)
    best = jnp.where(unbounded, jnp.inf, _own_revenue(jnp.where(unbounded, 0.0, response), terms, params.demand))
    gain = jnp.where(alive, jnp.maximum(best - revenue, 0.0), 0.0)
    return response, best, revenue, gain


def max_gap(price, cost, stage, alive, params: MarketParams, n_stages: int) -> Array:
    """The largest epsilon-Nash gap over all stages (``inf`` if some peer has no best response)."""
    return jnp.max(_gains(price, cost, stage, alive, params, n_stages)[3])


def nash_gap(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int) -> NashGap:
    """Certify each stage's price profile (eq. 6): per-peer best responses, the revenue each peer
    would gain by playing it, and per stage the epsilon-Nash gap (absolute and relative)."""
    terms = _stage_terms(price, cost, stage, alive, params, n_stages)
    response, best, revenue, gain = _gains(price, cost, stage, alive, params, n_stages)
    unbounded = ~jnp.isfinite(response)
    relative = jnp.where(unbounded, jnp.inf, gain / jnp.where(best > 0, best, 1.0))
    relative = jnp.where(alive, relative, 0.0)

    def slope(q):
        return jax.grad(lambda z: jnp.sum(_own_revenue(z, terms, params.demand)))(q)

    curvature = jax.grad(lambda q: jnp.sum(slope(q)))(jnp.where(unbounded, 0.0, response))
    interior = response > params.price_floor
    return NashGap(
        best_response=response,
        best_revenue=best,
        revenue=revenue,
        gain=gain,
        stage_gap=jax.ops.segment_max(gain, stage, num_segments=n_stages),
        stage_relative_gap=jax.ops.segment_max(relative, stage, num_segments=n_stages),
        second_order_ok=~alive | unbounded | ~interior | (curvature < 0),
    )


#: :func:`nash_gap`, compiled once per number of stages
nash_gap_jit = jax.jit(nash_gap, static_argnames=("n_stages",))
certify = nash_gap_jit  #: the earlier name of nash_gap_jit


# -- equilibrium solvers ---------------------------------------------------------------------------



class StageBlocks(NamedTuple):
    """Peers grouped by stage for the rules that work stage by stage: ``index[s, k]`` is the
    ``k``-th live peer of stage ``s`` (``-1`` pads stages smaller than the largest)."""

    index: Array  #: int (n_stages, max_stage_size)


def padded_size(size: int) -> int:
    """``size`` rounded up to a power of two (at least 1): padded shapes change rarely, so the jitted
    functions that read them rarely compile again."""
    return 1 << max(size - 1, 0).bit_length()


#: stage block widths are multiples of this (small networks: one width while stage sizes move)
MIN_BLOCK_STEP = 16


def block_size(size: int) -> int:
    """The width of stage blocks whose largest stage has ``size`` peers: ``size`` rounded up to a
    multiple of an eighth of the next power of two, and of :data:`MIN_BLOCK_STEP` (at most 12.5%
    padding in large networks, and few distinct widths, so that the jitted steps rarely compile
    again as stage sizes change)."""
    step = max(padded_size(size) >> 3, MIN_BLOCK_STEP)
    return max(-(-size // step) * step, 1)


def stage_blocks(stage, alive, n_stages: int, min_width: int = 1) -> StageBlocks:
    """Build :class:`StageBlocks` from numpy arrays (outside jit: the block width is static). The
    width is :func:`block_size` of the largest stage (at least ``min_width``), so that reallocation
    and churn, which change stage sizes, rarely change the shape (and so rarely recompile the jitted
    steps)."""
    stage, alive = np.asarray(stage), np.asarray(alive)
    counts = np.bincount(stage[alive], minlength=n_stages)
    width = max(block_size(int(counts.max(initial=0))), min_width)
    index = np.full((n_stages, width), -1, dtype=np.int64)
    members = np.flatnonzero(alive)
    members = members[np.argsort(stage[members], kind="stable")]  # by stage, then by index
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    place = np.arange(len(members)) - np.repeat(first, counts)
    index[stage[members], place] = members
    return StageBlocks(jnp.asarray(index))


def block_width(counts: Array) -> Array:
    """:func:`block_size` of the largest of the stage sizes ``counts``, traced."""
    largest = jnp.max(counts)
    step = jnp.maximum(jnp.left_shift(1, jnp.sum(jnp.left_shift(1, jnp.arange(31)) < largest)) >> 3, MIN_BLOCK_STEP)
    return jnp.maximum((largest + step - 1) // step * step, 1)


#: up to this many stages :func:`traced_stage_blocks` ranks peers by running counts, O(n m); beyond it by
#: a sort, O(n log n) (XLA's CPU sort of 10^4 keys costs 1.2 ms, the counts 0.5 ms at 16 stages; at
#: 10^5 peers x 64 stages the sort wins, 15 ms to 22 ms)
COUNTED_RANK_STAGES = 32


def traced_stage_blocks(stage: Array, alive: Array, n_stages: int, width: int) -> tuple[StageBlocks, Array]:
    """:func:`stage_blocks` with ``min_width=width`` inside a compiled call: the same index, and
    whether every stage fits in ``width`` (when one does not, peers beyond it are left out and the
    caller must rebuild outside, wider)."""
    key = jnp.where(alive, stage, n_stages)  # dead peers in no block
    counts = jax.ops.segment_sum(alive.astype(jnp.int32), stage, num_segments=n_stages)
    if n_stages <= COUNTED_RANK_STAGES:  # each peer's rank in its stage by a running count per stage
        member = key[:, None] == jnp.arange(n_stages)
        place = jnp.sum(jnp.where(member, jnp.cumsum(member, axis=0, dtype=jnp.int32), 0), axis=1) - 1
        row, peer = key, jnp.arange(stage.shape[0])
    else:  # by a stable sort: by stage, then by index; dead peers last
        peer = jnp.argsort(key, stable=True)
        row = key[peer]
        place = jnp.arange(stage.shape[0]) - (jnp.cumsum(counts) - counts)[jnp.minimum(row, n_stages - 1)]
    index = jnp.full((n_stages, width), -1, dtype=jnp.int64).at[row, place].set(peer, mode="drop")
    return StageBlocks(index), block_width(counts) <= width


def block_arrays(price, cost, blocks: StageBlocks) -> tuple[Array, Array, Array]:
    """``(valid, q, c)``: the mask of real entries of ``blocks`` and every stage block's prices and
    costs, ``(n_stages, width)``, zeros in the padding."""
    valid = blocks.index >= 0
    gather = jnp.where(valid, blocks.index, 0)
    price, cost = jnp.asarray(price), jnp.asarray(cost)
    return valid, jnp.where(valid, price[gather], 0.0), jnp.where(valid, cost[gather], 0.0)


def fixed_point_step(price, cost, stage, alive, params: MarketParams, n_stages: int, damping: float) -> Array:
    """Damped logit-Bertrand contraction ``p <- (1 - d) p + d (kappa c + T / (alpha (1 - P)))``
    (the FOC solved for ``p`` at the current probabilities), kept ``>= floor``."""
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    rest = jax.nn.sigmoid(log_competing_mass(logits, stage, params, n_stages) - logits)  # 1 - P_i
    target = unit_cost(cost, params) + params.temperature / (params.alpha * rest)
    stepped = jnp.maximum((1.0 - damping) * price + damping * target, params.price_floor)
    return jnp.where(alive, stepped, price)


def sequential_best_response_step(price, cost, stage, alive, params: MarketParams, n_stages: int,
                                  blocks: StageBlocks) -> Array:
    """One Gauss-Seidel sweep: the ``k``-th peer of every stage best-responds, for k = 0, 1, ...,
    each seeing the responses before it (stages are independent games, so they move together).
    Only the ``n_stages`` responding peers are solved at each ``k``."""
    def respond(k, p):
        movers = blocks.index[:, k]
        valid = movers >= 0
        movers = jnp.where(valid, movers, 0)
        terms = _stage_terms(p, cost, stage, alive, params, n_stages)
        response = _root_of_foc(OwnTerms(*(t[movers] for t in terms)), params.price_floor)
        return p.at[jnp.where(valid, movers, p.shape[0])].set(response, mode="drop")

    return jax.lax.fori_loop(0, blocks.index.shape[1], respond, price)


def _stage_probabilities(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """Eq. 3 for the peers of one stage as a function of *all* their prices (padded entries 0),
    the outside option counted in the denominator."""
    logits = jnp.where(valid, -(params.alpha * q + (1.0 - params.alpha) * cost) / params.temperature, -jnp.inf)
    return jax.nn.softmax(jnp.append(logits, outside_logit(params)))[:-1]


def _stage_margin(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """``1 - (alpha/T) (q_i - kappa c_i) (1 - P_i)`` of one stage: the own-price derivative of the
    revenue divided by ``D P_i``, zero exactly at a best response."""
    probs = _stage_probabilities(q, cost, valid, params)
    return 1.0 - (params.alpha / params.temperature) * (q - unit_cost(cost, params)) * (1.0 - probs)


def _stage_foc(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """Stacked first-order conditions :func:`_stage_margin` of one stage (padded entries read
    ``q_i``, so that their Newton step keeps them at 0)."""
    return jnp.where(valid, _stage_margin(q, cost, valid, params), q)


def newton_step(price, cost, stage, alive, params: MarketParams, n_stages: int, blocks: StageBlocks) -> Array:
    """One Newton step on every stage's stacked first-order conditions, with each stage's Jacobian
    from ``jax.jacfwd``, kept ``>= floor``. Newton converges only near the equilibrium; a stage
    whose Newton step would not shrink its first-order residual (far from equilibrium, e.g. from
    p = 1 with widely spread costs) takes a simultaneous best-response step instead."""
    valid, q, c = block_arrays(price, cost, blocks)

    def one_stage(q_s, c_s, valid_s):
        residual = _stage_foc(q_s, c_s, valid_s, params)
        jacobian = jax.jacfwd(_stage_foc)(q_s, c_s, valid_s, params)
        stepped = jnp.maximum(q_s - jnp.linalg.solve(jacobian, residual), params.price_floor)
        new_residual = _stage_foc(stepped, c_s, valid_s, params)
        improves = jnp.all(jnp.isfinite(stepped)) & (jnp.max(jnp.abs(new_residual)) < jnp.max(jnp.abs(residual)))
        return stepped, improves

    stepped, improves = jax.vmap(one_stage)(q, c, valid)
    updated = price.at[jnp.where(valid, blocks.index, price.shape[0])].set(stepped, mode="drop")
    newton = jnp.where(alive, updated, price)
    fallback = best_response(price, cost, stage, alive, params, n_stages)
    return jnp.where(improves[stage], newton, fallback)


def price_update(rule: str, price, cost, stage, alive, params: MarketParams, n_stages: int,
                 blocks: StageBlocks | None, options: dict) -> Array:
    """One iteration of price rule ``rule`` (a name in :data:`~p2pllm_abm.registries.price_rules`
    with an ``update``) for every stage at once; ``options``: the rule's parameters by name."""
    return price_rules.get(rule).update(price, cost, stage, alive, params, n_stages, blocks, options)


def rule_options(rule: str, values: dict | None = None) -> dict[str, float]:
    """The parameters of price rule ``rule`` by name: ``values`` where given, else the defaults."""
    values = values or {}
    return {p.name: values.get(p.name, p.default) for p in price_rules.get(rule).parameters}


def __getattr__(name: str):
    """``allocation_equilibrium`` and ``AllocationCheck`` moved to :mod:`p2pllm_abm.allocation` (the eq.-8
    check lives with eq. 7-8); the old names still answer."""
    if name in ("allocation_equilibrium", "AllocationCheck"):
        from . import allocation
        return getattr(allocation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def solver_rules() -> tuple[str, ...]:
    """The price rules :func:`solve_equilibrium` iterates (every registered rule that is a
    deterministic map of prices)."""
    return tuple(name for name, rule in price_rules.items() if rule.solver)


class SolverResult(NamedTuple):
    price: Array  #: the last iterate (the first certified one when converged)
    iterations: int  #: updates applied
    gap: float  #: max stage Nash gap (revenue) of ``price``
    residual: float  #: max |p_i - best response_i| of ``price``
    converged: bool  #: gap <= tol and residual <= price_tol
    gap_history: Array  #: max stage gap before the first update and after each one
    residual_history: Array  #: the same for the best-response residual
    status: str = "converged"  #: "converged", "diverged", "unstable" (fixed point) or "not_converged"
    message: str = ""  #: what happened, in one sentence


def _certificate(p, cost, stage, alive, params, n_stages):
    """(max revenue gap, max |p - best response|): a profile is an equilibrium when both vanish.
    The revenue gap is quadratic in a price error, so it alone certifies prices only to about
    its square root; the residual certifies the prices themselves."""
    response, _, _, gain = _gains(p, cost, stage, alive, params, n_stages)
    residual = jnp.where(alive, jnp.abs(p - response), 0.0)
    return jnp.max(gain), jnp.max(residual)


@partial(jax.jit, static_argnames=("rule", "n_stages", "max_iterations"))
def _iterate(price, cost, stage, alive, params, blocks, options, tol, price_tol, rule, n_stages, max_iterations):
    def gap_and_residual(p):
        return _certificate(p, cost, stage, alive, params, n_stages)

    empty = jnp.full(max_iterations + 1, jnp.nan)
    gap0, residual0 = gap_and_residual(price)
    start = (0, price, empty.at[0].set(gap0), empty.at[0].set(residual0))

    def running(carry):
        it, _, gaps, residuals = carry
        certified = (gaps[it] <= tol) & (residuals[it] <= price_tol)
        return (it < max_iterations) & ~certified & jnp.isfinite(gaps[it]) & jnp.isfinite(residuals[it])

    def update(carry):
        it, p, gaps, residuals = carry
        p = price_update(rule, p, cost, stage, alive, params, n_stages, blocks, options)
        gap, residual = gap_and_residual(p)
        return it + 1, p, gaps.at[it + 1].set(gap), residuals.at[it + 1].set(residual)

    return jax.lax.while_loop(running, update, start)


def solve_equilibrium(rule: str, price, cost, stage, alive, params: MarketParams, n_stages: int,
                      tol: float = 1e-10, price_tol: float = 1e-11, max_iterations: int = 1000,
                      damping: float = 0.5, options: dict | None = None) -> SolverResult:
    """Iterate ``rule`` from ``price`` until every stage is certified (Nash gap ``<= tol`` and every
    price within ``price_tol`` of its best response, both computed independently of the rule) or
    ``max_iterations`` updates. ``options``: the rule's parameters (defaults where absent);
    ``damping`` is the ``fixed_point`` rule's, kept as a keyword."""
    if rule not in solver_rules():
        raise ValueError(f"rule = {rule!r} is invalid: allowed one of {solver_rules()}")
    options = rule_options(rule, {"damping": damping, **(options or {})})
    if not 0 < params.alpha <= 1:
        raise ValueError(f"alpha = {params.alpha} is invalid for an equilibrium: allowed 0 < alpha <= 1 "
                         "(at alpha = 0 demand ignores prices and revenue grows without bound)")
    blocks = stage_blocks(stage, alive, n_stages)
    it, final, gaps, residuals = _iterate(
        jnp.asarray(price), jnp.asarray(cost), jnp.asarray(stage), jnp.asarray(alive), params, blocks,
        options, tol, price_tol, rule, n_stages, max_iterations)
    it = int(it)
    gap, residual = float(gaps[it]), float(residuals[it])
    converged = gap <= tol and residual <= price_tol
    status, message = _solver_status(rule, converged, final, it, gap, residual, cost, stage, alive, params,
                                     n_stages, options)
    return SolverResult(final, it, gap, residual, converged, gaps[: it + 1], residuals[: it + 1], status, message)


def fixed_point_radius(price, cost, stage, alive, params: MarketParams, n_stages: int, damping: float) -> float:
    """Spectral radius of the Jacobian of the damped fixed-point map
    ``q -> (1 - d) q + d (kappa c + T / (alpha (1 - P(q))))`` at ``price`` (by ``jax.jacfwd``, one
    stage block at a time): the map converges locally iff it is below 1. Its own-price entry is
    ``1 - d - d P_i / (1 - P_i)``, so a stage leader with ``P_i > 1 - d/2`` alone makes it
    unstable (0.75 at the default d = 0.5)."""
    blocks = stage_blocks(stage, alive, n_stages)
    valid, q, c = block_arrays(price, cost, blocks)

    def damped_map(q_s, c_s, valid_s):
        target = unit_cost(c_s, params) + 1.0 / ((params.alpha / params.temperature)
                                                 * (1.0 - _stage_probabilities(q_s, c_s, valid_s, params)))
        return jnp.where(valid_s, (1.0 - damping) * q_s + damping * target, 0.0)

    jacobians = np.asarray(jax.vmap(jax.jacfwd(damped_map))(q, c, valid))
    return float(max(np.max(np.abs(np.linalg.eigvals(j)), initial=0.0) for j in jacobians))


def _solver_status(rule, converged, price, iterations, gap, residual, cost, stage, alive, params, n_stages,
                   options) -> tuple[str, str]:
    """Classify a finished :func:`solve_equilibrium` run, in one sentence (a rule's ``diagnose``
    says why it did not converge, where it can)."""
    if converged:
        return "converged", f"certified after {iterations} iterations (gap {gap:.3g}, residual {residual:.3g})"
    if not (np.isfinite(gap) and np.isfinite(residual) and np.all(np.isfinite(np.asarray(price)))):
        return "diverged", (f"prices left every bound after {iterations} iterations (a peer with no best "
                            "response, or an unstable update rule)")
    diagnose = price_rules.get(rule).diagnose
    diagnosis = diagnose(price, iterations, cost, stage, alive, params, n_stages, options) if diagnose else None
    return diagnosis or ("not_converged", f"not certified after {iterations} iterations (gap {gap:.3g}, "
                                          f"residual {residual:.3g})")


def _fixed_point_diagnosis(price, iterations, cost, stage, alive, params, n_stages, options):
    """``("unstable", why)`` when the damped fixed point is unstable at the equilibrium (found by
    Newton), else ``None``."""
    damping = options["damping"]
    reference = solve_equilibrium("newton", price, cost, stage, alive, params, n_stages)
    if not reference.converged:
        return None
    radius = fixed_point_radius(reference.price, cost, stage, alive, params, n_stages, damping)
    if radius < 1.0:
        return None
    leader = float(jnp.max(choice_probabilities(reference.price, cost, stage, alive, params.alpha,
                                                params.temperature, n_stages, outside_logit(params))))
    return "unstable", (
        f"the damped fixed point is unstable at the equilibrium (spectral radius {radius:.3g} >= 1; "
        f"the stage leader's P = {leader:.3g} exceeds 1 - damping/2 = {1 - damping / 2:.3g}): it "
        f"cycles or runs away (max price {float(jnp.max(jnp.asarray(price))):.3g} after {iterations} "
        f"iterations); use newton or sequential_best_response, or damping < {2 * (1 - leader):.3g}")


# -- stability of the paper's gradient ascent -------------------------------------------------------

def _stage_gradient(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """Closed-form own-price gradient ``D P (1 - (alpha/T) (q - kappa c) (1 - P))`` of one stage,
    as a function of *all* its prices (``revenue_gradient`` holds rivals fixed, so it cannot give
    cross terms)."""
    gradient = params.demand * _stage_probabilities(q, cost, valid, params) * _stage_margin(q, cost, valid, params)
    return jnp.where(valid, gradient, 0.0)


def gradient_jacobian_eigenvalues(price, cost, stage, alive, params: MarketParams, n_stages: int) -> list:
    """Per stage, the eigenvalues of the Jacobian ``H`` of the price gradient at ``price`` (by
    ``jax.jacfwd``). Eq. 5 maps ``p -> p + eta g(p)``, whose Jacobian is ``I + eta H``."""
    blocks = stage_blocks(stage, alive, n_stages)
    valid, q, c = block_arrays(price, cost, blocks)
    jacobians = np.asarray(jax.vmap(jax.jacfwd(_stage_gradient), in_axes=(0, 0, 0, None))(q, c, valid, params))
    sizes = np.asarray(valid).sum(axis=1)
    return [np.linalg.eigvals(j[:k, :k]) for j, k in zip(jacobians, sizes)]


def _symmetric_gradient_jacobian(q: Array, cost: Array, valid: Array, params: MarketParams) -> tuple[Array, Array]:
    """At an equilibrium of one stage, a symmetric matrix similar to the Jacobian ``H`` of the
    price gradient, and the secular sum that decides its sign.

    With markups ``m_i = p_i - kappa c_i``, ``b = alpha/T`` and ``dP_i/dp_j = b P_i P_j`` (j != i),
    ``H = D diag(P) dG/dp`` where the FOC vanishes, so
    ``H_ij = D b^2 m_i P_i^2 P_j`` (j != i) and ``H_ii = -D b P_i (1 - P_i) - D b^2 m_i P_i^2 (1 - P_i)``.
    ``S H S^-1`` with ``S = diag((m_i P_i)^-1/2)`` is ``diag(delta) + D b^2 z z^T`` with
    ``z_i = m_i^1/2 P_i^3/2`` and ``delta_i = -D b P_i (1 - P_i) - D b^2 m_i P_i^2``: real
    eigenvalues, built without forming ``H`` (whose entries underflow to ~1e-20 next to O(1)
    ones). It is negative definite iff ``sum_i D b^2 z_i^2 / |delta_i| < 1``, i.e.
    ``sum_i b m_i P_i^2 / ((1 - P_i) + b m_i P_i) < 1``; with ``b m_i (1 - P_i) = 1`` each term is
    ``P_i^2 / (1 - P_i + P_i^2) <= P_i`` (strictly for ``P_i < 1``), so the sum is below
    ``sum P_i <= 1``: every equilibrium of the price game is locally stable for small eta."""
    probs = jnp.where(valid, _stage_probabilities(q, cost, valid, params), 0.0)
    b, demand = params.alpha / params.temperature, params.demand
    markup = jnp.where(valid, jnp.maximum(q - unit_cost(cost, params), 0.0), 0.0)
    delta = -demand * b * probs * (1.0 - probs) - demand * b ** 2 * markup * probs ** 2
    z = jnp.sqrt(markup) * probs ** 1.5
    secular = jnp.sum(jnp.where(valid, b * markup * probs ** 2 / ((1.0 - probs) + b * markup * probs), 0.0))
    return jnp.diag(delta) + demand * b ** 2 * jnp.outer(z, z), secular


def stable_eta(price, cost, stage, alive, params: MarketParams, n_stages: int) -> float:
    """The largest step size for which eq. 5 is locally stable at the equilibrium ``price``:
    ``I + eta H`` has spectral radius below 1 iff every eigenvalue of ``H`` is negative and
    ``eta < 2 / max |lambda|``. ``H``'s eigenvalues are those of the symmetric
    :func:`_symmetric_gradient_jacobian`, which is negative definite at every equilibrium (its
    secular sum is below 1); its spectral radius comes from ``eigvalsh``, exact to rounding
    relative to the largest eigenvalue even when choice probabilities are ~1e-20 (a peer whose
    ``P_i`` underflows to 0 is frozen under eq. 5 and plays no part). 0 only when the secular
    sum is not below 1 (``price`` is not an equilibrium); ``inf`` for a stage whose Jacobian
    vanishes."""
    blocks = stage_blocks(stage, alive, n_stages)
    valid, q, c = block_arrays(price, cost, blocks)
    matrices, secular = jax.vmap(_symmetric_gradient_jacobian, in_axes=(0, 0, 0, None))(q, c, valid, params)
    if np.any(np.asarray(secular) >= 1.0):
        return 0.0
    radius = np.max(np.abs(np.linalg.eigvalsh(np.asarray(matrices))), initial=0.0)
    return 2.0 / radius if radius > 0 else np.inf


class GradientDiagnosis(NamedTuple):
    status: str  #: "converged", "oscillating", "diverging" or "slow"
    message: str
    first_iteration_below_tol: int | None  #: first iteration whose max Nash gap is <= tol
    final_gap: float
    eta: float
    stable_eta: float  #: the local stability bound at the equilibrium (:func:`stable_eta`)
    gap_history: Array


def diagnose_gradient_ascent(price, cost, stage, alive, params: MarketParams, n_stages: int,
                             tol: float = 1e-8, max_iterations: int = 5000) -> GradientDiagnosis:
    """Run the paper's eq. 5 from ``price`` and classify it from its certified gap history:
    converged (gap <= tol), diverging (a price or the gap leaves every bound: a stage without a
    best response), oscillating (the gap stops falling -- its peak over the last quarter of the run
    is at least half its peak over the quarter before -- and goes up in more than a fifth of the
    last quarter's iterations) or
    slow (not yet at ``tol`` after ``max_iterations``, but not oscillating)."""
    run = solve_equilibrium("gradient", price, cost, stage, alive, params, n_stages, tol=tol,
                            price_tol=np.inf, max_iterations=max_iterations)
    gaps = np.asarray(run.gap_history)
    bound = np.nan
    if np.all(np.isfinite(gaps)):
        equilibrium = solve_equilibrium("sequential_best_response", price, cost, stage, alive, params, n_stages)
        bound = stable_eta(equilibrium.price, cost, stage, alive, params, n_stages) if equilibrium.converged else np.nan
    below = np.flatnonzero(gaps <= tol)
    first = int(below[0]) if len(below) else None
    eta = float(params.eta)
    if first is not None:
        status, message = "converged", f"gap <= {tol:g} after {first} iterations (eta = {eta:g}, stable below {bound:.4g})"
    elif not np.all(np.isfinite(gaps)) or not np.all(np.isfinite(np.asarray(run.price))):
        status, message = "diverging", ("a peer has no best response (alone in its stage, or alpha = 0): "
                                        "its price rises without bound")
    else:
        quarter = max(len(gaps) // 4, 1)
        last = gaps[-quarter - 1:]
        stalled = last.max() >= 0.5 * gaps[-2 * quarter - 1:-quarter].max()
        oscillating = stalled and np.mean(np.diff(last) > 0) > 0.2
        status = "oscillating" if oscillating else "slow"
        message = (f"eta = {eta:g} is beyond the stable range (eta < {bound:.4g}): the gap oscillates at "
                   f"{last.min():.3g} or above" if oscillating else
                   f"gap {gaps[-1]:.3g} after {max_iterations} iterations, not yet <= {tol:g} "
                   f"(eta = {eta:g}, stable below {bound:.4g})")
    return GradientDiagnosis(status, message, first, float(gaps[-1]), eta, float(bound), run.gap_history)


# -- allocation equilibrium (eq. 7-8) ---------------------------------------------------------------

# -- heterogeneous clients: a mixture of logits -----------------------------------------------------

#: grid points per peer for the mixture best response, before local refinement
_MIXTURE_GRID = 512


def mixture_revenue(q, price, cost, stage, alive, class_alpha, class_weight, temperature: float, demand: float,
                    n_stages: int) -> Array:
    """Every peer's revenue at own price ``q`` (rivals at ``price``) when a share ``class_weight[k]``
    of requests scores peers with ``class_alpha[k]``: ``D q sum_k w_k P_ik(q)``."""
    def one_class(alpha):
        logits = choice_logits(price, cost, alive, alpha, temperature)
        rivals = log_rival_mass(logits, stage, n_stages)
        return jax.nn.sigmoid(-(alpha * q + (1.0 - alpha) * cost) / temperature - rivals)

    return demand * q * (class_weight @ jax.vmap(one_class)(class_alpha))


def _mixture_grid(price, cost, stage, alive, class_alpha, class_weight, temperature, demand, price_floor,
                  n_stages: int) -> tuple[Array, Array, Array]:
    """The own-price grid ``(grid, n)`` over the interval that must hold each peer's best response
    (see :func:`mixture_best_response`), the revenues on it, and the log rival masses per class."""
    def revenue(q):
        return mixture_revenue(q, price, cost, stage, alive, class_alpha, class_weight, temperature, demand, n_stages)

    logits = jax.vmap(lambda a: choice_logits(price, cost, alive, a, temperature))(class_alpha)
    rivals = jax.vmap(lambda lg: log_rival_mass(lg, stage, n_stages))(logits)  # (classes, n)
    own_at_zero = -(1.0 - class_alpha[:, None]) * cost / temperature
    upper = jnp.max((1.0 + jnp.logaddexp(0.0, own_at_zero - 1.0 - rivals)) * temperature / class_alpha[:, None], axis=0)
    lower = jnp.maximum(jnp.min(temperature / class_alpha), price_floor)
    upper = jnp.maximum(jnp.where(jnp.isfinite(upper), upper, lower), lower)
    grid = lower + (upper - lower) * jnp.linspace(0.0, 1.0, _MIXTURE_GRID)[:, None]  # (grid, n)
    return grid, jax.vmap(revenue)(grid), rivals


@partial(jax.jit, static_argnames=("n_stages",))
def mixture_best_response(price, cost, stage, alive, class_alpha, class_weight, temperature: float, demand: float,
                          price_floor: float, n_stages: int) -> tuple[Array, Array]:
    """Best responses when clients are a mixture of logit classes, where the closed-form FOC no
    longer applies: a bounded 1-D maximisation per peer. Each class's revenue term rises up to its
    own peak in ``[T/alpha_k, (1 + log1p(exp(x_k - 1 - L_k))) T/alpha_k]`` and falls after it, so the
    mixture's maximum lies in ``[min_k T/alpha_k, max_k upper_k]`` (or at the floor); a grid over
    that interval locates it and bisection on the ``jax.grad`` derivative refines it between the
    grid neighbours. Returns ``(best_response, best_revenue)`` per peer (``inf`` for a lone peer)."""
    def revenue(q):
        return mixture_revenue(q, price, cost, stage, alive, class_alpha, class_weight, temperature, demand, n_stages)

    def slope(q):
        return jax.grad(lambda z: jnp.sum(revenue(z)))(q)

    grid, values, rivals = _mixture_grid(price, cost, stage, alive, class_alpha, class_weight, temperature, demand,
                                         price_floor, n_stages)
    k = jnp.argmax(values, axis=0)
    columns = jnp.arange(price.shape[0])
    left = grid[jnp.maximum(k - 1, 0), columns]
    right = grid[jnp.minimum(k + 1, _MIXTURE_GRID - 1), columns]
    bracketed = (slope(left) >= 0) & (slope(right) <= 0)
    refined = _bisect_decreasing(slope, left, right)
    candidate = jnp.where(bracketed, refined, grid[k, columns])
    at_grid = values[k, columns]
    response = jnp.where(revenue(candidate) >= at_grid, candidate, grid[k, columns])
    unbounded = ~jnp.all(jnp.isfinite(rivals), axis=0)
    response = jnp.where(unbounded, jnp.inf, response)
    best = jnp.where(unbounded, jnp.inf, revenue(jnp.where(unbounded, 0.0, response)))
    return jnp.where(alive, response, price), best


def mixture_nash_gap(price, cost, stage, alive, class_alpha, class_weight, temperature: float, demand: float,
                     price_floor: float, n_stages: int) -> tuple[Array, Array]:
    """Per-peer gain and per-stage epsilon-Nash gap under a mixture of logit classes."""
    class_alpha, class_weight = jnp.asarray(class_alpha, dtype=float), jnp.asarray(class_weight, dtype=float)
    if not bool(jnp.all(class_alpha > 0)) or not bool(jnp.all(class_alpha <= 1)):
        raise ValueError(f"class_alpha = {class_alpha.tolist()} is invalid: allowed 0 < alpha <= 1 for every class")
    if not bool(jnp.all(class_weight >= 0)) or abs(float(jnp.sum(class_weight)) - 1.0) > 1e-12:
        raise ValueError(f"class_weight = {class_weight.tolist()} is invalid: allowed weights >= 0 summing to 1")
    _, best = mixture_best_response(price, cost, stage, alive, class_alpha, class_weight, temperature, demand,
                                    price_floor, n_stages)
    now = mixture_revenue(price, price, cost, stage, alive, class_alpha, class_weight, temperature, demand, n_stages)
    gain = jnp.where(alive, jnp.maximum(best - now, 0.0), 0.0)
    return gain, jax.ops.segment_max(gain, stage, num_segments=n_stages)


# -- comparative statics: the implicit function theorem --------------------------------------------

class Sensitivities(NamedTuple):
    """Derivatives of the equilibrium prices ``p*`` by the implicit function theorem."""

    d_temperature: Array  #: per peer, dp*_i/dT
    d_alpha: Array  #: per peer, dp*_i/dalpha
    d_cost: Array  #: per stage block, ``d_cost[s, k, l] = dp*_{index[s,k]} / dc_{index[s,l]}``
    index: Array  #: the blocks' peers, :class:`StageBlocks` ``index`` (-1 pads)
    own_pass_through: Array  #: per peer, dp*_i/dc_i
    common_pass_through: Array  #: per peer, dp*_i/dc when every cost of its stage rises by dc

    def cost_matrix(self, n: int) -> np.ndarray:
        """The dense ``(n, n)`` matrix ``dp*_i/dc_j`` (zero across stages)."""
        index = np.asarray(self.index)
        dense = np.zeros((n, n))
        for rows, block in zip(index, np.asarray(self.d_cost)):
            members = rows[rows >= 0]
            dense[np.ix_(members, members)] = block[: len(members), : len(members)]
        return dense


#: largest first-order residual accepted as an equilibrium by :func:`sensitivities`
SENSITIVITY_RESIDUAL = 1e-7


def sensitivities(price, cost, stage, alive, params: MarketParams, n_stages: int) -> Sensitivities:
    """Comparative statics of each stage's equilibrium (paper eq. 6): ``dp*/dc_j``, ``dp*/dT``,
    ``dp*/dalpha`` and cost pass-through.

    At an interior equilibrium the stacked first-order conditions ``G(p; c, T, alpha) = 0``
    (``G_i = 1 - (alpha/T)(p_i - kappa c_i)(1 - P_i)``, :func:`_stage_margin`) hold, so by the
    implicit function theorem ``dp*/dtheta = -(dG/dp)^-1 dG/dtheta``, with every Jacobian from
    ``jax.jacfwd`` on one stage block. ``price`` must be the equilibrium (e.g. from
    :func:`solve_equilibrium`); a profile whose first-order residual exceeds
    :data:`SENSITIVITY_RESIDUAL`, or with a price held at the floor, is refused.
    """
    price, cost = jnp.asarray(price, dtype=float), jnp.asarray(cost, dtype=float)
    blocks = stage_blocks(stage, alive, n_stages)
    valid, q, c = block_arrays(price, cost, blocks)

    def foc(q_s, c_s, valid_s, alpha, temperature):
        return _stage_foc(q_s, c_s, valid_s, params._replace(alpha=alpha, temperature=temperature))

    def one_stage(q_s, c_s, valid_s):
        args = (q_s, c_s, valid_s, params.alpha, params.temperature)
        d_price, d_cost, d_alpha, d_temperature = jax.jacfwd(foc, argnums=(0, 1, 3, 4))(*args)
        d_cost = jnp.where(valid_s[None, :], d_cost, 0.0)
        solve = partial(jnp.linalg.solve, d_price)
        residual = jnp.max(jnp.where(valid_s, jnp.abs(foc(*args)), 0.0))
        return -solve(d_cost), -solve(d_temperature), -solve(d_alpha), residual

    d_cost, d_temperature, d_alpha, residual = jax.vmap(one_stage)(q, c, valid)
    worst = float(jnp.max(residual))
    if not worst <= SENSITIVITY_RESIDUAL or bool(jnp.any(jnp.asarray(alive) & (price <= params.price_floor))):
        raise ValueError(f"price is not an interior equilibrium (max first-order residual {worst:.3g}, allowed "
                         f"<= {SENSITIVITY_RESIDUAL:g}, every price above market.price_floor): solve it first, "
                         "e.g. with solve_equilibrium('newton', ...)")

    def scatter(per_block):
        return jnp.zeros_like(price).at[jnp.where(valid, blocks.index, price.shape[0])].set(per_block, mode="drop")

    own = jnp.diagonal(d_cost, axis1=1, axis2=2)
    return Sensitivities(
        d_temperature=scatter(d_temperature),
        d_alpha=scatter(d_alpha),
        d_cost=d_cost,
        index=blocks.index,
        own_pass_through=scatter(own),
        common_pass_through=scatter(jnp.sum(d_cost, axis=2)),
    )


class MixtureEquilibria(NamedTuple):
    """Equilibria of a mixture-of-logits market found from several starts."""

    prices: np.ndarray  #: (found, n) the distinct certified equilibria
    per_stage: np.ndarray  #: (n_stages,) distinct equilibrium price vectors of each stage
    starts: int
    converged_starts: int  #: starts whose iteration reached a certified equilibrium
    contraction_share: float  #: share of sampled profiles where the sufficient condition holds
    unique_guaranteed: bool  #: the condition held at every sampled profile (see mixture_equilibria)


def best_response_slopes(price, cost, stage, alive, class_alpha, class_weight, temperature: float, demand: float,
                         price_floor: float, n_stages: int) -> Array:
    """Row sums ``sum_{j != i} |dBR_i/dp_j|`` of the best-response map's Jacobian at ``price``, by the
    implicit function theorem on each peer's first-order condition at its best response ``r_i``:
    ``dBR_i/dp_j = -(d2R_i/dq dp_j) / (d2R_i/dq2)``; ``inf`` where the second-order condition
    fails or the peer's revenue has more than one peak on its grid (a mixture's revenue can have
    one peak per class, and the best response then jumps between them). Below 1 everywhere on a
    box that the best responses map into itself, the map is continuous and a contraction there in
    the max norm, and the equilibrium is unique (Banach; Vives, *Oligopoly Pricing*, 1999,
    sec. 2.4)."""
    args = (cost, stage, alive, class_alpha, class_weight, temperature, demand, n_stages)
    response, _ = mixture_best_response(price, *args[:-1], price_floor, n_stages)

    def own_slope(q, rivals):
        return jax.grad(lambda z: jnp.sum(mixture_revenue(z, rivals, *args)))(q)

    own = jax.grad(lambda q: jnp.sum(own_slope(q, price)))(response)  # d2R_i/dq2 (R_i is separable in q)
    cross = jax.jacfwd(own_slope, argnums=1)(response, price)  # d2R_i/dq dp_j
    cross = cross * (1.0 - jnp.eye(price.shape[0])) * alive[None, :]
    sums = jnp.sum(jnp.abs(cross), axis=1) / jnp.abs(own)
    _, values, _ = _mixture_grid(price, *args[:-1], price_floor, n_stages)
    inner = values[1:-1]
    peaks = jnp.sum((inner > values[:-2]) & (inner >= values[2:]), axis=0)
    single_peaked = peaks + (values[0] > values[1]) + (values[-1] > values[-2]) <= 1
    return jnp.where(alive, jnp.where((own < 0) & single_peaked, sums, jnp.inf), 0.0)


@partial(jax.jit, static_argnames=("n_stages", "max_iterations"))
def _mixture_iterate(price, cost, stage, alive, class_alpha, class_weight, temperature, demand, price_floor,
                     n_stages: int, max_iterations: int):
    """Damped simultaneous best responses ``p <- (p + BR(p)) / 2`` until ``|BR(p) - p| <= 1e-11 (1 + p)``."""
    def respond(p):
        return mixture_best_response(p, cost, stage, alive, class_alpha, class_weight, temperature, demand,
                                     price_floor, n_stages)[0]

    def running(carry):
        it, p, r = carry
        return (it < max_iterations) & jnp.any(jnp.abs(r - p) > 1e-11 * (1.0 + jnp.abs(p)))

    def update(carry):
        it, p, r = carry
        p = 0.5 * (p + r)
        return it + 1, p, respond(p)

    return jax.lax.while_loop(running, update, (0, price, respond(price)))[1]


def mixture_equilibria(cost, stage, alive, class_alpha, class_weight, temperature: float, demand: float = 1.0,
                       price_floor: float = 0.0, n_stages: int = 1, starts: int = 8, samples: int = 32,
                       seed: int = 0, tol: float = 1e-9, max_iterations: int = 2000) -> MixtureEquilibria:
    """Search for every equilibrium of a market whose clients are a mixture of logit classes, where
    uniqueness is not guaranteed (a single class has exactly one).

    From ``starts`` profiles (all prices at the lowest bracket ``min_k T/alpha_k``, and random
    profiles up to three times ``max_k T/alpha_k``), damped simultaneous best responses run to a
    fixed point; one whose mixture Nash gap is ``<= tol`` is an equilibrium, and equilibria within
    ``1e-6`` (relative) are one. The sufficient condition of :func:`best_response_slopes` (row sums
    below 1) is checked at every equilibrium found and at ``samples`` random profiles of the box
    spanned by the starts and the equilibria: ``unique_guaranteed`` when it holds at all of them.
    That is a sampled check of a condition that must hold on the whole box, so evidence rather than
    proof; where it fails, the number of equilibria found is what the search can say.
    """
    cost, stage, alive = jnp.asarray(cost, dtype=float), jnp.asarray(stage), jnp.asarray(alive)
    class_alpha, class_weight = jnp.asarray(class_alpha, dtype=float), jnp.asarray(class_weight, dtype=float)
    rng = np.random.default_rng(seed)
    low = max(float(jnp.min(temperature / class_alpha)), price_floor)
    high = 3.0 * float(jnp.max(temperature / class_alpha))
    n = cost.shape[0]
    args = (cost, stage, alive, class_alpha, class_weight, temperature, demand, price_floor)
    found, converged = [], 0
    for start in [np.full(n, low)] + [rng.uniform(low, high, n) for _ in range(starts - 1)]:
        price = np.asarray(_mixture_iterate(jnp.asarray(start), *args, n_stages, max_iterations))
        if float(jnp.max(mixture_nash_gap(price, *args[:-1], price_floor, n_stages)[0])) <= tol:
            converged += 1
            if not any(np.max(np.abs(price - f) / np.abs(f)) < 1e-6 for f in found):
                found.append(price)
    prices = np.array(found).reshape(len(found), n)
    top = max(high, float(prices.max(initial=high)))
    profiles = list(prices) + [rng.uniform(low, top, n) for _ in range(samples)]
    holds = [float(jnp.max(best_response_slopes(jnp.asarray(p), *args, n_stages))) < 1.0 for p in profiles]
    stage_np = np.asarray(stage)
    per_stage = np.array([len({tuple(np.round(p[stage_np == s], 6)) for p in prices}) for s in range(n_stages)])
    return MixtureEquilibria(prices, per_stage, starts, converged, float(np.mean(holds)), bool(all(holds)))


# -- the built-in price rules (registered as a plug-in registers its own) --------------------------

price_rules.register("gradient", PriceRule(
    update=lambda price, cost, stage, alive, params, n_stages, blocks, options:
        price_step(price, cost, stage, alive, params, n_stages),
    zero_alpha=True, doc="the paper's eq. 5: p <- p + eta dR/dp, every peer at once"))
price_rules.register("best_response", PriceRule(
    update=lambda price, cost, stage, alive, params, n_stages, blocks, options:
        best_response(price, cost, stage, alive, params, n_stages),
    doc="every peer jumps to its best response to the others' current prices (Jacobi)"))
price_rules.register("sequential_best_response", PriceRule(
    update=lambda price, cost, stage, alive, params, n_stages, blocks, options:
        sequential_best_response_step(price, cost, stage, alive, params, n_stages, blocks),
    reads_blocks=True, doc="the peers of every stage best-respond one after another (Gauss-Seidel)"))
price_rules.register("fixed_point", PriceRule(
    update=lambda price, cost, stage, alive, params, n_stages, blocks, options:
        fixed_point_step(price, cost, stage, alive, params, n_stages, options["damping"]),
    parameters=(Parameter("damping", 0.5, 0.0, 1.0, low_open=True, field="market.damping",
                          doc="step share of the damped fixed point"),),
    diagnose=_fixed_point_diagnosis, doc="damped p = kappa c + T / (alpha (1 - P))"))
price_rules.register("newton", PriceRule(
    update=lambda price, cost, stage, alive, params, n_stages, blocks, options:
        newton_step(price, cost, stage, alive, params, n_stages, blocks),
    reads_blocks=True, doc="Newton on every stage's stacked first-order conditions"))
