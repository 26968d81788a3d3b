"""Mechanism design by gradients: the cheapest spot-check protocol under which honesty is a best
response (paper 4.2), as a differentiable program over the protocol's parameters.

A design (:class:`Design`) sets the sampling probability p, the warm-up W (hops), the stake sigma
(price units), the slash fraction f, the SLA penalty lambda (times the price), the forced-error rate
phi and the jackpot J. The market it is designed for (:class:`Market`) gives the price P and compute
cost c per hop, the hops H a peer serves over T steps, the hops m a check re-executes (the stages of a
request), the fingerprint miss rate FN and the cost of capital r per step on a bond.

**Cost** (:func:`cost`, in units of serving compute): the verification overhead (compute re-executed
over compute served: p + (1 - p) min(W, H)/H), the bond's cost of capital r sigma T / (H c), and the
jackpots clients pay (phi J per check, p phi J / c per hop).

**Constraints** (:func:`constraints`, each <= 0 when met):

- *incentive compatibility of cheating peers*: with ``m_d`` the required deterrence margin, for every
  remaining horizon h and every cheat rate q, a patient cheater's gain over honesty
  (:func:`~p2pllm_abm.deterrence.deviation_gain`, exit on slash) is at most ``-m_d q h c``. Checking
  every remaining horizon makes it subgame perfect: an adaptive peer re-optimises as the run
  shortens, and the last hop, with nothing left to lose, binds. A naive lazy peer (cheating from its
  first hop) gains less than the patient one, so it is covered;
- *the verifier's dilemma*: a validator paid per check must not gain by skipping, with the same margin:
  phi (J + f sigma) >= (1 + m_d) m c (a skipped forced error is slashed like a cheat; the fee is paid
  either way);
- *the bond holds the penalties*: lambda P <= (1 - f) sigma;
- *participation*: an honest peer's profit over the run, H (P - c) - r sigma T, is >= 0.

The whistleblower share and the verification fee do not appear: in an honest equilibrium there is
nothing to report, and a fee paid per check whatever the validator does changes no incentive (it is
set to the check's compute, so validators break even). Redundancy (k replicas) costs k - 1 >= 1 in
overhead, more than any spot check, and is compared, not optimised.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from .deterrence import Protocol, expected_hops, deviation_gain

Array = jax.Array


class Market(NamedTuple):
    """What the design is for (price units; from a run of the market, :meth:`SecurityPhase.protocol
    <p2pllm_abm.security.SecurityPhase.protocol>`)."""

    price: float  #: P, per hop
    cost: float  #: c, compute per hop
    horizon: float  #: H, hops a peer serves over the run
    steps: float  #: T, steps of the run
    check_hops: float  #: m, hops one check re-executes (a request's stages)
    fn: float  #: the fingerprint's miss rate
    cost_of_capital: float  #: r, per step, on the bond


class Design(NamedTuple):
    """A spot-check protocol's parameters."""

    probability: float  #: p
    warmup: float  #: W, hops
    stake: float  #: sigma, price units: the bond every identity posts (ledger.initial_stake = ledger.min_stake)
    slash_fraction: float  #: f
    sla_penalty: float  #: lambda, times the price
    forced_error_rate: float  #: phi
    jackpot: float  #: J, price units


#: remaining horizons (fractions of H, and the last hop) and cheat rates the incentive constraint checks
HORIZON_FRACTIONS = jnp.array([1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001])
CHEAT_RATES = jnp.linspace(0.05, 1.0, 20)


def cost(design: Design, market: Market) -> Array:
    """Verification overhead + the bond's cost of capital + jackpots, in units of serving compute."""
    overhead = verification_overhead(design, market)
    capital = market.cost_of_capital * design.stake * market.steps / (market.horizon * market.cost)
    checks_per_hop = overhead / market.check_hops  # a check re-executes a request's m hops
    jackpots = checks_per_hop * design.forced_error_rate * design.jackpot / market.cost
    return overhead + capital + jackpots


def verification_overhead(design: Design, market: Market) -> Array:
    """Compute re-executed over compute served: every warm-up hop and a share p of the others."""
    warm = jnp.minimum(design.warmup, market.horizon) / market.horizon
    return warm + (1.0 - warm) * design.probability


def cheating_margin(design: Design, market: Market, temperature: float = 0.02) -> Array:
    """A smooth maximum over remaining horizons h and cheat rates q of a patient cheater's gain per
    hop it expects to cheat on, in units of c (``gain / (q n c)``, n the hops it expects to serve before
    it is caught or the run ends): <= -m_d means deterred with margin m_d (:func:`constraints`). The
    last hop binds: there the margin is ``p (1 - FN)(P + L + S) / c - 1``."""
    def gain_per_cheat(fraction, q):
        h = jnp.maximum(fraction * market.horizon, 1.0)
        protocol = Protocol(price=market.price, cost=market.cost, slash=design.slash_fraction * design.stake,
                            sla_penalty=design.sla_penalty * market.price,
                            detection=design.probability * (1.0 - market.fn), warmup_detection=0.0, warmup=0.0,
                            horizon=h, exits=True)
        served, _ = expected_hops(q, protocol.detection, h, True)
        return deviation_gain(q, protocol) / (q * served * market.cost)

    horizons = jnp.concatenate([HORIZON_FRACTIONS, jnp.array([0.0])])  # 0: the last hop (h = 1)
    gains = jax.vmap(lambda f: jax.vmap(lambda q: gain_per_cheat(f, q))(CHEAT_RATES))(horizons)
    return temperature * jax.nn.logsumexp(gains / temperature)


def constraints(design: Design, market: Market, margin: float) -> Array:
    """The constraints of the module docstring, each scaled to order one and <= 0 when met."""
    incentive = cheating_margin(design, market) + margin
    dilemma = 1.0 + margin - design.forced_error_rate * (design.jackpot + design.slash_fraction * design.stake) / (
        market.check_hops * market.cost)
    bond = (design.sla_penalty * market.price - (1.0 - design.slash_fraction) * design.stake) / market.price
    honest = market.horizon * (market.price - market.cost)
    participation = (market.cost_of_capital * design.stake * market.steps - honest) / (market.horizon * market.price)
    return jnp.stack([incentive, dilemma, bond, participation])


def design_from(u: Array, market: Market) -> Design:
    """A design from unconstrained parameters: probabilities through a sigmoid, the stake as
    ``P exp(u)`` (it ranges over orders of magnitude), the rest through a softplus (the jackpot in
    units of a check's compute)."""
    return Design(probability=jax.nn.sigmoid(u[0]), warmup=jax.nn.softplus(u[1]), stake=market.price * jnp.exp(u[2]),
                  slash_fraction=jax.nn.sigmoid(u[3]), sla_penalty=jax.nn.softplus(u[4]),
                  forced_error_rate=jax.nn.sigmoid(u[5]),
                  jackpot=market.check_hops * market.cost * jax.nn.softplus(u[6]))


class Optimum(NamedTuple):
    """What :func:`optimise` found."""

    design: Design
    cost: float
    constraints: np.ndarray  #: at the design (<= 0: met)
    feasible: bool  #: every constraint met to 1e-6
    starts_feasible: int  #: Adam starts that ended feasible (to 1e-3) before the polish


def optimise(market: Market, margin: float, starts: int = 8, seed: int = 0, outer: int = 12, inner: int = 600,
             learning_rate: float = 0.05, penalty: float = 10.0) -> Optimum:
    """The cheapest design (:func:`cost`) meeting :func:`constraints` with deterrence margin ``margin``.
    First an augmented Lagrangian (multipliers updated ``outer`` times, the penalty doubling from
    ``penalty``) whose inner problems Adam (optax) solves in ``inner`` steps, from ``starts`` random
    starts at once (vmapped); then the best end is polished by SLSQP with the same JAX gradients and
    constraint Jacobian (the augmented Lagrangian's stiff late penalties leave Adam a few per cent
    short of the optimum; SLSQP's active-set steps close that gap)."""
    import optax

    optimiser = optax.adam(learning_rate)

    def lagrangian(u, multipliers, rho):
        design = design_from(u, market)
        g = constraints(design, market, margin)
        return cost(design, market) + jnp.sum(
            (jnp.maximum(0.0, multipliers + rho * g) ** 2 - multipliers ** 2) / (2.0 * rho))

    def solve_inner(u, multipliers, rho):
        def step(carry, _):
            u, state = carry
            grads = jax.grad(lagrangian)(u, multipliers, rho)
            updates, state = optimiser.update(grads, state, u)
            return (optax.apply_updates(u, updates), state), None
        (u, _), _ = jax.lax.scan(step, (u, optimiser.init(u)), None, length=inner)
        return u

    def run(u):
        multipliers, rho = jnp.zeros(4), penalty
        for _ in range(outer):
            u = solve_inner(u, multipliers, rho)
            g = constraints(design_from(u, market), market, margin)
            multipliers, rho = jnp.maximum(0.0, multipliers + rho * g), rho * 2.0
        return u

    objective = jax.jit(lambda u: cost(design_from(u, market), market))
    slack = jax.jit(lambda u: -constraints(design_from(u, market), market, margin))  # >= 0 when met
    ends = np.asarray(jax.jit(jax.vmap(run))(jax.random.normal(jax.random.key(seed), (starts, 7))))
    gs = np.array([-np.asarray(slack(u)) for u in ends])
    costs = np.array([float(objective(u)) for u in ends])
    feasible = np.all(gs <= 1e-3, axis=1)
    start = ends[int(np.argmin(np.where(feasible, costs, np.inf)))] if feasible.any() else ends[int(np.argmin(gs.max(1)))]
    polished = minimize(lambda u: float(objective(u)), start, jac=lambda u: np.asarray(jax.grad(objective)(u)),
                        method="SLSQP", options={"maxiter": 500, "ftol": 1e-12},
                        constraints=[{"type": "ineq", "fun": lambda u: np.asarray(slack(u)),
                                      "jac": lambda u: np.asarray(jax.jacfwd(slack)(u))}])
    u = polished.x if np.all(np.asarray(slack(polished.x)) >= -1e-6) else start
    g = -np.asarray(slack(u))
    design = Design(*(float(field) for field in design_from(jnp.asarray(u), market)))
    return Optimum(design, float(objective(u)), g, bool(np.all(g <= 1e-6)), int(feasible.sum()))
