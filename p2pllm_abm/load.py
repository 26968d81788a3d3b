"""Capacity, queues, failures and failover inside a market tick (pure functions over arrays).

**Capacity and queues.** With ``network.step_ms`` set a step lasts ``step_ms`` milliseconds and peer
``i`` serves at most ``mu_i = step_ms / c_i`` requests per step (its compute time per request is
``c_i``), or ``network.capacity`` set directly. Each peer holds a fluid backlog ``b_i`` (requests
accepted but not yet served). A tick's ``a_i`` arrivals at peer ``i`` queue behind the backlog in a
random order: the ``k``-th of them (``k = 0, 1, ...``) waits

    wait = (b_i + k) / mu_i * step_ms  ms                       (FIFO, deterministic service)

before its ``c_i`` ms of compute. After the tick the peer has served ``min(b_i + a_i, mu_i)`` and
keeps ``b_i' = max(0, b_i + a_i - mu_i)``. A request's fate (its time, who it paid) is settled in
the tick it is sent: the arrivals of a tick all see the backlog the tick started with (pipelined
hops), so hop ``s`` of a request does not wait for hop ``s - 1`` to finish. Without capacity every
wait is 0 and the tick is exactly the paper's.

**Failures and failover.** A peer in this tick's ``failing`` set fails mid-request: every hop
routed to it fails. The client fails over as Petals does (``InferenceSession._update_sequence``):
with per-stage routing it re-chooses that stage's peer among the live peers that did not fail,
drawn from eq. 3's probabilities among them (the logit choice's law once the failed peers are
removed); with path routing (``path``, ``petals``) it
keeps the hops before the first failed boundary and re-routes the rest of the path from there
(:func:`splice_paths`). The replacement recomputes the hop, replaying the prefix; the time lost at
the failed peer (its wait and compute) is added to the request's time. A failed peer's backlog is
lost. Every request ends in exactly one :data:`OUTCOMES` entry:

- ``served``: it completed without a failure;
- ``failed_over``: it completed after at least one failover;
- ``dropped_walked_away``: a stage's outside option beat every peer (``market.outside_option``);
- ``dropped_no_path``: no live path existed when it was sent (a stage without live peers);
- ``dropped_no_alternative``: a failed hop had no live replacement;
- ``dropped_retries``: it needed more than ``failures.max_retries`` failovers.

A request dropped for no alternative or retries pays nobody; one that walked away in a stage
still pays the stages it bought (the paper's per-stage markets are independent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

#: how a request ended, in the order of the ``outcomes`` counters of :class:`~p2pllm_abm.dynamics.MarketState`
OUTCOMES = ("served", "failed_over", "dropped_walked_away", "dropped_no_path", "dropped_no_alternative",
            "dropped_retries")
#: rows of the request-time sample buffers: the last this many ticks before a record are sampled
SAMPLE_TICKS = 64


def peer_capacity(cost: np.ndarray, step_ms: float | None, capacity: float | None) -> np.ndarray | None:
    """``mu_i``, requests per step: ``capacity`` for every peer if set, else ``step_ms / c_i``;
    ``None`` (unlimited) without ``step_ms``."""
    if step_ms is None:
        return None
    if capacity is not None:
        return np.full(len(cost), float(capacity))
    with np.errstate(divide="ignore"):
        return float(step_ms) / np.asarray(cost, dtype=float)  # c_i = 0 serves without limit


def expected_wait(backlog: Array, capacity: Array, step_ms: float) -> Array:
    """The wait in ms a request arriving now would have at each peer, ``b_i / mu_i * step_ms``."""
    return backlog / capacity * step_ms


def arrival_ranks(hops: Array, key: Array, n: int) -> Array:
    """For hops ``(...,)`` of peer ids (``-1``: none), each hop's place ``k`` in its peer's queue
    among this tick's arrivals, in a random order drawn from ``key`` (``0`` for no hop)."""
    flat = hops.ravel()
    peer = jnp.where(flat >= 0, flat, n)
    order = jnp.lexsort((jax.random.uniform(key, flat.shape), peer))
    sorted_peer = peer[order]
    position = jnp.arange(flat.shape[0])
    first = jnp.searchsorted(sorted_peer, sorted_peer, side="left")
    ranks = jnp.zeros_like(flat).at[order].set(position - first)
    return jnp.where(flat >= 0, ranks, 0).reshape(hops.shape)


def hop_waits(hops: Array, key: Array, backlog: Array, capacity: Array, step_ms: float) -> Array:
    """Each hop's queue wait in ms (0 for no hop): ``(b_i + k) / mu_i * step_ms``."""
    n = backlog.shape[0]
    ranks = arrival_ranks(hops, key, n)
    peer = jnp.maximum(hops, 0)
    wait = (backlog[peer] + ranks) / capacity[peer] * step_ms
    return jnp.where(hops >= 0, jnp.nan_to_num(wait, nan=0.0), 0.0)


def serve(backlog: Array, arrivals: Array, capacity: Array, failing: Array | None) -> tuple[Array, Array]:
    """Requests served this tick, ``min(b + a, mu)``, and the backlog left, ``max(0, b + a - mu)``
    (0 for a failing peer: its queue is lost)."""
    queued = backlog + arrivals
    served = jnp.minimum(queued, capacity)
    left = jnp.maximum(queued - capacity, 0.0)
    if failing is not None:
        left = jnp.where(failing, 0.0, left)
    return served, left


def splice_paths(path: Array, first_failed: Array, suffix: Array) -> Array:
    """Rows ``path`` (peers in order, right-aligned, ``-1`` pads) with everything from column
    ``first_failed`` on replaced by ``suffix`` (a right-aligned path from the failed boundary on):
    the kept prefix then the new suffix, right-aligned. A row of ``-1`` when ``suffix`` is empty."""
    width = path.shape[-1]

    def one(row: Array, failed: Array, new: Array) -> Array:
        suffix_length = jnp.sum(new >= 0)
        start = width - jnp.sum(row >= 0)
        prefix_length = failed - start
        column = jnp.arange(width)
        source = jnp.clip(column + suffix_length + failed - width, 0, width - 1)
        in_prefix = (column >= width - suffix_length - prefix_length) & (column < width - suffix_length)
        spliced = jnp.where(column >= width - suffix_length, new, jnp.where(in_prefix, row[source], -1))
        return jnp.where(suffix_length > 0, spliced, -1)

    return jax.vmap(one)(path, first_failed, suffix)


def first_failed_column(path: Array, failing: Array) -> tuple[Array, Array]:
    """Per row of ``path``: whether any hop is at a failing peer, and the first such column."""
    hit = (path >= 0) & failing[jnp.maximum(path, 0)]
    return jnp.any(hit, axis=-1), jnp.argmax(hit, axis=-1)
