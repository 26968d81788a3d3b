"""How a model's steps run: the market's jitted state, the environment its ticks read, and the
execution of steps on the device, apart from what the steps mean (the phases, :mod:`p2pllm_abm.phases`).

Phases 1-2 (requests and prices) are jitted JAX over all peers. :meth:`Engine.run` runs the
steps of :meth:`~p2pllm_abm.model.P2PLLMModel.run` in one of two ways, each giving the same
results, bit for bit, as calling :meth:`~p2pllm_abm.model.P2PLLMModel.step` repeatedly:

- **Fused** (:attr:`Engine.fusable`: no phase needs the host between records): every step up to the
  next record in one compiled call (:func:`~p2pllm_abm.dynamics.run_steps`: ticks, reallocation with
  its candidates drawn beforehand, and the record's certificate and welfare), the calls back to back
  while the host takes the records. A call that stops early (a stage outgrew the stage blocks) or
  produced a non-finite value is dropped and replayed, and the generator is rewound to the draws
  the steps done used.
- **Chunked**: the consecutive steps between two steps that need phases 3-5 fused into one call
  (:func:`~p2pllm_abm.dynamics.run_ticks`), then that step. With the ledger on, the chunk also
  returns every tick's paid hops and the contracts phase settles them step by step afterwards
  (:meth:`Engine.ledger_chunk`; a peer leaving the market mid-chunk makes it recompute the market up
  to that step); with ``ledger.registry_view=confirmed``, churn or failures ticks run one at a time.

Ticks dispatched without the ledger are awaited lazily (:meth:`Engine.await_ticks`): the host goes
on with the next phases while they compute.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .allocation import move_candidates, share_weight, turns_to_moves
from .config import ConfigError, most_extreme_field, price_rule_options, security_on
from .dynamics import (Environment, Geometry, MarketState, Reallocation, StepsDone, finite_jit, device_scalars,
                       paid_tick_jit, reset_window, run_paid_ticks, run_steps, run_ticks)
from .equilibrium import StageBlocks, padded_size, stage_blocks
from .load import peer_capacity
from .registries import allocation_rules, price_rules, routings

if TYPE_CHECKING:
    from .model import P2PLLMModel

#: market ticks dispatched and not yet checked at most (each holds its start state and environment)
MAX_UNSETTLED = 8


class FusedCall(NamedTuple):
    """A :func:`~p2pllm_abm.dynamics.run_steps` call's host side (:meth:`Engine.fused_call`)."""

    steps: int  #: steps asked for
    events: list[int]  #: the steps that reallocate
    candidates: list[np.ndarray]  #: each event's candidates, in turn order
    reallocation: Reallocation | None  #: the call's reallocation input (None: off)
    drawn_from: dict  #: the generator's state before the candidates were drawn


class Dispatched(NamedTuple):
    """Market ticks dispatched but not yet checked (:meth:`Engine.await_ticks`)."""

    start: MarketState  #: the state they started from
    env: Environment  #: what they read
    first_step: int
    ticks: int
    finite: jax.Array  #: whether their final prices and revenues are finite (on the device)


class Engine:
    """The device side of a :class:`~p2pllm_abm.model.P2PLLMModel`: its market state, environment and
    the execution of its steps."""

    def __init__(self, model: P2PLLMModel, state: MarketState) -> None:
        self.model = model
        self.state = state  #: the market's jitted state (prices, revenues, queues, request samples)
        self.block_width = 1  #: the widest stage block so far (the jitted steps' shapes only grow)
        self.unsettled: list[Dispatched] = []  #: ticks dispatched, not yet checked (see await_ticks)
        self.in_run = False  #: inside run(), which awaits the dispatched ticks when it ends
        self.paid = None  #: the last tick's paid hops and quoted prices, for the contracts phase
        self.failed_hops = None  #: the last tick's failed hops (with failures and the ledger on)
        self.chunk_length = 1  #: with the ledger: the compiled scan's length (the longest chunk)
        self._environment: Environment | None = device_scalars(self.make_environment())  #: None: stale

    # -- what the ticks read --------------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        """What the jitted ticks read (costs, stages, who is alive, capacities, who fails), rebuilt
        from the table after the phases that change it (:meth:`invalidate`)."""
        if self._environment is None:
            self._environment = device_scalars(self.make_environment())
        return self._environment

    @environment.setter
    def environment(self, env: Environment) -> None:
        self._environment = env

    def invalidate(self) -> None:
        """The table changed: the environment is rebuilt when next needed."""
        self._environment = None

    def make_environment(self) -> Environment:
        model = self.model
        cfg, peers, net = model.config, model.peers, model.config.network
        capacity = peer_capacity(peers.cost, net.step_ms, net.capacity)
        blocks, ends = self.stage_blocks()
        clients = model.device_clients
        return Environment(
            # host copies: JAX copies a numpy array to the device asynchronously, and the table's columns
            # change in place while a dispatched tick may not have read them yet
            cost=jnp.asarray(model.claimed_cost.copy()),
            stage=jnp.asarray(peers.stage.copy()),
            alive=jnp.asarray(peers.alive.copy()),
            client_alpha=clients["alpha"],
            request_rate=cfg.clients.request_rate,
            params=model.market_params,
            blocks=blocks,
            options=price_rule_options(cfg),
            geometry=Geometry(
                position=jnp.asarray(peers.position.copy()),
                client_position=clients["position"],
                latency_range=peers.latency_range,
                ends=ends,
                client_class=clients["class"],
            ),
            capacity=None if capacity is None else jnp.asarray(capacity),
            step_ms=0.0 if net.step_ms is None else float(net.step_ms),
            failing=None if model.membership.failing is None else jnp.asarray(model.membership.failing.copy()),
            max_retries=float("inf") if cfg.failures.max_retries is None else float(cfg.failures.max_retries),
            hop_overhead=float(cfg.clients.hop_overhead_ms),
            **model.alpha_groups,
        )

    def widen_blocks(self, width: int) -> None:
        """Lay the stage blocks out at least ``width`` wide from now on (an ensemble's members share
        one width; the request noise does not depend on it)."""
        if width > self.block_width:
            self.block_width = width
            self._environment = None

    def stage_blocks(self) -> tuple[StageBlocks, jax.Array]:
        """The live peers by first stage and by end stage, for the ticks that read them (requests,
        the sequential and Newton price rules; path and Petals routing); a ``(m, 1)`` placeholder of
        ``-1`` otherwise. Widths only grow (to the largest stage's :func:`~p2pllm_abm.equilibrium.block_size`),
        so that a shape seen once is not compiled again; the compiled run widens them the same way."""
        cfg, net, width = self.model.config, self.model.peers, self.block_width
        by_stage = price_rules.get(cfg.market.update_rule).reads_blocks or cfg.clients.count > 0
        by_end = not routings.get(cfg.clients.routing).per_stage
        blocks = (stage_blocks(net.stage, net.alive, net.n_stages, width) if by_stage
                  else StageBlocks(jnp.full((net.n_stages, 1), -1)))
        ends = (stage_blocks(net.stage_end, net.alive, net.n_stages + 1, width).index if by_end
                else jnp.full((net.n_stages + 1, 1), -1))
        self.block_width = max(blocks.index.shape[1], ends.shape[1])
        return blocks, ends

    def tick_options(self) -> dict:
        """The static arguments of the jitted ticks: price rule, routing, number of stages, load-aware
        choice."""
        cfg = self.model.config
        return dict(rule=cfg.market.update_rule, routing=cfg.clients.routing, n_stages=self.model.peers.n_stages,
                    load_aware=cfg.clients.load_aware)

    # -- ticks ----------------------------------------------------------------------------------
    def market_ticks(self, ticks: int, first_step: int) -> None:
        """Dispatch ``ticks`` market ticks from ``first_step``. Without the ledger nothing waits for
        them: the host goes on with the next phases (the next step's joins and leaves run while the
        ticks compute) until :meth:`await_ticks` checks them and brings their results to the table."""
        model = self.model
        options = self.tick_options()
        start, env = self.state, self.environment
        if model.ledger is None:
            self.state = run_ticks(self.state, env, ticks, **options)
        elif model.config.ledger.registry_view == "confirmed" or model.membership.failing is not None:
            # requests see the registry's prices, or failed hops go to the ledger too
            confirmed = model.config.ledger.registry_view == "confirmed"
            quoted = model.ledger.registry.posted_price.copy() if confirmed else model.peers.price.copy()
            self.state, paid, failed = paid_tick_jit(self.state, env, jnp.asarray(quoted), **options)
            self.paid = (np.asarray(paid), quoted)
            self.failed_hops = np.asarray(failed) if model.membership.failing is not None else None
        else:  # the chunk's compiled scan, one tick long
            self.state, paid, before = run_paid_ticks(self.state, env, 1, length=self.chunk_length, **options)
            self.paid = (np.asarray(paid)[0], np.asarray(before)[0])
        self.unsettled.append(Dispatched(start, env, first_step, ticks, finite_jit(self.state)))
        if model.ledger is not None or len(self.unsettled) >= MAX_UNSETTLED:
            self.await_ticks()

    def await_ticks(self) -> None:
        """Wait for the dispatched ticks, stop at the first that left a price or revenue non-finite
        (:meth:`refuse_non_finite`), and copy prices, revenues and requests to the table."""
        if not self.unsettled:
            return
        dispatched, self.unsettled = self.unsettled, []
        finite = np.asarray(jnp.stack([chunk.finite for chunk in dispatched]))
        if not finite.all():
            self.refuse_non_finite(dispatched[int(np.argmin(finite))])
        self.sync_peers()

    def refuse_non_finite(self, chunk: Dispatched) -> None:
        """Replay ``chunk`` from its start one tick at a time (under its environment) to find the
        step and peer where a price or revenue first became non-finite, and refuse the market scale
        most likely to blame (:func:`~p2pllm_abm.config.most_extreme_field`) in one line. Nothing
        non-finite is recorded."""
        options = self.tick_options()
        probe, step = chunk.start, chunk.first_step
        for step in range(chunk.first_step, chunk.first_step + chunk.ticks):
            probe = run_ticks(probe, chunk.env, 1, **options)
            if not bool(finite_jit(probe)):
                break
        quantity = "price" if not np.isfinite(np.asarray(probe.price)).all() else "revenue"
        values = np.asarray(getattr(probe, quantity))
        peer = int(np.flatnonzero(~np.isfinite(values))[0])
        field, value = most_extreme_field(self.model.config)
        raise ConfigError(field, value, f"values that keep the run finite: peer {peer}'s {quantity} (stage "
                          f"{int(self.model.peers.stage[peer])}) became {values[peer]} at step {step}, its previous "
                          f"record is the last one kept; {field} is the market scale furthest from its default")

    def sync_peers(self) -> None:
        """Copy prices, revenues and requests from the state to the table."""
        peers, state = self.model.peers, self.state
        peers.price = np.asarray(state.price)
        peers.revenue = np.asarray(state.revenue)
        peers.requests = np.asarray(state.requests)
        peers.expected_requests = np.asarray(state.expected_requests)

    def ledger_chunk(self, ticks: int) -> int:
        """With the ledger on and live prices: ``ticks`` market ticks in one compiled scan, then each
        step's contracts phase in order. If the ledger takes a peer out of the market at step
        ``k``, the market is recomputed from the chunk's start to step ``k`` (same results as
        stepping) and the rest of the chunk is dropped; returns the steps done."""
        model = self.model
        start, env = self.state, self.environment
        options = self.tick_options()
        final, paid, before = run_paid_ticks(start, env, ticks, length=self.chunk_length, **options)
        if not bool(finite_jit(final)):
            self.refuse_non_finite(Dispatched(start, env, model.steps + 1, ticks, finite_jit(final)))
        paid, before = np.asarray(paid), np.asarray(before)
        for k in range(ticks):
            model.steps += 1
            self.paid = (paid[k], before[k])
            model.peers.price = before[k + 1] if k + 1 < ticks else np.asarray(final.price)
            if model.contracts():
                self.state = run_ticks(start, env, k + 1, **options)
                self.sync_peers()
                return k + 1
        self.state = final
        self.sync_peers()
        return ticks

    # -- runs -----------------------------------------------------------------------------------
    @functools.cached_property
    def fusable(self) -> bool:
        """Whether :meth:`run` compiles everything between two records into one call
        (:func:`~p2pllm_abm.dynamics.run_steps`): no ledger, no churn or failures, no adversaries
        or verification, and reallocation (if on) by a rule the compiled call makes (eq. 7-8) of
        single-stage peers whose cost does not depend on the stage, with no reload time, under
        per-stage routing."""
        model = self.model
        cfg, peers, alloc = model.config, model.peers, model.config.allocation
        host_phases = cfg.ledger.enabled or model.membership.dynamic or security_on(cfg)
        compiled_moves = (not alloc.enabled
                          or (allocation_rules.get(alloc.rule).fused and alloc.reload_steps == 0
                              and routings.get(cfg.clients.routing).per_stage
                              and cfg.network.cost_source != "profile"
                              and bool(np.all(peers.stage_end - peers.stage_start == 1))))
        return not host_phases and compiled_moves

    def run(self, end: int, bar: tqdm) -> None:
        """Run the model's steps up to step ``end``, fused or chunked (see the module docstring)."""
        self.in_run = True
        try:
            (self.run_fused if self.fusable else self.run_chunked)(end, bar)
        finally:
            self.in_run = False

    def run_fused(self, end: int, bar: tqdm) -> None:
        """:meth:`run`'s loop when :attr:`fusable`: one compiled call up to each record (it returns
        early when reallocation makes a stage outgrow the stage blocks), which also measures the
        record (certificate, welfare), then the record's host part. The calls run back to back: each
        is dispatched before the previous one's results are read, as if that one does all its steps
        (its candidates drawn, its state and stage blocks the previous call's on the device), so the
        host takes a record, applies the moves and draws the candidates while the device computes.
        When a call does not do all its steps (a stage outgrew the blocks, or non-finite results
        replayed step by step), the next call's results are dropped, the generator goes back to its
        draws and it is dispatched again from the host's state. An interrupted run leaves the
        generator where the steps done left it."""
        model, recorder = self.model, self.model.recorder
        self.await_ticks()
        options = dict(self.tick_options(), measure=True, with_welfare=model.market_params.alpha > 0)
        record = model.config.run.record_interval
        env = self.environment

        def dispatch(call: FusedCall, state: MarketState, env: Environment, start: int) -> tuple[FusedCall, StepsDone]:
            return call, run_steps(state, env, call.steps, start, call.reallocation, **options)

        running = (dispatch(self.fused_call(self.steps_to_record(end)), self.state, env, model.steps)
                   if model.steps < end else None)
        unapplied, drawn_to = (running[0].drawn_from, model.rng.bit_generator.state) if running else (None, None)
        try:
            while running is not None:
                call, results = running
                start, following = model.steps + call.steps, None
                moved_env = env._replace(stage=results.stage, blocks=results.blocks)  # the stages the call's moves leave
                if start < end:  # the next call, as if this one does all its steps
                    following = dispatch(self.fused_call(self.steps_to_record(end, start), start),
                                         reset_window(results.state) if start % record == 0 else results.state,
                                         moved_env, start)
                    drawn_to = model.rng.bit_generator.state
                done = self.finish_fused_call(call, results.state, results.done, results.after, results.finite)
                replayed = self.state is not results.state
                unapplied = following[0].drawn_from if following else None
                bar.update(done)
                valid = done == call.steps and not replayed
                if valid and following is not None:  # as the host would build it after the moves
                    env = self._environment = moved_env
                if recorder.due():
                    recorder.finish(recorder.start(results.measures if not replayed else None))
                if not valid:
                    if following is not None and model.rng.bit_generator.state == drawn_to:
                        model.rng.bit_generator.state = following[0].drawn_from  # its draws were for steps not reached
                    env = self.environment
                    following = (dispatch(self.fused_call(self.steps_to_record(end)), self.state, env, model.steps)
                                 if model.steps < end else None)
                    unapplied, drawn_to = (following[0].drawn_from if following else None), model.rng.bit_generator.state
                running = following
        finally:
            if unapplied is not None and model.rng.bit_generator.state == drawn_to:  # interrupted
                model.rng.bit_generator.state = unapplied

    def steps_to_record(self, end: int, start: int | None = None) -> int:
        """Steps from ``start`` (default: now) to the next step that records (a multiple of
        ``run.record_interval``), or to ``end`` if that comes first."""
        start = self.model.steps if start is None else start
        record = self.model.config.run.record_interval
        return min(start + record - start % record, end) - start

    def fused_call(self, steps: int, start: int | None = None) -> FusedCall:
        """What a :func:`~p2pllm_abm.dynamics.run_steps` call of up to ``steps`` steps after step
        ``start`` (default: now) needs besides the state and environment: each reallocation's
        candidates drawn beforehand (as the reallocation phase draws them), padded to one shape per
        model (at most one event per period), so that the call compiles once. The share weights
        are the table's now: in a :attr:`fusable` run costs do not depend on the stage, so the moves
        before ``start`` leave them."""
        model = self.model
        alloc, peers = model.config.allocation, model.peers
        start = model.steps if start is None else start
        events = [step for step in range(start + 1, start + steps + 1) if alloc.enabled and step % alloc.period == 0]
        reallocation, drawn_from, candidates = None, model.rng.bit_generator.state, []
        if alloc.enabled:
            candidates = [move_candidates(peers.alive, alloc.move_fraction, model.rng) for _ in events]
            most = model.config.run.record_interval // alloc.period + 1
            movers = int(np.ceil(alloc.move_fraction * peers.alive.sum()))  # move_candidates' count
            padded = np.full((padded_size(most), padded_size(movers)), -1)
            for row, chosen in zip(padded, candidates):
                row[: len(chosen)] = chosen
            reallocation = device_scalars(Reallocation(jnp.asarray(share_weight(peers.cost, alloc.reading)),
                                                       jnp.asarray(padded), float(alloc.hysteresis), alloc.period))
        return FusedCall(steps, events, candidates, reallocation, drawn_from)

    def finish_fused_call(self, call: FusedCall, state: MarketState, done: jax.Array, after: jax.Array,
                          finite: jax.Array | None = None) -> int:
        """Take the results of ``call``'s :func:`~p2pllm_abm.dynamics.run_steps` (the final state, the
        steps done and each event's turns): apply the moves, and when the call stopped early rewind the
        generator to the candidates actually used. A non-finite result is replayed step by step, which
        names the step and peer. Returns the steps done."""
        model = self.model
        alloc, peers = model.config.allocation, model.peers
        if not bool(finite_jit(state) if finite is None else finite):
            model.rng.bit_generator.state = call.drawn_from
            self.run_chunked(model.steps + call.steps, tqdm(disable=True))
            self.await_ticks()
            return call.steps
        done = int(done)
        executed = [step for step in call.events if step <= model.steps + done]
        if len(executed) < len(call.events):  # stopped early: draw again only the candidates used
            model.rng.bit_generator.state = call.drawn_from
            for _ in executed:
                move_candidates(peers.alive, alloc.move_fraction, model.rng)
        after = np.asarray(after)
        for event, step in enumerate(executed):
            model.reallocation.apply(turns_to_moves(call.candidates[event], peers.stage, after[event]), step)
        self.state = state
        self.sync_peers()
        model.steps += done
        return done

    def run_chunked(self, end: int, bar: tqdm) -> None:
        """:meth:`run`'s loop when not :attr:`fusable`: fused ticks up to each event, then the event's step."""
        model = self.model
        while model.steps < end:
            ticks = self.steps_to_next_event(end)
            if ticks > 1 and model.ledger is not None:
                done = self.ledger_chunk(ticks - 1)
                bar.update(done)
                if done < ticks - 1:  # a peer left: the market changed mid-chunk
                    continue
            elif ticks > 1:
                self.market_ticks(ticks - 1, first_step=model.steps + 1)
                model.steps += ticks - 1
            model.step()
            bar.update(ticks if model.ledger is None else 1)

    def steps_to_next_event(self, end: int) -> int:
        """Steps until (and including) the next one that reallocates or records, or ``end``."""
        model = self.model
        cfg, peers, steps = model.config, model.peers, model.steps
        if model.ledger is not None and cfg.ledger.registry_view == "confirmed" or model.membership.dynamic:
            return 1  # every tick reads the registry the previous step's blocks left, or peers come and go
        periods = [cfg.run.record_interval]
        if cfg.allocation.enabled:
            periods.append(cfg.allocation.period)
        next_event = min(steps + p - steps % p for p in periods)
        down = peers.down_until[peers.present & (peers.down_until > steps)]
        if len(down):  # a reloading peer comes back at the start of that step
            next_event = min(next_event, int(down.min()))
        return min(next_event, end) - steps
