"""The host phases of a step, in the paper's order (5.1), each a policy followed by a state update.

Every phase has one interface: ``due(step)`` says whether it runs at a step, ``__call__()`` runs it
on its model (the peer table, the ledger, the engine's environment) and returns whether it changed
who is in the market. Phases 1-2 (requests and prices) are the jitted ticks
(:mod:`p2pllm_abm.dynamics`, run by :mod:`p2pllm_abm.engine`); phase 5 (the record) is
:class:`~p2pllm_abm.recorder.Recorder`.

- :class:`Membership` (before the requests; with churn or failures): peers back from downtime,
  leaving, joining (their stages by the allocation rule's ``joins``), and those that will fail
  mid-request drawn (:mod:`p2pllm_abm.churn`); after the requests, the failed peers go down.
- :class:`Reallocation` (phase 3, every ``allocation.period`` steps): a seeded random share of live
  peers consider a move, one after another, by the allocation rule's ``moves``
  (:data:`~p2pllm_abm.registries.allocation_rules`); a mover is offline ``allocation.reload_steps``
  steps and pays ``allocation.switch_fee``.
- :class:`Contracts` (phase 4, with ``ledger.enabled``): the step's paid hops settled on the ledger
  (SLA terms, escrows or channel updates; with adversaries, checked by the verification mechanism
  first), moved prices posted, the slot's blocks produced; peers whose stake fell below the minimum
  leave the market.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .allocation import move_candidates
from .churn import failing, joining_starts, leaving, newcomers
from .dynamics import grow_state, reset_rows
from .metrics import EVENT_KINDS
from .registries import allocation_rules

if TYPE_CHECKING:
    from .model import P2PLLMModel


class Phase(Protocol):
    """A host phase of a step."""

    def due(self, step: int) -> bool:
        """Whether the phase runs at ``step``."""

    def __call__(self) -> bool:
        """Run the phase at the model's current step; whether it changed who is in the market."""


class Membership:
    """Peers joining, leaving, failing and coming back (see the module docstring), and the events
    log of everything that changes who serves where."""

    def __init__(self, model: P2PLLMModel) -> None:
        self.model = model
        n = len(model.peers)
        #: peers reloading after a move (down, but counted by Petals' block selection as joining)
        self.reloading = np.zeros(n, dtype=bool)
        self.failing = None if model.config.failures.rate == 0 else np.zeros(n, dtype=bool)
        self.switch_fees = np.zeros(n)  #: cumulative allocation.switch_fee paid per row
        self.counts = dict.fromkeys((*EVENT_KINDS, "joins_refused"), 0)  #: events so far, by kind
        self.events: list[tuple[int, str, np.ndarray, np.ndarray]] = []  #: (step, kind, peer ids, stages)
        self.next_peer_id = int(model.peers.present.sum())

    @property
    def dynamic(self) -> bool:
        """Whether peers join, leave or fail (then every step runs the membership phase)."""
        churn = self.model.config.churn
        return churn.join_rate > 0 or churn.leave_rate > 0 or self.failing is not None

    def due(self, step: int) -> bool:
        return True

    def __call__(self) -> bool:
        """Before the step's requests: down peers whose time has come are back, peers leave (churn),
        newcomers join and take their stages, and the peers that will fail during this step's
        requests are drawn. Only rebuilds the market's environment when something changed."""
        model = self.model
        peers, cfg = model.peers, model.config
        back = np.flatnonzero(peers.present & ~peers.alive & (peers.down_until > 0) & (peers.down_until <= model.steps))
        if len(back):
            peers.alive[back], peers.down_until[back], self.reloading[back] = True, 0, False
            self.log("recover", back)
        changed = len(back) > 0
        if self.dynamic:
            gone = leaving(peers.present, cfg.churn.leave_rate, model.churn_rng)
            if len(gone):
                self.remove(gone, "leave")
            arrivals = newcomers(cfg, model.churn_rng)
            if len(arrivals.length):
                self.add(arrivals)
            changed = changed or len(gone) > 0 or len(arrivals.length) > 0
        if self.failing is not None:
            self.failing = failing(peers.alive, cfg.failures.rate, model.churn_rng)
            changed = True
        if changed:
            model.engine.invalidate()
        return changed

    def after_requests(self) -> None:
        """Peers that failed during this step's requests go down (for good with ``failures.downtime``
        null)."""
        if self.failing is None or not self.failing.any():
            return
        model = self.model
        failed = np.flatnonzero(self.failing)
        downtime = model.config.failures.downtime
        if downtime is None:
            self.remove(failed, "fail")
        else:
            self.log("fail", failed)
            model.peers.alive[failed], model.peers.down_until[failed] = False, model.steps + downtime + 1
        self.failing = np.zeros(len(model.peers), dtype=bool)
        model.engine.invalidate()

    def add(self, arrivals) -> None:
        """Newcomers take free rows (the arrays grow by a tenth, at least 16 rows, when none is left),
        their stages by the allocation rule, a PeerAgent each, and fresh market state at ``network.initial_price``."""
        model = self.model
        peers, cfg, engine = model.peers, model.config, model.engine
        free = self.free_rows()
        if len(free) < len(arrivals.length) and model.ledger is None:
            self.grow(max(len(arrivals.length) - len(free), int(np.ceil(0.1 * len(peers))), 16))
            free = self.free_rows()
        if len(free) < len(arrivals.length):  # the ledger's accounts are fixed: no more rows
            self.counts["joins_refused"] += len(arrivals.length) - len(free)
            arrivals = type(arrivals)(*(values[: len(free)] for values in arrivals))
        rows = free[: len(arrivals.length)]
        if not len(rows):
            return
        start = joining_starts(cfg, arrivals, peers.stage_start, peers.stage_end, peers.cost,
                               peers.alive | self.reloading, model.churn_rng)
        length = np.minimum(arrivals.length, peers.n_stages - start)
        peers.stage_cost[rows] = arrivals.stage_cost
        peers.stage_start[rows], peers.stage_end[rows] = start, start + length
        peers.cost[rows] = peers.span_cost(start, start + length, rows)
        peers.position[rows] = arrivals.position
        peers.present[rows], peers.alive[rows], peers.down_until[rows] = True, True, 0
        peers.peer_id[rows] = self.next_peer_id + np.arange(len(rows))
        self.next_peer_id += len(rows)
        self.switch_fees[rows] = 0.0
        model.peers_joined(rows)
        engine.state = reset_rows(engine.state, self.mask(rows), float(cfg.network.initial_price))
        if model.ledger is not None:
            engine.sync_peers()  # the newcomers' prices, which they register
            model.ledger.join(rows, peers)
        self.log("join", rows)

    def remove(self, rows: np.ndarray, kind: str) -> None:
        """Peers ``rows`` leave for good: out of the market, their agents removed, their rows free."""
        model = self.model
        self.log(kind, rows)
        if model.ledger is not None:
            model.ledger.leave(rows)
        model.peers.present[rows], model.peers.alive[rows], model.peers.down_until[rows] = False, False, 0
        self.reloading[rows] = False
        model.peers_left(rows)
        self.drop_queues(rows)

    def drop_queues(self, rows: np.ndarray) -> None:
        """Peers at ``rows`` went away (left, failed for good, or reload after a move): with capacity,
        the requests queued at them are lost."""
        if self.model.config.network.step_ms is not None:
            self.model.engine.state = reset_rows(self.model.engine.state, self.mask(rows), 0.0, fields=("backlog",))

    def grow(self, rows: int) -> None:
        """Add ``rows`` free rows to the table, the per-peer arrays and the market state (a new array
        shape: the jitted step compiles once more)."""
        model = self.model
        model.peers.grow(rows)
        pad = lambda values, fill: np.concatenate([values, np.full(rows, fill, dtype=values.dtype)])  # noqa: E731
        self.reloading, self.switch_fees = pad(self.reloading, False), pad(self.switch_fees, 0.0)
        if self.failing is not None:
            self.failing = pad(self.failing, False)
        model.rows_added(rows)
        model.engine.state = grow_state(model.engine.state, rows)

    def free_rows(self) -> np.ndarray:
        """Rows a newcomer may take: any row without a peer, or with the ledger on (a row is a ledger
        account) only rows no peer has held yet."""
        peers = self.model.peers
        free = ~peers.present
        return np.flatnonzero(free & (peers.peer_id < 0) if self.model.ledger is not None else free)

    def mask(self, rows: np.ndarray) -> jnp.ndarray:
        """Rows ``rows`` as a mask over the table, on the device."""
        mask = np.zeros(len(self.model.peers), dtype=bool)
        mask[rows] = True
        return jnp.asarray(mask)

    def log(self, kind: str, rows: np.ndarray, step: int | None = None) -> None:
        """Record events ``kind`` (:data:`~p2pllm_abm.metrics.EVENT_KINDS`) of peers ``rows`` at ``step``
        (default: this step)."""
        peers = self.model.peers
        self.counts[kind] += len(rows)
        self.events.append((self.model.steps if step is None else step, kind, peers.peer_id[rows].copy(),
                            peers.stage[rows].copy()))

    def events_frame(self) -> pd.DataFrame:
        """Joins, leaves, failures, recoveries and moves: one row per peer and event (``step``,
        ``event``, ``peer_id``, ``stage`` where it was or went)."""
        step, kind, peer, stage = zip(*self.events) if self.events else ((), (), (), ())
        sizes = [len(ids) for ids in peer]
        return pd.DataFrame({"step": np.repeat(np.asarray(step, dtype=np.int64), sizes),
                             "event": np.repeat(np.asarray(kind, dtype=object), sizes),
                             "peer_id": np.concatenate([np.zeros(0, np.int64), *peer]).astype(np.int64),
                             "stage": np.concatenate([np.zeros(0, np.int64), *stage]).astype(np.int64)})


class Reallocation:
    """Phase 3 (paper eq. 7-8): every ``allocation.period`` steps, a seeded random share of live
    peers consider a move by the allocation rule's ``moves``."""

    def __init__(self, model: P2PLLMModel) -> None:
        self.model = model
        self.moves = 0  #: peers moved so far

    def due(self, step: int) -> bool:
        alloc = self.model.config.allocation
        return alloc.enabled and step % alloc.period == 0

    def __call__(self) -> bool:
        model = self.model
        alloc = model.config.allocation
        candidates = move_candidates(model.peers.alive, alloc.move_fraction, model.rng)
        return self.apply(allocation_rules.get(alloc.rule).moves(model, candidates), model.steps)

    def apply(self, moves: list[tuple[int, int, int]], step: int) -> bool:
        """The moves ``(peer, from, to)`` at ``step``: spans shifted, costs, switch fees, reloads, the
        events log."""
        model = self.model
        alloc, peers, membership = model.config.allocation, model.peers, model.membership
        if not moves:
            return False
        moved = np.array([peer for peer, _, _ in moves])
        target = np.array([to for _, _, to in moves])
        length = peers.stage_end[moved] - peers.stage_start[moved]
        peers.stage_start[moved], peers.stage_end[moved] = target, target + length
        peers.cost[moved] = peers.span_cost(target, target + length, moved)
        membership.switch_fees[moved] += alloc.switch_fee
        if alloc.reload_steps > 0:
            peers.alive[moved], peers.down_until[moved] = False, step + alloc.reload_steps + 1
            membership.reloading[moved] = True
            membership.drop_queues(moved)
        membership.log("move", moved, step)
        model.engine.invalidate()
        self.moves += len(moves)
        return True


class Contracts:
    """Phase 4 (paper 5.1, "create new contracts"), with the ledger on."""

    def __init__(self, model: P2PLLMModel) -> None:
        self.model = model

    def due(self, step: int) -> bool:
        return self.model.ledger is not None

    def __call__(self) -> bool:
        """Settle this step's paid hops (checked first by the security phase), post prices and
        produce the slot's blocks; peers that lost their registration leave the market. Returns
        whether any left."""
        model = self.model
        ledger, engine, peers = model.ledger, model.engine, model.peers
        paid, quoted = engine.paid
        failed = commitments = None
        if model.security is not None:
            client, column, peer = ledger.paid_hops(paid)
            position = column - (paid < 0).sum(axis=1)[client]  # paths are right-aligned
            failed, commitments = model.security.step(model.steps, client, position, peer, peers)
        ledger.settle(model.steps, paid, quoted, peers, model.client_position, failed, commitments)
        if engine.failed_hops is not None:
            ledger.penalise_failed(model.steps, engine.failed_hops, quoted, peers)
        exited = ledger.advance(peers.price, peers.alive)
        if len(exited):
            peers.alive[exited], peers.down_until[exited] = False, 0  # out of the market for good
            engine.invalidate()
        return len(exited) > 0
