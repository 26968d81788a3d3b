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

from .config import UPDATE_RULES
from .economics import MarketParams, choice_logits, log_rival_mass, price_step

#: bisection halvings: more than enough to reach adjacent float64 numbers from any bracket
_BISECTIONS = 200


class NashGap(NamedTuple):
    """A certificate for every peer and every stage."""

    best_response: Array  #: per peer, argmax_q R_i(q, p_-i) over q >= floor (inf when unbounded)
    best_revenue: Array  #: per peer, R_i at its best response
    revenue: Array  #: per peer, R_i at its current price
    gain: Array  #: per peer, best_revenue - revenue (>= 0)
    stage_gap: Array  #: per stage, max gain (the epsilon of the epsilon-Nash equilibrium)
    stage_relative_gap: Array  #: per stage, max gain / best_revenue
    second_order_ok: Array  #: per peer, d2R/dq2 < 0 at an interior best response (by jax.grad)


def _own_revenue(q: Array, own_logit_at_zero: Array, slope: Array, log_rivals: Array, demand: float) -> Array:
    """``D q sigmoid(x - b q - L)``, every peer's revenue at own price ``q``."""
    return demand * q * jax.nn.sigmoid(own_logit_at_zero - slope * q - log_rivals)


def _bisect_decreasing(f, low: Array, high: Array) -> Array:
    """Root of a decreasing function with ``f(low) >= 0 >= f(high)``, elementwise."""
    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = f(mid) > 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    low, high = jax.lax.fori_loop(0, _BISECTIONS, halve, (low, high))
    return 0.5 * (low + high)



def _stage_terms(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int):
    """``x_i`` (own logit at price 0), ``b`` and ``L_i`` (log rival mass) for every peer."""
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    own_logit_at_zero = -(1.0 - params.alpha) * cost / params.temperature
    slope = params.alpha / params.temperature
    return own_logit_at_zero, slope, log_rival_mass(logits, stage, n_stages)


def _root_of_foc(x: Array, b: Array, rivals: Array, price_floor: float) -> Array:
    """The best response given the terms of :func:`_stage_terms`: bisection on the first-order
    condition over ``[1/b, (1 + log1p(exp(x - 1 - L)))/b]``, then the floor; ``inf`` when
    unbounded (no rival, or ``b = 0``)."""
    safe_b = jnp.where(b > 0, b, 1.0)

    def foc(q):
        return 1.0 - safe_b * q * jax.nn.sigmoid(safe_b * q + rivals - x)

    low = jnp.ones_like(x) / safe_b
    high = (1.0 + jnp.logaddexp(0.0, x - 1.0 - rivals)) / safe_b
    root = _bisect_decreasing(foc, low, jnp.where(jnp.isfinite(high), high, low))
    return jnp.where(jnp.isfinite(rivals) & (b > 0), jnp.maximum(root, price_floor), jnp.inf)


def best_response(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int) -> Array:
    """Every peer's best-response price to its rivals' current prices: the root of the
    first-order condition ``1 = (alpha/T) q (1 - P_i(q))`` by bisection on the bracket
    ``[1/b, (1 + log1p(exp(x - 1 - L)))/b]``, then ``max(floor, root)``. ``inf`` for a peer with
    no rival or when ``alpha = 0``; dead peers keep their price."""
    x, b, rivals = _stage_terms(price, cost, stage, alive, params, n_stages)
    return jnp.where(alive, _root_of_foc(x, b * jnp.ones_like(x), rivals, params.price_floor), price)


def _gains(price, cost, stage, alive, params: MarketParams, n_stages: int):
    """Best responses, revenues there and now, and each peer's gain (inf when unbounded)."""
    x, b, rivals = _stage_terms(price, cost, stage, alive, params, n_stages)
    response = best_response(price, cost, stage, alive, params, n_stages)
    unbounded = ~jnp.isfinite(response)
    revenue = _own_revenue(price, x, b, rivals, params.demand)
    best = jnp.where(unbounded, jnp.inf,
                     _own_revenue(jnp.where(unbounded, 0.0, response), x, b, rivals, params.demand))
    gain = jnp.where(alive, jnp.maximum(best - revenue, 0.0), 0.0)
    return response, best, revenue, gain


def max_gap(price, cost, stage, alive, params: MarketParams, n_stages: int) -> Array:
    """The largest epsilon-Nash gap over all stages (``inf`` if some peer has no best response)."""
    return jnp.max(_gains(price, cost, stage, alive, params, n_stages)[3])


def nash_gap(price: Array, cost: Array, stage: Array, alive: Array, params: MarketParams, n_stages: int) -> NashGap:
    """Certify each stage's price profile (eq. 6): per-peer best responses, the revenue each peer
    would gain by playing it, and per stage the epsilon-Nash gap (absolute and relative)."""
    x, b, rivals = _stage_terms(price, cost, stage, alive, params, n_stages)
    response, best, revenue, gain = _gains(price, cost, stage, alive, params, n_stages)
    unbounded = ~jnp.isfinite(response)
    relative = jnp.where(unbounded, jnp.inf, gain / jnp.where(best > 0, best, 1.0))
    relative = jnp.where(alive, relative, 0.0)

    def slope(q):
        return jax.grad(lambda z: jnp.sum(_own_revenue(z, x, b, rivals, params.demand)))(q)

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
certify = jax.jit(nash_gap, static_argnames=("n_stages",))


# -- equilibrium solvers ---------------------------------------------------------------------------



class StageBlocks(NamedTuple):
    """Peers grouped by stage for the rules that work stage by stage: ``index[s, k]`` is the
    ``k``-th live peer of stage ``s`` (``-1`` pads stages smaller than the largest)."""

    index: Array  #: int (n_stages, max_stage_size)


def stage_blocks(stage, alive, n_stages: int) -> StageBlocks:
    """Build :class:`StageBlocks` from numpy arrays (outside jit: the block width is static). The
    width is the largest stage's size rounded up to a power of two, so that reallocation, which
    changes stage sizes, rarely changes the shape (and so rarely recompiles the jitted steps)."""
    stage, alive = np.asarray(stage), np.asarray(alive)
    counts = np.bincount(stage[alive], minlength=n_stages)
    width = 1 << max(int(counts.max(initial=0)) - 1, 0).bit_length()
    index = np.full((n_stages, width), -1, dtype=np.int64)
    for s in range(n_stages):
        members = np.flatnonzero(alive & (stage == s))
        index[s, : len(members)] = members
    return StageBlocks(jnp.asarray(index))


def fixed_point_step(price, cost, stage, alive, params: MarketParams, n_stages: int, damping: float) -> Array:
    """Damped logit-Bertrand contraction ``p <- (1 - d) p + d T / (alpha (1 - P))`` (the FOC
    solved for ``p`` at the current probabilities), kept ``>= floor``."""
    logits = choice_logits(price, cost, alive, params.alpha, params.temperature)
    rest = jax.nn.sigmoid(log_rival_mass(logits, stage, n_stages) - logits)  # 1 - P_i
    target = params.temperature / (params.alpha * rest)
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
        x, b, rivals = _stage_terms(p, cost, stage, alive, params, n_stages)
        response = _root_of_foc(x[movers], b * jnp.ones(movers.shape), rivals[movers], params.price_floor)
        return p.at[jnp.where(valid, movers, p.shape[0])].set(response, mode="drop")

    return jax.lax.fori_loop(0, blocks.index.shape[1], respond, price)


def _stage_foc(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """Stacked first-order conditions ``1 - (alpha/T) q_i (1 - P_i)`` of one stage (padded entries
    read ``q_i``, so that their Newton step keeps them at 0)."""
    logits = jnp.where(valid, -(params.alpha * q + (1.0 - params.alpha) * cost) / params.temperature, -jnp.inf)
    probs = jax.nn.softmax(logits)
    foc = 1.0 - (params.alpha / params.temperature) * q * (1.0 - probs)
    return jnp.where(valid, foc, q)


def newton_step(price, cost, stage, alive, params: MarketParams, n_stages: int, blocks: StageBlocks) -> Array:
    """One Newton step on every stage's stacked first-order conditions, with each stage's Jacobian
    from ``jax.jacfwd``, kept ``>= floor``. Newton converges only near the equilibrium; a stage
    whose Newton step would not shrink its first-order residual (far from equilibrium, e.g. from
    p = 1 with widely spread costs) takes a simultaneous best-response step instead."""
    valid = blocks.index >= 0
    gather = jnp.where(valid, blocks.index, 0)
    q, c = jnp.where(valid, price[gather], 0.0), jnp.where(valid, cost[gather], 0.0)

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
                 blocks: StageBlocks, damping: float) -> Array:
    """One iteration of update ``rule`` (one of :data:`UPDATE_RULES`) for every stage at once."""
    if rule == "gradient":
        return price_step(price, cost, stage, alive, params, n_stages)
    if rule == "best_response":
        return best_response(price, cost, stage, alive, params, n_stages)
    if rule == "sequential_best_response":
        return sequential_best_response_step(price, cost, stage, alive, params, n_stages, blocks)
    if rule == "fixed_point":
        return fixed_point_step(price, cost, stage, alive, params, n_stages, damping)
    if rule == "newton":
        return newton_step(price, cost, stage, alive, params, n_stages, blocks)
    raise ValueError(f"rule = {rule!r} is invalid: allowed one of {UPDATE_RULES}")


class SolverResult(NamedTuple):
    price: Array  #: the last iterate (the first certified one when converged)
    iterations: int  #: updates applied
    gap: float  #: max stage Nash gap (revenue) of ``price``
    residual: float  #: max |p_i - best response_i| of ``price``
    converged: bool  #: gap <= tol and residual <= price_tol
    gap_history: Array  #: max stage gap before the first update and after each one
    residual_history: Array  #: the same for the best-response residual


def _certificate(p, cost, stage, alive, params, n_stages):
    """(max revenue gap, max |p - best response|): a profile is an equilibrium when both vanish.
    The revenue gap is quadratic in a price error, so it alone certifies prices only to about
    its square root; the residual certifies the prices themselves."""
    response, _, _, gain = _gains(p, cost, stage, alive, params, n_stages)
    residual = jnp.where(alive, jnp.abs(p - response), 0.0)
    return jnp.max(gain), jnp.max(residual)


@partial(jax.jit, static_argnames=("rule", "n_stages", "max_iterations"))
def _iterate(price, cost, stage, alive, params, blocks, damping, tol, price_tol, rule, n_stages, max_iterations):
    def certify(p):
        return _certificate(p, cost, stage, alive, params, n_stages)

    empty = jnp.full(max_iterations + 1, jnp.nan)
    gap0, residual0 = certify(price)
    start = (0, price, empty.at[0].set(gap0), empty.at[0].set(residual0))

    def running(carry):
        it, _, gaps, residuals = carry
        certified = (gaps[it] <= tol) & (residuals[it] <= price_tol)
        return (it < max_iterations) & ~certified & jnp.isfinite(gaps[it]) & jnp.isfinite(residuals[it])

    def update(carry):
        it, p, gaps, residuals = carry
        p = price_update(rule, p, cost, stage, alive, params, n_stages, blocks, damping)
        gap, residual = certify(p)
        return it + 1, p, gaps.at[it + 1].set(gap), residuals.at[it + 1].set(residual)

    return jax.lax.while_loop(running, update, start)


def solve_equilibrium(rule: str, price, cost, stage, alive, params: MarketParams, n_stages: int,
                      tol: float = 1e-10, price_tol: float = 1e-11, max_iterations: int = 1000,
                      damping: float = 0.5) -> SolverResult:
    """Iterate ``rule`` from ``price`` until every stage is certified (Nash gap ``<= tol`` and every
    price within ``price_tol`` of its best response, both computed independently of the rule) or
    ``max_iterations`` updates."""
    if rule not in UPDATE_RULES:
        raise ValueError(f"rule = {rule!r} is invalid: allowed one of {UPDATE_RULES}")
    if not 0 < params.alpha <= 1:
        raise ValueError(f"alpha = {params.alpha} is invalid for an equilibrium: allowed 0 < alpha <= 1 "
                         "(at alpha = 0 demand ignores prices and revenue grows without bound)")
    blocks = stage_blocks(stage, alive, n_stages)
    it, final, gaps, residuals = _iterate(
        jnp.asarray(price), jnp.asarray(cost), jnp.asarray(stage), jnp.asarray(alive), params, blocks,
        damping, tol, price_tol, rule, n_stages, max_iterations)
    it = int(it)
    gap, residual = float(gaps[it]), float(residuals[it])
    return SolverResult(final, it, gap, residual, gap <= tol and residual <= price_tol,
                        gaps[: it + 1], residuals[: it + 1])


# -- stability of the paper's gradient ascent -------------------------------------------------------

def _stage_gradient(q: Array, cost: Array, valid: Array, params: MarketParams) -> Array:
    """Closed-form own-price gradient ``D P (1 - (alpha/T) q (1 - P))`` of one stage, as a function
    of *all* its prices (``revenue_gradient`` holds rivals fixed, so it cannot give cross terms)."""
    logits = jnp.where(valid, -(params.alpha * q + (1.0 - params.alpha) * cost) / params.temperature, -jnp.inf)
    probs = jax.nn.softmax(logits)
    gradient = params.demand * probs * (1.0 - (params.alpha / params.temperature) * q * (1.0 - probs))
    return jnp.where(valid, gradient, 0.0)


def gradient_jacobian_eigenvalues(price, cost, stage, alive, params: MarketParams, n_stages: int) -> list:
    """Per stage, the eigenvalues of the Jacobian ``H`` of the price gradient at ``price`` (by
    ``jax.jacfwd``). Eq. 5 maps ``p -> p + eta g(p)``, whose Jacobian is ``I + eta H``."""
    blocks = stage_blocks(stage, alive, n_stages)
    valid = blocks.index >= 0
    gather = jnp.where(valid, blocks.index, 0)
    q, c = jnp.where(valid, jnp.asarray(price)[gather], 0.0), jnp.where(valid, jnp.asarray(cost)[gather], 0.0)
    jacobians = np.asarray(jax.vmap(jax.jacfwd(_stage_gradient), in_axes=(0, 0, 0, None))(q, c, valid, params))
    sizes = np.asarray(valid).sum(axis=1)
    return [np.linalg.eigvals(j[:k, :k]) for j, k in zip(jacobians, sizes)]


def stable_eta(price, cost, stage, alive, params: MarketParams, n_stages: int) -> float:
    """The largest step size for which eq. 5 is locally stable at the equilibrium ``price``:
    the spectral radius of ``I + eta H`` is below 1 iff ``eta < min over eigenvalues of
    -2 Re(lambda) / |lambda|^2`` (every ``Re(lambda) < 0``). 0 when some eigenvalue has
    ``Re(lambda) >= 0`` (no step size is stable); ``inf`` for a stage whose Jacobian vanishes."""
    bound = np.inf
    for eigenvalues in gradient_jacobian_eigenvalues(price, cost, stage, alive, params, n_stages):
        eigenvalues = eigenvalues[np.abs(eigenvalues) > 0]
        if np.any(eigenvalues.real >= 0):
            return 0.0
        if len(eigenvalues):
            bound = min(bound, float(np.min(-2 * eigenvalues.real / np.abs(eigenvalues) ** 2)))
    return bound


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

class AllocationCheck(NamedTuple):
    efficient: bool  #: no peer can raise its eq.-7 share by moving
    violators: "np.ndarray"  #: peers that would gain by moving
    target_stage: "np.ndarray"  #: their eq.-8 optimal stage
    share_gain: "np.ndarray"  #: the share each would gain
    peers_per_stage: "np.ndarray"
    capacity_per_stage: "np.ndarray"  #: sum of 1/c per stage
    capacity_ratio: float  #: max / min stage capacity (1 = perfectly balanced)


def allocation_equilibrium(cost, stage, alive, n_stages: int) -> AllocationCheck:
    """Check eq. 8 for every live peer and report the balance of the allocation."""
    from .allocation import share_gains, stage_capacity

    cost, stage, alive = np.asarray(cost), np.asarray(stage), np.asarray(alive)
    best, gain = share_gains(cost, stage, alive, n_stages)
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

    logits = jax.vmap(lambda a: choice_logits(price, cost, alive, a, temperature))(class_alpha)
    rivals = jax.vmap(lambda lg: log_rival_mass(lg, stage, n_stages))(logits)  # (classes, n)
    own_at_zero = -(1.0 - class_alpha[:, None]) * cost / temperature
    upper = jnp.max((1.0 + jnp.logaddexp(0.0, own_at_zero - 1.0 - rivals)) * temperature / class_alpha[:, None], axis=0)
    lower = jnp.maximum(jnp.min(temperature / class_alpha), price_floor)
    upper = jnp.maximum(jnp.where(jnp.isfinite(upper), upper, lower), lower)
    grid = lower + (upper - lower) * jnp.linspace(0.0, 1.0, _MIXTURE_GRID)[:, None]  # (grid, n)
    values = jax.vmap(revenue)(grid)
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
