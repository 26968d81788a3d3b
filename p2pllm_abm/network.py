"""The network's state: all peers as one struct of arrays (paper section 3, node tuple N(l, l, c, p)).

A peer ``i`` serves the contiguous span ``[stage_start[i], stage_end[i])`` of the model's
``n_stages`` stages, has compute cost ``cost[i]`` (ms per request for its span), price
``price[i]``, a position in the unit square from which its latencies follow (:func:`latency`),
and an ``alive`` flag. Mesa agents (``agents.py``) are thin handles into this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .config import NetworkConfig, initial_distribution
from .costs import span_sum, stage_times
from .profiles import load_profile

#: the unit square's diameter, the largest distance between two positions
_MAX_DISTANCE = float(np.sqrt(2.0))


@dataclass
class PeerTable:
    """Struct-of-arrays state of every peer; index ``i`` is peer ``i``."""

    stage_start: np.ndarray  #: int, first stage served
    stage_end: np.ndarray  #: int, one past the last stage served
    cost: np.ndarray  #: float, c_i in ms per request
    price: np.ndarray  #: float, p_i per request
    position: np.ndarray  #: float (n, 2), point in the unit square
    alive: np.ndarray  #: bool
    n_stages: int
    latency_range: tuple[float, float] = (1.0, 20.0)
    #: float, cumulative realised revenue, requests served and expected requests (zeros if omitted)
    revenue: np.ndarray | None = None
    requests: np.ndarray | None = None
    expected_requests: np.ndarray | None = None
    #: int, base units, with the ledger on (else None), as of the model's last record: balance,
    #: bonded stake, earned but not yet on the balance
    balance: np.ndarray | None = None
    stake: np.ndarray | None = None
    escrowed: np.ndarray | None = None
    #: str, each peer's behaviour name, with adversaries or verification on (else None)
    behaviour: np.ndarray | None = None
    #: int, a peer's id for the whole run (a row freed by a peer that left is reused by a joiner); default
    #: the row index
    peer_id: np.ndarray | None = None
    #: bool, the row holds a member of the network (False: a free row, or a peer that left)
    present: np.ndarray | None = None
    #: int, a peer down (failed, or reloading after a move) is back at this step; 0: not down
    down_until: np.ndarray | None = None
    #: float (n, n_stages), c_i(s): the peer's cost for one stage s (its device's time for that stage's
    #: layers); a span costs the sum over its stages. Default: cost / span length in every stage
    stage_cost: np.ndarray | None = None
    #: float, with capacity on (else None), as of the model's last record: requests served over
    #: capacity offered since the record before
    utilisation: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.cost)
        for name in ("revenue", "requests", "expected_requests"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(n))
        if self.peer_id is None:
            self.peer_id = np.arange(n)
        if self.present is None:
            self.present = np.ones(n, dtype=bool)
        if self.down_until is None:
            self.down_until = np.zeros(n, dtype=np.int64)
        for name in ("stage_start", "stage_end", "price", "alive", "revenue", "requests", "expected_requests"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PeerTable.{name} has {len(getattr(self, name))} entries, expected {n}")
        if self.position.shape != (n, 2):
            raise ValueError(f"PeerTable.position has shape {self.position.shape}, expected ({n}, 2)")
        self.check_values()
        spans_ok = (0 <= self.stage_start) & (self.stage_start < self.stage_end) & (self.stage_end <= self.n_stages)
        if not spans_ok.all():
            bad = int(np.flatnonzero(~spans_ok)[0])
            raise ValueError(
                f"peer {bad} serves [{self.stage_start[bad]}, {self.stage_end[bad]}): "
                f"allowed 0 <= start < end <= n_stages = {self.n_stages}"
            )
        if self.stage_cost is None:
            length = self.stage_end - self.stage_start
            self.stage_cost = np.repeat((np.asarray(self.cost, dtype=float) / length)[:, None], self.n_stages, axis=1)

    def check_values(self) -> None:
        """Raise ``ValueError`` naming the column, the first bad peer and its value when a cost or
        price is not a finite number >= 0 (one per peer), a position not finite, or the latency
        range not ``0 <= low <= high``, both finite."""
        for name in ("cost", "price"):
            values = np.asarray(getattr(self, name))
            if values.ndim != 1:
                raise ValueError(f"PeerTable.{name} has shape {values.shape}: allowed one value per peer (1-D)")
            bad = ~(np.isfinite(values) & (values >= 0))
            if bad.any():
                peer = int(np.flatnonzero(bad)[0])
                raise ValueError(f"PeerTable.{name}[{peer}] = {values[peer]} is invalid: allowed a finite {name} >= 0")
        if not np.isfinite(self.position).all():
            raise ValueError("PeerTable.position holds a non-finite coordinate: allowed finite points")
        low, high = self.latency_range
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"PeerTable.latency_range = {self.latency_range} is invalid: allowed 0 <= low <= high, "
                             "both finite")

    def __len__(self) -> int:
        return len(self.cost)

    def span_cost(self, start: np.ndarray, end: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What peers ``rows`` would cost serving ``[start, end)``: the sum of their stage costs."""
        return span_sum(self.stage_cost[rows], start, end)

    def grow(self, rows: int) -> None:
        """Append ``rows`` free rows (not present, not alive) to every column."""
        def pad(values: np.ndarray, fill) -> np.ndarray:
            extra = np.full((rows, *values.shape[1:]), fill, dtype=values.dtype)
            return np.concatenate([values, extra])

        self.stage_start, self.stage_end = pad(self.stage_start, 0), pad(self.stage_end, 1)
        self.cost, self.price = pad(self.cost, 1.0), pad(self.price, 0.0)
        self.position, self.alive, self.present = pad(self.position, 0.0), pad(self.alive, False), pad(self.present, False)
        for name in ("revenue", "requests", "expected_requests"):
            setattr(self, name, pad(getattr(self, name), 0.0))
        self.peer_id, self.down_until = pad(self.peer_id, -1), pad(self.down_until, 0)
        self.stage_cost = pad(self.stage_cost, 1.0)
        if self.utilisation is not None:
            self.utilisation = pad(self.utilisation, np.nan)

    def update_ledger_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Set ``balance``, ``stake`` and ``escrowed`` from the ledger."""
        self.balance, self.stake, self.escrowed = columns["balance"], columns["stake"], columns["escrowed"]

    @property
    def stage(self) -> np.ndarray:
        """The stage whose market a peer competes in: its first stage (one stage per peer)."""
        return self.stage_start

    @classmethod
    def from_config(cls, network: NetworkConfig, rng: np.random.Generator) -> PeerTable:
        """Draw the paper's network (section 5.2): peers laid out by first stage per the initial
        distribution, span lengths by :func:`draw_span_lengths` (one stage each by default),
        ``c_i = length_i * U(cost_range)`` (the range is per stage served), positions uniform in
        the unit square, all prices equal to ``initial_price``."""
        counts = initial_distribution(network)
        n = network.peers
        start = np.repeat(np.arange(network.stages), counts)
        low, high = network.cost_range
        cost = rng.uniform(low, high, size=n)  # drawn for profiled costs too: spans and positions come next
        length = draw_span_lengths(start, network.stages, network.span_length_probs, rng)
        position = rng.uniform(0.0, 1.0, size=(n, 2))
        if network.cost_source == "profile":
            stage_cost = profiled_stage_costs(network, len(start), rng)
        else:
            stage_cost = np.repeat(cost[:, None], network.stages, axis=1)
        table = cls(
            stage_start=start,
            stage_end=start + length,
            cost=np.zeros(n),
            price=np.full(n, float(network.initial_price)),
            position=position,
            alive=np.ones(n, dtype=bool),
            n_stages=network.stages,
            latency_range=(float(network.latency_range[0]), float(network.latency_range[1])),
            stage_cost=stage_cost,
        )
        # uniform costs as the paper draws them (length x U exactly); profiled spans sum their stages
        table.cost = cost * length if network.cost_source != "profile" else table.span_cost(start, start + length,
                                                                                               np.arange(n))
        return table

    def stage_counts(self) -> np.ndarray:
        """Live peers per stage."""
        return np.bincount(self.stage[self.alive], minlength=self.n_stages)

    def latency(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Latency ``l_uv`` in ms between peers ``u`` and ``v`` (arrays of indices, broadcast)."""
        return latency(self.position[u], self.position[v], self.latency_range)

    def client_latency(self, u: np.ndarray, client: np.ndarray) -> np.ndarray:
        """Latency in ms between peers ``u`` and a client at position ``client`` (``(2,)``, or
        ``(..., 2)`` broadcast against ``u``)."""
        return latency(self.position[u], client, self.latency_range)


def profiled_stage_costs(network: NetworkConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Stage costs ``c_i(s)`` ``(n, n_stages)`` from ``network.cost_profile``: each peer's device
    drawn from ``network.device_mix``, its cost in stage ``s`` the profiled time of that stage's
    layers on that device (:mod:`p2pllm_abm.costs`)."""
    names = list(network.device_mix)
    weights = np.array([network.device_mix[name] for name in names], dtype=float)
    device = np.asarray(names)[rng.choice(len(names), size=n, p=weights / weights.sum())]
    profile = load_profile(network.cost_profile)
    times = {name: stage_times(profile, str(name), network.cost_metric) for name in np.unique(device)}
    return np.array([times[name] for name in device]).reshape(n, network.stages)


def draw_span_lengths(start: np.ndarray, n_stages: int, probs: list[float], rng: np.random.Generator) -> np.ndarray:
    """A span length for every peer starting at ``start``: ``probs[k]`` is the probability of
    length ``k + 1``, renormalised over the lengths that fit (``start + length <= n_stages``);
    a peer for which none of those has mass serves up to the last stage. ``probs = [1]`` (the
    paper) gives every peer one stage, and draws nothing from ``rng``."""
    probs = np.asarray(probs, dtype=float)
    if not probs[1:].any():
        return np.ones(len(start), dtype=np.int64)
    length = np.empty(len(start), dtype=np.int64)
    for first in np.unique(start):
        room = n_stages - int(first)
        members = np.flatnonzero(start == first)
        fitting = probs[:room]
        if fitting.sum() > 0:
            length[members] = 1 + rng.choice(len(fitting), size=len(members), p=fitting / fitting.sum())
        else:
            length[members] = room
    return length


def latency(a: np.ndarray, b: np.ndarray, latency_range: tuple[float, float]) -> np.ndarray:
    """Latency between positions ``a`` and ``b`` (``(..., 2)`` arrays in the unit square; numpy
    or, inside jitted code, JAX arrays).

    ``l = low + (high - low) * |a - b| / sqrt(2)``: symmetric, within ``[low, high]``, and a
    metric between distinct peers (a positive offset plus a scaled Euclidean distance keeps the
    triangle inequality).
    """
    low, high = latency_range
    traced = isinstance(a, jax.Array) or isinstance(b, jax.Array)  # inside the jitted request phase
    xp = jnp if traced else np
    a, b = xp.asarray(a), xp.asarray(b)
    dx, dy = a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]
    distance = xp.sqrt(dx * dx + dy * dy)  # the Euclidean norm, without (..., 2) temporaries
    return low + (high - low) * distance / _MAX_DISTANCE
