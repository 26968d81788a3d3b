"""Consecutive market ticks fused into one jitted call (paper section 5.1, phases 1-2).

A tick is: (1) every client sends a request with probability ``request_rate``; the request picks
in each stage the peer with the smallest weight plus Gumbel noise of scale T (the logit choice,
which realises exactly the Boltzmann probabilities of eq. 3) and pays each chosen peer its
current price; (2) every peer updates its price by ``market.update_rule`` (the paper's eq. 5
by default; see :mod:`p2pllm_abm.equilibrium` for the others). Ticks between two events that need
Python (reallocation, metrics) run inside a single ``lax.fori_loop``: a call into JAX costs about
70 us, one tick at 10^4 peers about as much.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from .economics import MarketParams, choice_logits, stage_logsumexp
from .equilibrium import StageBlocks, price_update


class MarketState(NamedTuple):
    """What changes from tick to tick. Revenues and requests are per peer."""

    price: Array
    key: Array
    revenue: Array  #: cumulative realised revenue
    requests: Array  #: cumulative requests served
    expected_requests: Array  #: cumulative sum over ticks of each requesting client's P_ci
    tick_revenue: Array  #: realised revenue in the last tick
    tick_expected_revenue: Array  #: p_i * sum_c active_c P_ci in the last tick


class Environment(NamedTuple):
    """What stays fixed during a run of ticks."""

    cost: Array
    stage: Array
    alive: Array
    client_alpha: Array  #: one alpha per client
    request_rate: float
    params: MarketParams
    blocks: StageBlocks  #: live peers by stage, for the sequential and Newton rules
    damping: float  #: of the fixed-point rule


def initial_state(price: Array, key: Array) -> MarketState:
    zeros = jnp.zeros_like(price)
    return MarketState(price, key, zeros, zeros, zeros, zeros, zeros)


def logit_choices(key: Array, env: Environment, price: Array, n_stages: int) -> tuple[Array, Array]:
    """Each client's chosen peer per stage, shape ``(clients, n_stages)``, by Gumbel-max
    (``argmin_i w_ci + T G_i`` within each stage), and the Boltzmann probabilities ``(clients, n)``
    that this choice realises."""
    peers = jnp.arange(price.shape[0])

    def one_client(alpha: Array, noise: Array) -> tuple[Array, Array]:
        logits = choice_logits(price, env.cost, env.alive, alpha, env.params.temperature)
        perturbed = logits + noise
        best = jax.ops.segment_max(perturbed, env.stage, num_segments=n_stages)
        winner = jnp.where(perturbed == best[env.stage], peers, -1)
        chosen = jax.ops.segment_max(winner, env.stage, num_segments=n_stages)
        probs = jnp.exp(logits - stage_logsumexp(logits, env.stage, n_stages)[env.stage])
        return chosen, probs

    # float32 noise: 3x cheaper to draw than float64 and only ties closer than ~1e-7 differ
    noise = jax.random.gumbel(key, (env.client_alpha.shape[0], price.shape[0]), dtype=jnp.float32)
    return jax.vmap(one_client)(env.client_alpha, noise.astype(price.dtype))


def tick(state: MarketState, env: Environment, rule: str, n_stages: int) -> MarketState:
    """One tick: requests routed and paid at current prices, then the price update ``rule``."""
    new_price = price_update(rule, state.price, env.cost, env.stage, env.alive, env.params, n_stages,
                             env.blocks, env.damping)
    if env.client_alpha.shape[0] == 0:  # no clients, no requests (decided when tracing)
        return state._replace(price=new_price)
    key, request_key, noise_key = jax.random.split(state.key, 3)
    active = jax.random.bernoulli(request_key, env.request_rate, env.client_alpha.shape)
    chosen, probs = logit_choices(noise_key, env, state.price, n_stages)
    weight = jnp.broadcast_to(active[:, None], chosen.shape).astype(state.price.dtype)
    served = jnp.zeros_like(state.price).at[chosen.ravel()].add(weight.ravel())
    expected = active.astype(state.price.dtype) @ probs
    tick_revenue = state.price * served
    return MarketState(
        price=new_price,
        key=key,
        revenue=state.revenue + tick_revenue,
        requests=state.requests + served,
        expected_requests=state.expected_requests + expected,
        tick_revenue=tick_revenue,
        tick_expected_revenue=state.price * expected,
    )


@partial(jax.jit, static_argnames=("rule", "n_stages"))
def run_ticks(state: MarketState, env: Environment, n_ticks: Array, rule: str, n_stages: int) -> MarketState:
    """``n_ticks`` consecutive ticks in one compiled loop (the trip count is traced: no recompile)."""
    return jax.lax.fori_loop(0, n_ticks, lambda _, s: tick(s, env, rule, n_stages), state)
