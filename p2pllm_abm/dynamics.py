"""Consecutive market ticks fused into one jitted call (paper section 5.1, phases 1-2).

A tick is: (1) every client sends a request with probability ``request_rate`` and the request is
routed and pays each peer on its path its current price; (2) every peer updates its price by
``market.update_rule`` (the paper's eq. 5 by default; see :mod:`p2pllm_abm.equilibrium` for the
others). Requests are routed by ``clients.routing``:

- ``"stage"`` (the paper's market): in each stage the peer with the smallest eq.-1 weight plus
  Gumbel noise of scale T, the logit choice that realises exactly the Boltzmann probabilities of
  eq. 3; latency plays no part in the choice.
- ``"path"``: the whole path with the smallest sum of the same noisy weights plus ``(1 - alpha)``
  times its latencies (client to first peer, hop by hop, last peer back to the client): Alg. 2
  on perturbed weights, boundary by boundary. Without latency it makes exactly the stage choice;
  it also routes spans.

Either way the realised path's total price and time (costs plus latencies) are summed per request
class (client alpha bin) for the metrics. Ticks between two events that need Python
(reallocation, metrics) run inside a single ``lax.fori_loop``: a call into JAX costs about 70 us,
one tick at 10^4 peers about as much.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from .economics import MarketParams, choice_logits, outside_logit, stage_logsumexp, unit_cost
from .equilibrium import StageBlocks, price_update
from .network import latency


class MarketState(NamedTuple):
    """What changes from tick to tick. Revenues and requests are per peer; the ``class_*`` sums are
    per request class, since the model last recorded them."""

    price: Array
    key: Array
    revenue: Array  #: cumulative realised revenue
    requests: Array  #: cumulative requests served
    expected_requests: Array  #: cumulative sum over ticks of each requesting client's P_ci
    tick_revenue: Array  #: realised revenue in the last tick
    tick_expected_revenue: Array  #: p_i * sum_c active_c P_ci in the last tick
    class_requests: Array  #: routed requests per class
    class_price: Array  #: sum of their paths' total prices
    class_time: Array  #: sum of their paths' total times (compute costs + latencies)
    baseline: Array  #: the "observed" rule's running mean of each peer's observed revenue


class Geometry(NamedTuple):
    """Where peers and clients are, for latencies (``l = low + (high - low) |a - b| / sqrt 2``)."""

    position: Array  #: (n, 2) peers in the unit square
    client_position: Array  #: (clients, 2)
    latency_range: tuple[float, float]
    ends: Array  #: (n_stages + 1, width) live peers by the boundary their span ends at, -1 pads
    client_class: Array  #: (clients, classes) one-hot request class of every client


class Environment(NamedTuple):
    """What stays fixed during a run of ticks."""

    cost: Array
    stage: Array
    alive: Array
    client_alpha: Array  #: one alpha per client
    request_rate: float
    params: MarketParams
    blocks: StageBlocks  #: live peers by (first) stage: the sequential and Newton rules, path routing
    damping: float  #: of the fixed-point rule
    geometry: Geometry
    exploration: float = 0.0  #: the "observed" rule's price perturbation delta
    baseline_rate: float = 0.0  #: the "observed" rule's baseline update rate


def initial_state(price: Array, key: Array, classes: int) -> MarketState:
    zeros, per_class = jnp.zeros_like(price), jnp.zeros(classes, dtype=price.dtype)
    return MarketState(price, key, zeros, zeros, zeros, zeros, zeros, per_class, per_class, per_class, zeros)


def _client_probabilities(env: Environment, price: Array, alpha: Array, n_stages: int) -> tuple[Array, Array]:
    """A client's logits ``-w_i / T`` and Boltzmann probabilities (eq. 3) over every peer (the
    outside option, when there is one, in the denominator)."""
    logits = choice_logits(price, env.cost, env.alive, alpha, env.params.temperature)
    total = jnp.logaddexp(stage_logsumexp(logits, env.stage, n_stages), outside_logit(env.params))
    return logits, jnp.exp(logits - total[env.stage])


def _gumbel(key: Array, env: Environment, price: Array) -> Array:
    # float32 noise: 3x cheaper to draw than float64 and only ties closer than ~1e-7 differ
    noise = jax.random.gumbel(key, (env.client_alpha.shape[0], price.shape[0]), dtype=jnp.float32)
    return noise.astype(price.dtype)


def logit_choices(key: Array, env: Environment, price: Array, n_stages: int) -> tuple[Array, Array]:
    """Each client's chosen peer per stage, shape ``(clients, n_stages)``, by Gumbel-max
    (``argmin_i w_ci + T G_i`` within each stage), and the Boltzmann probabilities ``(clients, n)``
    that this choice realises. With an outside option, a stage where ``w_0 + T G_0`` beats every
    peer is left unbought (``-1``); its noise comes from a key folded off ``key``, so the peers'
    noise, and every run without an outside option, stay as they are."""
    peers = jnp.arange(price.shape[0])
    walk_away = outside_logit(env.params) + jax.random.gumbel(
        jax.random.fold_in(key, 1), (env.client_alpha.shape[0], n_stages), dtype=price.dtype)

    def one_client(alpha: Array, noise: Array, outside: Array) -> tuple[Array, Array]:
        logits, probs = _client_probabilities(env, price, alpha, n_stages)
        perturbed = logits + noise
        best = jax.ops.segment_max(perturbed, env.stage, num_segments=n_stages)
        winner = jnp.where(perturbed == best[env.stage], peers, -1)
        chosen = jax.ops.segment_max(winner, env.stage, num_segments=n_stages)
        return jnp.where(best > outside, chosen, -1), probs

    return jax.vmap(one_client)(env.client_alpha, _gumbel(key, env, price), walk_away)


def path_choices(key: Array, env: Environment, price: Array, n_stages: int) -> tuple[Array, Array]:
    """Each client's path, shape ``(clients, n_stages)``, peers in order and right-aligned (``-1``
    pads a path of spans shorter than ``n_stages``; a row of ``-1`` when no path exists): the path
    minimising ``sum (w_v - T G_v) + (1 - alpha) sum latencies`` by Alg. 2 over the boundaries.
    Also the Boltzmann probabilities of eq. 3, as :func:`logit_choices` returns them."""
    n = price.shape[0]
    geo = env.geometry
    low, high = geo.latency_range
    source_row = jnp.full(geo.ends.shape[1], -1).at[0].set(n)  # the client, as node n

    def one_client(alpha: Array, noise: Array, home: Array) -> tuple[Array, Array]:
        logits, probs = _client_probabilities(env, price, alpha, n_stages)
        score = -env.params.temperature * (logits + noise)  # w_v - T G_v; inf for dead peers
        position = jnp.concatenate([geo.position, home[None, :]])

        def relax(boundary, carry):
            dist, previous = carry
            heads = env.blocks.index[boundary]
            tails = jnp.where(boundary == 0, source_row, geo.ends[boundary])
            h, t = jnp.maximum(heads, 0), jnp.where(tails >= 0, tails, n)
            hop = (1.0 - alpha) * latency(position[t][None, :, :], position[h][:, None, :], (low, high))
            candidates = jnp.where(tails[None, :] >= 0, dist[t][None, :] + hop, jnp.inf)
            best = jnp.argmin(candidates, axis=1)
            arrival = jnp.take_along_axis(candidates, best[:, None], axis=1)[:, 0] + score[h]
            target = jnp.where(heads >= 0, heads, n + 1)
            return dist.at[target].set(arrival, mode="drop"), previous.at[target].set(t[best], mode="drop")

        dist = jnp.full(n + 1, jnp.inf).at[n].set(0.0)
        dist, previous = jax.lax.fori_loop(0, n_stages, relax, (dist, jnp.full(n, n)))
        last = geo.ends[n_stages]
        ended = jnp.maximum(last, 0)
        totals = jnp.where(last >= 0, dist[ended] + (1.0 - alpha) * latency(position[ended], home, (low, high)),
                           jnp.inf)
        node = jnp.where(jnp.isfinite(jnp.min(totals)), ended[jnp.argmin(totals)], n)

        def trace(k, carry):
            node, path = carry
            on_path = node < n
            path = path.at[n_stages - 1 - k].set(jnp.where(on_path, node, -1))
            return jnp.where(on_path, previous[jnp.minimum(node, n - 1)], n), path

        return jax.lax.fori_loop(0, n_stages, trace, (node, jnp.full(n_stages, -1)))[1], probs

    return jax.vmap(one_client)(env.client_alpha, _gumbel(key, env, price), geo.client_position)


def path_totals(paths: Array, env: Environment, price: Array) -> tuple[Array, Array, Array]:
    """Per client: whether its row of ``paths`` (peers in order, ``-1`` pads) is a path, its total
    price, and its total time (compute costs + hop latencies + the client's latencies to the first
    peer and back from the last)."""
    geo = env.geometry

    def one(path: Array, home: Array):
        on = path >= 0
        peer = jnp.maximum(path, 0)
        where = geo.position[peer]
        hops = jnp.where(on[:-1] & on[1:], latency(where[:-1], where[1:], geo.latency_range), 0.0)
        ends = latency(home, where[jnp.argmax(on)], geo.latency_range) + latency(where[-1], home, geo.latency_range)
        time = jnp.sum(jnp.where(on, env.cost[peer], 0.0)) + jnp.sum(hops) + ends
        return jnp.any(on), jnp.sum(jnp.where(on, price[peer], 0.0)), time

    return jax.vmap(one)(paths, geo.client_position)


def paid_tick(state: MarketState, env: Environment, quoted: Array, rule: str, routing: str,
              n_stages: int) -> tuple[MarketState, Array]:
    """One tick in which requests see and pay the ``quoted`` prices (the live ones, or the
    ledger's confirmed registry) while peers update their own live prices by ``rule``. Also
    returns the paid hops, ``(clients, n_stages)`` peer ids with ``-1`` where a client sent no
    request (or its path has no hop there), for the ledger to settle."""
    if rule != "observed":
        new_price = price_update(rule, state.price, env.cost, env.stage, env.alive, env.params, n_stages,
                                 env.blocks, env.damping)
    if env.client_alpha.shape[0] == 0:  # no clients, no requests (decided when tracing; refused for "observed")
        return state._replace(price=new_price), jnp.zeros((0, n_stages), dtype=jnp.int32)
    key, request_key, noise_key = jax.random.split(state.key, 3)
    active = jax.random.bernoulli(request_key, env.request_rate, env.client_alpha.shape)
    choose = path_choices if routing == "path" else logit_choices
    chosen, probs = choose(noise_key, env, quoted, n_stages)
    dtype = state.price.dtype
    weight = jnp.broadcast_to(active[:, None], chosen.shape).astype(dtype)
    served = jnp.zeros_like(state.price).at[jnp.where(chosen >= 0, chosen, state.price.shape[0]).ravel()].add(
        weight.ravel(), mode="drop")
    expected = active.astype(dtype) @ probs
    routed, path_price, path_time = path_totals(chosen, env, quoted)
    if routing == "stage":  # a request that walked away in some stage bought no whole path
        routed = routed & jnp.all(chosen >= 0, axis=1)
    counted = (active & routed).astype(dtype)
    tick_revenue = quoted * served
    baseline = state.baseline
    if rule == "observed":
        new_price, baseline = observed_update(state, env, quoted, served)
    new_state = MarketState(
        price=new_price,
        key=key,
        revenue=state.revenue + tick_revenue,
        requests=state.requests + served,
        expected_requests=state.expected_requests + expected,
        tick_revenue=tick_revenue,
        tick_expected_revenue=quoted * expected,
        class_requests=state.class_requests + counted @ env.geometry.client_class,
        class_price=state.class_price + (counted * path_price) @ env.geometry.client_class,
        class_time=state.class_time + (counted * path_time) @ env.geometry.client_class,
        baseline=baseline,
    )
    return new_state, jnp.where(active[:, None], chosen, -1)


def exploration_direction(state: MarketState) -> Array:
    """The ``observed`` rule's random sign ``s_i = +-1`` of this tick (a key folded off the state's,
    so the other rules' random streams are untouched)."""
    return jnp.where(jax.random.bernoulli(jax.random.fold_in(state.key, 2), 0.5, state.price.shape), 1.0, -1.0)


def posted_prices(state: MarketState, env: Environment, rule: str) -> Array:
    """The prices requests see and pay: the peers' own, or for the ``observed`` rule each peer's
    price perturbed by ``+- delta`` (kept ``>= floor``), the experiment it learns from."""
    if rule != "observed":
        return state.price
    return jnp.maximum(state.price + env.exploration * exploration_direction(state), env.params.price_floor)


def observed_update(state: MarketState, env: Environment, quoted: Array, served: Array) -> tuple[Array, Array]:
    """Prices learned only from what a peer observes (no access to ``P_i``): its revenue (profit
    ``(q_i - kappa c_i) n_i`` in the marginal-cost variant) from the ``n_i`` requests it served at
    the perturbed price ``q_i = p_i + delta s_i``, normalised to demand ``D`` (divided by the
    requests sent per tick, ``clients x request_rate``), minus a running baseline ``b_i``, gives the one-point
    gradient estimate ``g_i = (r_i - b_i) s_i / delta`` (Flaxman, Kalai & McMahan 2005); its
    expectation is eq. 5's ``dR_i/dp_i`` up to ``O(delta^2)``. Then ``p_i <- max(floor, p_i + eta g_i)``
    as in eq. 5, and ``b_i <- b_i + beta (r_i - b_i)``. Returns the new prices and baselines."""
    sent = env.client_alpha.shape[0] * env.request_rate
    observed = env.params.demand * (quoted - unit_cost(env.cost, env.params)) * served / sent
    direction = exploration_direction(state)
    gradient = (observed - state.baseline) * direction / env.exploration
    price = jnp.where(env.alive, jnp.maximum(state.price + env.params.eta * gradient, env.params.price_floor),
                      state.price)
    baseline = jnp.where(env.alive, state.baseline + env.baseline_rate * (observed - state.baseline), state.baseline)
    return price, baseline


def tick(state: MarketState, env: Environment, rule: str, routing: str, n_stages: int) -> MarketState:
    """One tick: requests routed (``routing``) and paid at the posted prices, then the price update
    ``rule``."""
    return paid_tick(state, env, posted_prices(state, env, rule), rule, routing, n_stages)[0]


@partial(jax.jit, static_argnames=("rule", "routing", "n_stages"))
def run_ticks(state: MarketState, env: Environment, n_ticks: Array, rule: str, routing: str,
              n_stages: int) -> MarketState:
    """``n_ticks`` consecutive ticks in one compiled loop (the trip count is traced: no recompile)."""
    return jax.lax.fori_loop(0, n_ticks, lambda _, s: tick(s, env, rule, routing, n_stages), state)


#: one tick that also returns the paid hops (a step with the ledger on and the confirmed registry)
paid_tick_jit = jax.jit(paid_tick, static_argnames=("rule", "routing", "n_stages"))


@partial(jax.jit, static_argnames=("rule", "routing", "n_stages", "length"))
def run_paid_ticks(state: MarketState, env: Environment, n_ticks: Array, rule: str, routing: str, n_stages: int,
                   length: int) -> tuple[MarketState, Array, Array]:
    """``n_ticks <= length`` live-priced ticks in one compiled scan, for the ledger to settle one by
    one afterwards: the final state, each tick's paid hops ``(length, clients, n_stages)`` and the
    prices each tick started from ``(length, n)`` (rows past ``n_ticks`` are padding). ``length``
    is fixed per model, so the trip count does not recompile."""

    def one(state: MarketState, i: Array):
        def advance(state):
            new_state, paid = paid_tick(state, env, state.price, rule, routing, n_stages)
            return new_state, paid.astype(jnp.int32)

        def idle(state):
            return state, jnp.full((env.client_alpha.shape[0], n_stages), -1, dtype=jnp.int32)

        new_state, paid = jax.lax.cond(i < n_ticks, advance, idle, state)
        return new_state, (paid, state.price)

    final, (paid, before) = jax.lax.scan(one, state, jnp.arange(length))
    return final, paid, before
