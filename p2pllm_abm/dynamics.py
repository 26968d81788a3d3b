"""Consecutive market ticks fused into one jitted call (paper section 5.1, phases 1-2).

A tick is: (1) every client sends a request with probability ``request_rate`` and the request is
routed and pays each peer on its path its current price; (2) every peer updates its price by
``market.update_rule`` (the paper's eq. 5 by default; see :mod:`p2pllm_abm.equilibrium` for the
others). Requests are routed by ``clients.routing``:

- ``"stage"`` (the paper's market): in each stage a peer drawn from the Boltzmann probabilities
  of eq. 3 (by inverse CDF: the law of the logit choice, the smallest eq.-1 weight plus Gumbel
  noise of scale T, with one uniform per client and stage instead of a Gumbel variate per peer);
  latency plays no part in the choice.
- ``"path"``: the whole path with the smallest sum of the noisy weights ``w + T G`` plus
  ``(1 - alpha)`` times its latencies (client to first peer, hop by hop, last peer back to the
  client): Alg. 2 on perturbed weights, boundary by boundary. Without latency it makes the stage
  choice's law; it also routes spans.

Either way the realised path's total price and time (costs plus latencies) are summed per request
class (client alpha bin) for the metrics. Clients' choices and eq.-3 probabilities are computed on
peers laid out by stage block (``env.blocks``): per-stage maxima and sums are then dense reductions,
not scatters. Ticks between two events that need Python run inside a single ``lax.fori_loop``
(:func:`run_ticks`: a call into JAX costs about 70 us); :func:`run_steps` also compiles eq. 7-8
reallocation, so that a run without host phases makes one call per record.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend.random import threefry2x32_p

from .economics import MarketParams, choice_logits, outside_logit, unit_cost
from .allocation import reallocation_scan
from .equilibrium import StageBlocks, block_arrays, price_update, traced_stage_blocks
from .load import (OUTCOMES, SAMPLE_TICKS, expected_wait, first_failed_column, hop_waits, serve, splice_paths)
from .network import latency
from .welfare import record_measures
from .registries import MARKET_SCALE, Parameter, PriceRule, Routing, price_rules, routings


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
    backlog: Array  #: requests queued at each peer (p2pllm_abm.load; 0 without capacity)
    window_served: Array  #: requests each peer served since the model last recorded
    window_capacity: Array  #: the capacity each peer offered (live) since the model last recorded
    window_ticks: Array  #: ticks since the model last recorded
    outcomes: Array  #: cumulative requests per outcome (p2pllm_abm.load.OUTCOMES)
    request_samples: Array  #: (SAMPLE_TICKS, clients) request times in ms of the last ticks (NaN: none)
    hop_samples: Array  #: (SAMPLE_TICKS, clients, n_stages) time spent in each stage (NaN: none)
    sample_count: Array  #: ticks sampled since the model last recorded


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
    blocks: StageBlocks  #: live peers by (first) stage: requests, the sequential and Newton rules, path routing
    #: the price rule's parameters by name (:class:`~p2pllm_abm.registries.Parameter`; the fixed-point
    #: rule's damping, the observed rule's exploration and baseline rate): what a study varies, apart from
    #: the network's and clients' arrays
    options: dict
    geometry: Geometry
    capacity: Array | None = None  #: requests per step each peer serves (None: unlimited, no queues)
    step_ms: float = 0.0  #: a step's length in ms (queue waits)
    failing: Array | None = None  #: peers failing mid-request this tick (None: no failures)
    max_retries: float = float("inf")  #: failovers a request may make
    hop_overhead: float = 0.0  #: Petals routing's per-hop overhead in ms
    #: the distinct client alphas (None: every client its own); clients who share an alpha share
    #: eq. 3's probabilities, so those are computed once per alpha (:func:`expected_requests`)
    alpha_values: Array | None = None
    alpha_group: Array | None = None  #: (clients, distinct alphas) one-hot: each client's alpha


def device_scalars(tree: Any) -> Any:
    """``tree`` with its Python numbers as device scalars. A jitted call copies every Python number
    it is passed to the device, about 5 us each (an :class:`Environment` holds 17); a tree converted
    once is passed as it is. ``jnp.asarray`` keeps a Python number's weak type, so the call traces
    and compiles the same program. Scalars are made once per type and value (:func:`device_scalar`)."""
    return jax.tree.map(lambda leaf: device_scalar(type(leaf), leaf) if isinstance(leaf, (bool, int, float)) else leaf,
                        tree)


@lru_cache(maxsize=256)
def device_scalar(kind: type, value: bool | int | float) -> Array:
    """``value`` (of Python type ``kind``: ``True``, ``1`` and ``1.0`` are equal keys) as a weakly
    typed device scalar; making one costs about 30 us, and arrays are immutable, so they are shared."""
    return jnp.asarray(kind(value))


def initial_state(price: Array, key: Array, classes: int, clients: int = 0, n_stages: int = 1) -> MarketState:
    """A market at ``price`` with nothing served yet, and empty request-time samples for ``clients``
    clients over ``n_stages`` stages."""
    zeros, per_class = jnp.zeros_like(price), jnp.zeros(classes, dtype=price.dtype)
    return MarketState(price, key, zeros, zeros, zeros, zeros, zeros, per_class, per_class, per_class, zeros,
                       backlog=zeros, window_served=zeros, window_capacity=zeros, window_ticks=jnp.zeros((), jnp.int32),
                       outcomes=jnp.zeros(len(OUTCOMES), dtype=price.dtype),
                       request_samples=jnp.full((SAMPLE_TICKS, clients), jnp.nan, dtype=price.dtype),
                       hop_samples=jnp.full((SAMPLE_TICKS, clients, n_stages), jnp.nan, dtype=price.dtype),
                       sample_count=jnp.zeros((), jnp.int32))


def reset_window(state: MarketState) -> MarketState:
    """The state with the per-record windows (class sums, served counts, samples) emptied. The
    empty windows of a shape are made once and shared (arrays are immutable): a reset does no
    device work, where a compiled reset copied the whole state (80 us a record at 200 peers)."""
    clients, n_stages = state.hop_samples.shape[1:]
    return state._replace(**empty_windows(state.class_requests.shape[0], clients, n_stages, state.price.shape[0],
                                          state.price.dtype))


@lru_cache(maxsize=16)
def empty_windows(classes: int, clients: int, n_stages: int, rows: int, dtype: np.dtype) -> dict[str, Array]:
    """:func:`reset_window`'s fields, for ``classes`` request classes, ``clients`` clients, ``n_stages``
    stages and ``rows`` peer rows."""
    fresh = initial_state(jnp.zeros(rows, dtype), jax.random.key(0), classes, clients, n_stages)
    return {name: getattr(fresh, name) for name in WINDOW_FIELDS}


#: what a record empties: the class sums, served and offered counts, and samples since the last one
WINDOW_FIELDS = ("class_requests", "class_price", "class_time", "window_served", "window_capacity", "window_ticks",
                 "request_samples", "hop_samples", "sample_count")
#: the state's per-peer arrays (one entry per row of the PeerTable)
PEER_FIELDS = ("price", "revenue", "requests", "expected_requests", "tick_revenue", "tick_expected_revenue", "baseline",
               "backlog", "window_served", "window_capacity")


@partial(jax.jit, static_argnames=("fields",))
def reset_rows(state: MarketState, rows: Array, price: Array, fields: tuple[str, ...] = PEER_FIELDS) -> MarketState:
    """The state with the ``fields`` of the rows in mask ``rows`` zeroed (``price`` set to ``price``):
    peers that just joined, or (``fields=("backlog",)``) whose queue was lost. A mask, not indices,
    so that the call compiles once per table size."""
    fresh = {name: jnp.where(rows, 0.0, getattr(state, name)) for name in fields}
    if "price" in fields:
        fresh["price"] = jnp.where(rows, price, state.price)
    return state._replace(**fresh)


def finite(state: MarketState) -> Array:
    """Whether every price and revenue of ``state`` is finite."""
    return jnp.isfinite(state.price).all() & jnp.isfinite(state.revenue).all()


#: :func:`finite` as a scalar on the device, so that asking does not wait for the ticks that compute ``state``
finite_jit = jax.jit(finite)
all_finite = finite_jit  #: the earlier name of finite_jit


def grow_state(state: MarketState, rows: int) -> MarketState:
    """The state with ``rows`` more (free) rows in every per-peer array."""
    return state._replace(**{name: jnp.concatenate([getattr(state, name), jnp.zeros(rows, state.price.dtype)])
                             for name in PEER_FIELDS})


def client_logits(env: Environment, price: Array) -> Array:
    """Every client's logits ``-w_ci / T`` over every peer, ``(clients, n)`` (``-inf`` for dead peers)."""
    return jax.vmap(lambda alpha: choice_logits(price, env.cost, env.alive, alpha, env.params.temperature))(
        env.client_alpha)


def block_logits(env: Environment, price: Array, alpha: Array | None = None) -> Array:
    """The logits of clients with ``alpha`` (default: every client's) laid out by stage block
    (``env.blocks``), ``(clients, n_stages, width)``, ``-inf`` in the padding. Per-stage reductions
    then run densely over the last axis: on XLA's CPU backend a segment reduction over peers is a
    scatter, and gathering ``(clients, n)`` values into blocks costs about as much; gathering the
    ``n`` prices and costs once does not."""
    valid, q, c = block_arrays(price, env.cost, env.blocks)
    alpha = env.client_alpha if alpha is None else alpha
    return jax.vmap(lambda a: choice_logits(q, c, valid, a, env.params.temperature))(alpha)


def block_probabilities(logits: Array, params: MarketParams) -> Array:
    """Eq. 3 from logits laid out by stage block (:func:`block_logits`): each peer's probability
    within its stage, the outside option (when there is one) in the denominator; 0 in the padding.
    One exponential per peer: ``e_i = exp(logit_i - max)``, ``P_i = e_i / (sum e + exp(outside - max))``."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    mass = jnp.exp(logits - top)
    total = jnp.sum(mass, axis=-1, keepdims=True) + jnp.exp(outside_logit(params) - top)
    return jnp.where(jnp.isfinite(logits), mass / total, 0.0)


def from_blocks(values: Array, blocks: StageBlocks, n: int) -> Array:
    """Values laid out by stage block ``(..., n_stages, width)`` as per-peer values ``(..., n)``, 0 for
    peers in no block (dead)."""
    target = jnp.where(blocks.index >= 0, blocks.index, n).ravel()
    flat = values.reshape(*values.shape[:-2], -1)
    return jnp.zeros((*values.shape[:-2], n), values.dtype).at[..., target].add(flat, mode="drop")


def alpha_probabilities(env: Environment, price: Array) -> tuple[Array, Array]:
    """Eq. 3 by stage block once per distinct client alpha (``env.alpha_values``; every client's own
    without them), ``(rows, n_stages, width)``, and each client's row ``(clients,)``."""
    if env.alpha_values is not None:
        alpha, row = env.alpha_values, jnp.argmax(env.alpha_group, axis=1)
    else:
        alpha, row = env.client_alpha, jnp.arange(env.client_alpha.shape[0])
    return block_probabilities(block_logits(env, price, alpha), env.params), row


def expected_requests(active: Array, env: Environment, price: Array) -> Array:
    """Each peer's expected requests this tick, ``sum_c active_c P_ci`` (eq. 3 at ``price``): the
    probabilities once per distinct client alpha (:func:`alpha_probabilities`), weighted by how many
    clients with that alpha sent a request."""
    active = active.astype(price.dtype)
    probs, _ = alpha_probabilities(env, price)
    weights = active @ env.alpha_group if env.alpha_values is not None else active
    return from_blocks(jnp.tensordot(weights, probs, axes=1), env.blocks, price.shape[0])


def slots_at_most(cumulative: Array, row: Array, target: Array) -> Array:
    """How many slots of each stage's nondecreasing ``cumulative`` ``(rows, n_stages, width)`` are
    ``<= target`` ``(clients, n_stages)``, client ``c`` reading row ``row[c]``: the slots cut into
    blocks of about ``sqrt(width)``, the blocks passed whole counted from their last slots, then the
    slots passed in the block after them, each count one dense comparison. (A binary search is a
    chain of dependent gathers, and XLA recomputed the chain so far in each one's fusion: a tick at
    200 peers took 25 us, now 20.)"""
    rows, n_stages, width = cumulative.shape
    size = math.isqrt(width - 1) + 1  # ceil(sqrt(width))
    n_blocks = -(-width // size)
    floating = jnp.issubdtype(cumulative.dtype, jnp.floating)
    never = jnp.inf if floating else jnp.iinfo(cumulative.dtype).max  # pads the last block: never <= a target
    blocks = jnp.pad(cumulative, ((0, 0), (0, 0), (0, n_blocks * size - width)), constant_values=never)
    blocks = blocks.reshape(rows, n_stages, n_blocks, size)
    whole = jnp.sum(blocks[row, :, :, -1] <= target[..., None], axis=-1, dtype=jnp.int32)
    stage = jnp.arange(n_stages)[None, :]
    partial = blocks[row[:, None], stage, jnp.minimum(whole, n_blocks - 1)]
    return whole * size + jnp.sum(partial <= target[..., None], axis=-1, dtype=jnp.int32) * (whole < n_blocks)


#: the inverse-CDF draw's unit of probability: 2^-62, so that a stage's probabilities (summing to
#: at most 1) sum exactly in int64 and a float64 uniform (52 random bits) converts exactly
PROBABILITY_UNIT = 2.0 ** -62


def sample_blocks(probs: Array, row: Array, uniform: Array, blocks: StageBlocks, walk_away: Array | bool) -> Array:
    """Per client and stage a peer drawn by inverse CDF: the first slot of its stage block whose
    cumulative probability exceeds the client's ``uniform`` ``(clients, n_stages)``. ``probs`` are
    by stage block, one row per distinct alpha, client ``c`` reading ``row[c]``. With ``walk_away``
    the mass they leave is the outside option's (``-1``: the stage is not bought); without it they
    are drawn from as normalised within each stage (``-1`` where they are all 0).

    The cumulative probabilities are summed as integers (:data:`PROBABILITY_UNIT`): exact, so
    nondecreasing by construction. A float64 ``cumsum`` is summed block by block on XLA's CPU
    backend and can dip by an ulp at a block's edge; its running maximum cost a tenth of a step at
    10^4 peers."""
    units = (probs / PROBABILITY_UNIT).astype(jnp.int64)
    cumulative = jnp.cumsum(units, axis=-1)
    total = cumulative[..., -1][row]  # (clients, n_stages)
    drawn = (uniform / PROBABILITY_UNIT).astype(jnp.int64)
    target = jnp.where(walk_away, drawn, (uniform * total.astype(uniform.dtype)).astype(jnp.int64))
    passed = slots_at_most(cumulative, row, target)
    last = jnp.maximum(jnp.sum(blocks.index >= 0, axis=-1) - 1, 0)  # rounding never picks the padding
    chosen = blocks.index[jnp.arange(blocks.index.shape[0]), jnp.minimum(passed, last)]
    return jnp.where((walk_away & (drawn >= total)) | (total <= 0), -1, chosen)


def slot_gumbel(key: Array, shape: tuple[int, int, int], dtype) -> Array:
    """Standard Gumbel noise ``(clients, n_stages, width)`` by stage block slot, counter-based: the
    value at ``(c, s, slot)`` is a Threefry-2x32 hash of ``key`` and the counter ``(c n_stages + s,
    slot // 2)`` (one hash gives slots ``2j`` and ``2j + 1``), so it does not depend on the blocks'
    padded width: a run's noise is the same whatever widths its history left (they only grow).
    Drawn in float32 (3x cheaper than float64; only ties closer than ~1e-7 differ) as
    ``-log(-log u)``, ``u`` from the hash's top 23 bits."""
    clients, n_stages, width = shape
    rows, pairs = clients * n_stages, (width + 1) // 2
    words = jax.random.key_data(key)
    counter = (jnp.broadcast_to(jnp.arange(rows, dtype=jnp.uint32)[:, None], (rows, pairs)),
               jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.uint32), (rows, pairs)))
    even, odd = threefry2x32_p.bind(words[0], words[1], *counter)
    bits = jnp.stack([even, odd], axis=-1).reshape(rows, 2 * pairs)[:, :width].reshape(shape)
    uniform = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
    uniform = jnp.maximum(uniform, jnp.finfo(jnp.float32).tiny)
    return (-jnp.log(-jnp.log(uniform))).astype(dtype)


def peer_noise(key: Array, env: Environment, dtype) -> Array:
    """Each client's Gumbel noise per peer ``(clients, n)`` for path routing, drawn per stage block
    slot (:func:`slot_gumbel`); 0 for dead peers."""
    clients = env.client_alpha.shape[0]
    return from_blocks(slot_gumbel(key, (clients, *env.blocks.index.shape), dtype), env.blocks, env.cost.shape[0])


def stage_choices(key: Array, env: Environment, price: Array, n_stages: int) -> Array:
    """Each client's chosen peer per stage, shape ``(clients, n_stages)``: a draw from eq. 3's
    probabilities by inverse CDF (:func:`sample_blocks`, one uniform per client and stage), the law
    of the logit choice ``argmin_i w_ci + T G_i`` without a Gumbel variate per peer (those cost most
    of a tick). With an outside option a stage is left unbought (``-1``) with probability ``P_0``."""
    probs, row = alpha_probabilities(env, price)
    uniform = jax.random.uniform(key, (env.client_alpha.shape[0], n_stages), dtype=price.dtype)
    return sample_blocks(probs, row, uniform, env.blocks, jnp.isfinite(outside_logit(env.params)))


def failover_choices(key: Array, env: Environment, price: Array, n_stages: int) -> Array:
    """Each client's replacement per stage for a peer that failed: a draw from eq. 3's probabilities
    among the stage's peers that are not failing (the logit choice's law once those are removed),
    without walking away (the client already bought in the stage); ``-1`` where every peer fails."""
    probs, row = alpha_probabilities(env, price)
    probs = jnp.where(env.failing[jnp.maximum(env.blocks.index, 0)], 0.0, probs)
    uniform = jax.random.uniform(key, (env.client_alpha.shape[0], n_stages), dtype=price.dtype)
    return sample_blocks(probs, row, uniform, env.blocks, False)


def path_scores(key: Array, env: Environment, price: Array) -> tuple[Array, Array]:
    """The ``path`` routing's node scores ``w_v - T G_v`` per client ``(clients, n)`` (inf for dead
    peers) and its latency weights ``1 - alpha`` per client."""
    score = -env.params.temperature * (client_logits(env, price) + peer_noise(key, env, price.dtype))
    return score, 1.0 - env.client_alpha


def petals_scores(env: Environment, price: Array) -> tuple[Array, Array]:
    """Petals' ``min_latency`` routing as node scores: compute time plus the
    per-hop overhead (inf for dead peers), latency weight 1, no price and no noise, the same for
    every client."""
    clients = env.client_alpha.shape[0]
    score = jnp.where(env.alive, env.cost + env.hop_overhead, jnp.inf)
    return jnp.broadcast_to(score, (clients, score.shape[0])), jnp.ones(clients, dtype=price.dtype)


def best_paths(env: Environment, score: Array, weight: Array, n_stages: int,
               origin: Array | None = None) -> Array:
    """Each client's path, shape ``(clients, n_stages)``, peers in order and right-aligned (``-1``
    pads a path of spans shorter than ``n_stages``; a row of ``-1`` when no path exists): the path
    minimising ``sum score_v + weight * sum latencies`` (client endpoints included) by Alg. 2 over
    the boundaries. ``origin`` (per client; default the client itself, node ``n``) starts the path
    after that peer instead: the rest of a path whose prefix ends at ``origin`` (failover)."""
    n = score.shape[1]
    geo = env.geometry
    low, high = geo.latency_range
    source_row = jnp.full(geo.ends.shape[1], -1).at[0].set(n)  # the client, as node n
    origin = jnp.full(score.shape[0], n) if origin is None else origin

    def one_client(score: Array, weight: Array, home: Array, start: Array) -> Array:
        position = jnp.concatenate([geo.position, home[None, :]])

        def relax(boundary, carry):
            dist, previous = carry
            heads = env.blocks.index[boundary]
            tails = jnp.where(boundary == 0, source_row, geo.ends[boundary])
            h, t = jnp.maximum(heads, 0), jnp.where(tails >= 0, tails, n)
            hop = weight * latency(position[t][None, :, :], position[h][:, None, :], (low, high))
            candidates = jnp.where(tails[None, :] >= 0, dist[t][None, :] + hop, jnp.inf)
            best = jnp.argmin(candidates, axis=1)
            arrival = jnp.take_along_axis(candidates, best[:, None], axis=1)[:, 0] + score[h]
            target = jnp.where(heads >= 0, heads, n + 1)
            return dist.at[target].min(arrival, mode="drop"), previous.at[target].set(t[best], mode="drop")

        dist = jnp.full(n + 1, jnp.inf).at[start].set(0.0)
        dist, previous = jax.lax.fori_loop(0, n_stages, relax, (dist, jnp.full(n, n)))
        last = geo.ends[n_stages]
        ended = jnp.maximum(last, 0)
        totals = jnp.where(last >= 0, dist[ended] + weight * latency(position[ended], home, (low, high)), jnp.inf)
        node = jnp.where(jnp.isfinite(jnp.min(totals)), ended[jnp.argmin(totals)], n)

        def trace(k, carry):
            node, path = carry
            on_path = (node < n) & (node != start)
            path = path.at[n_stages - 1 - k].set(jnp.where(on_path, node, -1))
            return jnp.where(on_path, previous[jnp.minimum(node, n - 1)], n), path

        return jax.lax.fori_loop(0, n_stages, trace, (node, jnp.full(n_stages, -1)))[1]

    return jax.vmap(one_client)(score, weight, geo.client_position, origin)


def path_choices(key: Array, env: Environment, price: Array, n_stages: int) -> Array:
    """Each client's path, shape ``(clients, n_stages)`` (:func:`best_paths`): the path minimising
    ``sum (w_v - T G_v) + (1 - alpha) sum latencies``."""
    score, weight = path_scores(key, env, price)
    return best_paths(env, score, weight, n_stages)


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


class Routed(NamedTuple):
    """One tick's requests after routing and failover (every array per client, or per client and hop)."""

    hops: Array  #: (clients, n_stages) the peers that served each request (-1: none)
    complete: Array  #: the request bought a whole path
    no_path: Array  #: no live path existed
    walked: Array  #: a stage's outside option won (per-stage routing)
    failed: Array  #: (clients, n_stages) the peers it reached that failed (-1: none)
    retries: Array  #: failovers it made


def route_requests(key: Array, env: Environment, price: Array, routing: str, n_stages: int) -> Routed:
    """Phase 1's choice (``clients.routing``, a :class:`~p2pllm_abm.registries.Routing`) and, with
    failures, the failover (:mod:`p2pllm_abm.load`)."""
    n = price.shape[0]
    rule = routings.get(routing)
    if rule.per_stage:
        chosen = rule.choose(key, env, price, n_stages)
        no_path = jnp.broadcast_to(~jnp.all(env.blocks.index[:, 0] >= 0), chosen.shape[:1])
        walked = jnp.any(chosen < 0, axis=1)
    else:
        score, weight = rule.scores(key, env, price)
        chosen = best_paths(env, score, weight, n_stages)
        no_path = jnp.all(chosen < 0, axis=1)
        walked = jnp.zeros_like(no_path)
    if env.failing is None:
        complete = jnp.all(chosen >= 0, axis=1) if rule.per_stage else ~no_path
        none = jnp.full_like(chosen, -1)
        return Routed(chosen, complete, no_path, walked, none, jnp.zeros(chosen.shape[0], jnp.int32))
    if rule.per_stage:
        hit = (chosen >= 0) & env.failing[jnp.maximum(chosen, 0)]
        hops = jnp.where(hit, rule.failover(jax.random.fold_in(key, 1), env, price, n_stages), chosen)
        retries = jnp.sum(hit, axis=1)
        complete = jnp.all(hops >= 0, axis=1)
    else:
        any_hit, first = first_failed_column(chosen, env.failing)
        before = jnp.take_along_axis(chosen, jnp.maximum(first - 1, 0)[:, None], axis=1)[:, 0]
        origin = jnp.where((first > 0) & (before >= 0), before, n)
        suffix = best_paths(env, jnp.where(env.failing[None, :], jnp.inf, score), weight, n_stages, origin)
        hops = jnp.where(any_hit[:, None], splice_paths(chosen, first, suffix), chosen)
        hit = any_hit[:, None] & (jnp.arange(n_stages)[None, :] == first[:, None])
        retries = any_hit.astype(jnp.int32)
        complete = jnp.any(hops >= 0, axis=1)
    return Routed(hops, complete, no_path, walked, jnp.where(hit, chosen, -1), retries)


def stage_sums(hops: Array, values: Array, stage: Array, n_stages: int) -> tuple[Array, Array]:
    """``values`` of hops ``(clients, width)`` summed per client and stage ``(clients, n_stages)`` (a
    hop counts in its peer's first stage), and whether the client has a hop there."""
    on = hops >= 0
    where = jnp.where(on, stage[jnp.maximum(hops, 0)], n_stages)
    rows = jnp.broadcast_to(jnp.arange(hops.shape[0])[:, None], hops.shape)
    total = jnp.zeros((hops.shape[0], n_stages + 1), values.dtype).at[rows, where].add(jnp.where(on, values, 0.0))
    count = jnp.zeros((hops.shape[0], n_stages + 1), jnp.int32).at[rows, where].add(on.astype(jnp.int32))
    return total[:, :n_stages], count[:, :n_stages] > 0


def paid_tick(state: MarketState, env: Environment, quoted: Array, rule: str, routing: str,
              n_stages: int, load_aware: bool = False) -> tuple[MarketState, Array, Array]:
    """One tick in which requests see and pay the ``quoted`` prices (the live ones, or the
    ledger's confirmed registry) while peers update their own live prices by ``rule``. Also
    returns the paid hops, ``(clients, n_stages)`` peer ids with ``-1`` where a client sent no
    request (or its path has no hop there), for the ledger to settle, and the failed hops (the
    failing peers requests reached, ``-1`` elsewhere), whose SLAs the ledger penalises.

    With capacity (``env.capacity``) requests queue and wait (``load_aware``: clients add the
    expected wait to a peer's cost when they choose); with ``env.failing`` hops at failing peers fail
    over; every request sent is counted under one of :data:`~p2pllm_abm.load.OUTCOMES`."""
    price_rule = price_rules.get(rule)
    if price_rule.update is not None:
        new_price = price_update(rule, state.price, env.cost, env.stage, env.alive, env.params, n_stages,
                                 env.blocks, env.options)
    if env.client_alpha.shape[0] == 0:  # no clients, no requests (decided when tracing; refused for "observed")
        none = jnp.zeros((0, n_stages), dtype=jnp.int32)
        return state._replace(price=new_price), none, none
    key, request_key, noise_key = jax.random.split(state.key, 3)
    active = jax.random.bernoulli(request_key, env.request_rate, env.client_alpha.shape)
    seen = env
    if env.capacity is not None and load_aware:
        seen = env._replace(cost=env.cost + expected_wait(state.backlog, env.capacity, env.step_ms))
    routed = route_requests(noise_key, seen, quoted, routing, n_stages)
    no_path = active & routed.no_path
    walked = active & ~routed.no_path & routed.walked
    lost = active & ~no_path & ~walked & ~routed.complete  # a failed hop found no live replacement
    over = active & ~no_path & ~walked & ~lost & (routed.retries > env.max_retries)
    keep = active & ~lost & ~over
    counted = keep & routed.complete & ~walked & ~no_path
    paid = jnp.where(keep[:, None], routed.hops, -1)
    failed = jnp.where(keep[:, None], routed.failed, -1)
    dtype = state.price.dtype
    served = jnp.zeros_like(state.price).at[jnp.where(paid >= 0, paid, state.price.shape[0]).ravel()].add(
        1.0, mode="drop")
    expected = expected_requests(active, seen, quoted)
    _, path_price, path_time = path_totals(routed.hops, env, quoted)
    request_time = path_time
    hop_time = jnp.where(paid >= 0, env.cost[jnp.maximum(paid, 0)], 0.0)
    backlog, window_served, window_capacity = state.backlog, state.window_served + served, state.window_capacity
    if env.capacity is not None:
        queue_key = jax.random.fold_in(request_key, 1)
        wait = hop_waits(paid, queue_key, state.backlog, env.capacity, env.step_ms)
        request_time, hop_time = request_time + jnp.sum(wait, axis=1), hop_time + wait
        done, backlog = serve(state.backlog, served, env.capacity, env.failing)
        window_served = state.window_served + done
        window_capacity = state.window_capacity + jnp.where(env.alive, env.capacity, 0.0)
    if routings.get(routing).per_stage:  # column s is stage s
        stage_time, reached = hop_time, paid >= 0
    else:
        stage_time, reached = stage_sums(paid, hop_time, env.stage, n_stages)
    if env.failing is not None:  # the time lost at failed peers, in their stages
        lost_time = jnp.where(failed >= 0, env.cost[jnp.maximum(failed, 0)], 0.0)
        if env.capacity is not None:
            lost_time = lost_time + hop_waits(failed, jax.random.fold_in(queue_key, 1), state.backlog, env.capacity,
                                              env.step_ms)
        request_time = request_time + jnp.sum(lost_time, axis=1)
        stage_lost, reached_failed = stage_sums(failed, lost_time, env.stage, n_stages)
        stage_time, reached = stage_time + stage_lost, reached | reached_failed
    row = state.sample_count % SAMPLE_TICKS
    outcomes = jnp.stack([counted & (routed.retries == 0), counted & (routed.retries > 0), walked, no_path,
                          lost, over]).astype(dtype).sum(axis=1)
    tick_revenue = quoted * served
    baseline = state.baseline
    if price_rule.learn is not None:
        new_price, baseline = price_rule.learn(state, env, quoted, served, env.options)
    counted = counted.astype(dtype)
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
        class_time=state.class_time + (counted * request_time) @ env.geometry.client_class,
        baseline=baseline,
        backlog=backlog,
        window_served=window_served,
        window_capacity=window_capacity,
        window_ticks=state.window_ticks + 1,
        outcomes=state.outcomes + outcomes,
        request_samples=state.request_samples.at[row].set(jnp.where(counted > 0, request_time, jnp.nan)),
        hop_samples=state.hop_samples.at[row].set(jnp.where(reached, stage_time, jnp.nan)),
        sample_count=state.sample_count + 1,
    )
    return new_state, paid, failed


def exploration_direction(state: MarketState) -> Array:
    """The ``observed`` rule's random sign ``s_i = +-1`` of this tick (a key folded off the state's,
    so the other rules' random streams are untouched)."""
    return jnp.where(jax.random.bernoulli(jax.random.fold_in(state.key, 2), 0.5, state.price.shape), 1.0, -1.0)


def posted_prices(state: MarketState, env: Environment, rule: str) -> Array:
    """The prices requests see and pay: the peers' own, or the price rule's ``quote``."""
    quote = price_rules.get(rule).quote
    return state.price if quote is None else quote(state, env, env.options)


def perturbed_prices(state: MarketState, env: Environment, options: dict) -> Array:
    """The ``observed`` rule's quote: each peer's price perturbed by ``+- delta`` (kept ``>= floor``),
    the experiment it learns from."""
    return jnp.maximum(state.price + options["exploration"] * exploration_direction(state), env.params.price_floor)


def observed_update(state: MarketState, env: Environment, quoted: Array, served: Array,
                    options: dict) -> tuple[Array, Array]:
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
    gradient = (observed - state.baseline) * direction / options["exploration"]
    price = jnp.where(env.alive, jnp.maximum(state.price + env.params.eta * gradient, env.params.price_floor),
                      state.price)
    baseline = jnp.where(env.alive, state.baseline + options["baseline_rate"] * (observed - state.baseline),
                         state.baseline)
    return price, baseline


def tick(state: MarketState, env: Environment, rule: str, routing: str, n_stages: int,
         load_aware: bool = False) -> MarketState:
    """One tick: requests routed (``routing``) and paid at the posted prices, then the price update
    ``rule``."""
    return paid_tick(state, env, posted_prices(state, env, rule), rule, routing, n_stages, load_aware)[0]


TICK_OPTIONS = ("rule", "routing", "n_stages", "load_aware")  #: the ticks' static arguments


@partial(jax.jit, static_argnames=TICK_OPTIONS)
def run_ticks(state: MarketState, env: Environment, n_ticks: Array, rule: str, routing: str,
              n_stages: int, load_aware: bool = False) -> MarketState:
    """``n_ticks`` consecutive ticks in one compiled loop (the trip count is traced: no recompile)."""
    return jax.lax.fori_loop(0, n_ticks, lambda _, s: tick(s, env, rule, routing, n_stages, load_aware), state)


#: one tick that also returns the paid and failed hops (a step with the ledger on and the confirmed
#: registry, or with failures)
paid_tick_jit = jax.jit(paid_tick, static_argnames=TICK_OPTIONS)


@partial(jax.jit, static_argnames=(*TICK_OPTIONS, "length"))
def run_paid_ticks(state: MarketState, env: Environment, n_ticks: Array, rule: str, routing: str, n_stages: int,
                   length: int, load_aware: bool = False) -> tuple[MarketState, Array, Array]:
    """``n_ticks <= length`` live-priced ticks in one compiled scan, for the ledger to settle one by
    one afterwards: the final state, each tick's paid hops ``(length, clients, n_stages)`` and the
    prices each tick started from ``(length, n)`` (rows past ``n_ticks`` are padding). ``length``
    is fixed per model, so the trip count does not recompile."""

    def one(state: MarketState, i: Array):
        def advance(state):
            new_state, paid, _ = paid_tick(state, env, state.price, rule, routing, n_stages, load_aware)
            return new_state, paid.astype(jnp.int32)

        def idle(state):
            return state, jnp.full((env.client_alpha.shape[0], n_stages), -1, dtype=jnp.int32)

        new_state, paid = jax.lax.cond(i < n_ticks, advance, idle, state)
        return new_state, (paid, state.price)

    final, (paid, before) = jax.lax.scan(one, state, jnp.arange(length))
    return final, paid, before


class Reallocation(NamedTuple):
    """The reallocation events of a :func:`run_steps` call: eq. 7-8 (:func:`~p2pllm_abm.allocation.reallocation_scan`)
    after every step that is a multiple of ``period``, event ``e`` letting ``candidates[e]`` move in turn."""

    weight: Array  #: (n,) each peer's share weight
    candidates: Array  #: (events, K) each event's candidates in order, -1 pads
    hysteresis: float
    period: int


class Placement(NamedTuple):
    """What reallocation changes inside :func:`run_steps`: the stages, their blocks, the next event,
    each event's turns so far, and whether every stage still fits in the blocks' width."""

    stage: Array
    index: Array
    event: Array
    after: Array
    fits: Array


def placed_environment(env: Environment, placed: Placement) -> Environment:
    """``env`` with the stages and stage blocks of ``placed``."""
    return env._replace(stage=placed.stage, blocks=StageBlocks(placed.index))


def reallocation_event(placed: Placement, env: Environment, reallocation: Reallocation, n_stages: int) -> Placement:
    """Eq. 7-8 for the next event's candidates (:func:`~p2pllm_abm.allocation.reallocation_scan`),
    the stage blocks rebuilt at their width, and the candidates' stages after their turns recorded."""
    stage, turns = reallocation_scan(reallocation.weight, placed.stage, env.alive,
                                     reallocation.candidates[placed.event], reallocation.hysteresis, n_stages)
    blocks, fits = traced_stage_blocks(stage, env.alive, n_stages, placed.index.shape[-1])
    return Placement(stage, blocks.index, placed.event + 1, placed.after.at[placed.event].set(turns), fits)


def first_placement(env: Environment, reallocation: Reallocation | None) -> Placement:
    """The placement a :func:`run_steps` call starts from: ``env``'s, no event yet, everything fitting."""
    after = (jnp.zeros((0, 0), jnp.int64) if reallocation is None
             else jnp.full(reallocation.candidates.shape, -1, jnp.int64))
    return Placement(env.stage, env.blocks.index, jnp.zeros((), jnp.int32), after, jnp.ones((), bool))


class StepsDone(NamedTuple):
    """What a :func:`run_steps` call returns."""

    state: MarketState  #: the final state
    done: Array  #: the steps done
    after: Array  #: each event's candidates' stages after their turn ``(events, K)`` (the host applies the moves)
    stage: Array  #: every peer's stage at the end
    blocks: StageBlocks  #: the stage blocks at the end (the next call's, when this one did all its steps)
    #: with ``measure``: the record measures at the final prices (:func:`~p2pllm_abm.welfare.record_measures`)
    measures: tuple | None
    finite: Array  #: whether the final prices and revenues are finite (:func:`finite_jit`)


@partial(jax.jit, static_argnames=(*TICK_OPTIONS, "measure", "with_welfare"))
def run_steps(state: MarketState, env: Environment, n_steps: Array, first_step: Array,
              reallocation: Reallocation | None, rule: str, routing: str, n_stages: int,
              load_aware: bool = False, measure: bool = False, with_welfare: bool = False) -> StepsDone:
    """Steps ``first_step + 1`` to ``first_step + n_steps`` in one compiled loop: each step's tick
    (phases 1-2) and, when due, reallocation (phase 3) with the stage blocks rebuilt in place. It
    stops early after a reallocation that makes a stage outgrow the blocks' width (the shapes are
    fixed inside the loop). With ``measure`` it also measures the final state for a record (the
    certificate and, ``with_welfare``, the welfare), in the same call."""

    def move(placed: Placement) -> Placement:
        return reallocation_event(placed, env, reallocation, n_stages)

    def one_step(carry):
        done, state, placed = carry
        state = tick(state, placed_environment(env, placed), rule, routing, n_stages, load_aware)
        done = done + 1
        if reallocation is not None:
            placed = jax.lax.cond((first_step + done) % reallocation.period == 0, move, lambda placed: placed, placed)
        return done, state, placed

    def going(carry):
        done, _, placed = carry
        return (done < n_steps) & placed.fits

    carry = (jnp.zeros((), jnp.int32), state, first_placement(env, reallocation))
    done, state, placed = jax.lax.while_loop(going, one_step, carry)
    measures = (record_measures(state.price, env.cost, placed.stage, env.alive, env.params, n_stages, with_welfare)
                if measure else None)
    return StepsDone(state, done, placed.after, placed.stage, StageBlocks(placed.index), measures, finite(state))


#: the sample buffers, of which a tick writes one row (:func:`paid_tick`)
SAMPLE_FIELDS = ("request_samples", "hop_samples")


def kept_state(active: Array, new: MarketState, old: MarketState) -> MarketState:
    """``new`` where ``active``, else ``old`` (a member of an ensemble that is done). The sample
    buffers only differ in the row the tick wrote, so only that row is chosen."""
    row = old.sample_count % SAMPLE_TICKS
    target = jnp.where(active, row, SAMPLE_TICKS)  # out of range: dropped
    kept = {name: jnp.where(active, getattr(new, name), getattr(old, name))
            for name in MarketState._fields if name not in SAMPLE_FIELDS}
    return MarketState(**kept, **{name: getattr(old, name).at[target].set(getattr(new, name)[row], mode="drop")
                                  for name in SAMPLE_FIELDS})


@partial(jax.jit, static_argnames=TICK_OPTIONS)
def run_ensemble_steps(state: MarketState, env: Environment, n_steps: Array, first_step: Array,
                       reallocation: Reallocation | None, rule: str, routing: str, n_stages: int,
                       load_aware: bool = False) -> tuple[MarketState, Array, Array]:
    """:func:`run_steps` for every member of an ensemble (:mod:`p2pllm_abm.ensemble`) in one compiled
    call: every argument has a leading member axis (each member's own state, environment, step
    count, first step and reallocation events). One loop steps every member (a vmapped tick) until
    all are done; a member that is done (or outgrew the blocks' width) keeps its state. Not a
    vmapped :func:`run_steps`: its loop would choose between every member's new and old carried
    arrays each step (the sample buffers whole) and run the reallocation scan every step (a branch
    taken by some members runs for all); here a reallocation event runs when a member is due."""

    def ticked(state: MarketState, env: Environment, placed: Placement) -> MarketState:
        return tick(state, placed_environment(env, placed), rule, routing, n_stages, load_aware)

    def moved(due: Array, placed: Placement, env: Environment, reallocation: Reallocation) -> Placement:
        event = reallocation_event(placed, env, reallocation, n_stages)
        return jax.tree.map(lambda new, old: jnp.where(due, new, old), event, placed)

    def one_step(carry):
        done, state, placed = carry
        active = (done < n_steps) & placed.fits
        state = jax.vmap(kept_state)(active, jax.vmap(ticked)(state, env, placed), state)
        done = done + active
        if reallocation is not None:
            due = active & ((first_step + done) % reallocation.period == 0)
            placed = jax.lax.cond(jnp.any(due), lambda placed: jax.vmap(moved)(due, placed, env, reallocation),
                                  lambda placed: placed, placed)
        return done, state, placed

    def going(carry):
        done, _, placed = carry
        return jnp.any((done < n_steps) & placed.fits)

    carry = (jnp.zeros_like(n_steps, dtype=jnp.int32), state, jax.vmap(first_placement)(env, reallocation))
    done, state, placed = jax.lax.while_loop(going, one_step, carry)
    return state, done, placed.after


# -- the built-in price rule that learns, and the routings (registered as a plug-in registers its own) --

price_rules.register("observed", PriceRule(
    quote=perturbed_prices, learn=observed_update, zero_alpha=True, needs_requests=True, solver=False,
    parameters=(Parameter("exploration", 0.1, 0.0, MARKET_SCALE, low_open=True, field="market.exploration",
                          doc="delta, the price perturbation (price units)"),
                Parameter("baseline_rate", 0.05, 0.0, 1.0, low_open=True, field="market.baseline_rate",
                          doc="beta, the baseline's update rate")),
    doc="eq. 5 learned from realised revenue: one-point gradient estimates of +-delta perturbed prices"))
routings.register("stage", Routing(
    per_stage=True, choose=stage_choices, failover=failover_choices, outside_option=True,
    doc="the paper's market: per stage, a draw from eq. 3's probabilities (latency ignored)"))
routings.register("path", Routing(
    per_stage=False, scores=path_scores, spans=True,
    doc="the whole path of smallest noisy eq.-1 weight plus (1 - alpha) x latencies"))
routings.register("petals", Routing(
    per_stage=False, scores=lambda key, env, price: petals_scores(env, price), spans=True,
    doc="Petals' min-latency routing: compute time + latencies + a per-hop overhead, no price"))
