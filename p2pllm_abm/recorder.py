"""The record phase (paper 5.1, phase 5): what one recording step measured, and the frames built
from the records.

A record has a device part (:meth:`Recorder.start`: each stage's Nash-gap certificate and welfare at
the current prices, dispatched without waiting) and a host part (:meth:`Recorder.finish`: stage,
load and request-class statistics, the reporters' columns, the DataCollector's rows), so that an
engine running calls back to back takes the host part while the device computes. Records keep
arrays; the tidy frames (:meth:`Recorder.metrics_frame`, :attr:`Recorder.stage_stats`, ...) are built
from them when read, not per record. Outputs read :class:`Record`\\ s and the recorder, not the
model's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
import pandas as pd

from .dynamics import MarketState, reset_window
from .runtime import deferred_interrupt
from .metrics import (Columns, RunSnapshot, allocation_status, ledger_metric_rows, load_statistics, metric_rows,
                      reported_columns, stage_statistics, statistics_frame)
from .welfare import record_measures, welfare_summary

if TYPE_CHECKING:
    from .model import P2PLLMModel

#: a record's device part in one call (:func:`~p2pllm_abm.welfare.record_measures`)
record_measures_jit = jax.jit(record_measures, static_argnames=("n_stages", "with_welfare"))


class Record(NamedTuple):
    """What one recording step measured."""

    step: int
    stage: Columns  #: per-stage statistics (:data:`~p2pllm_abm.metrics.STAGE_METRICS`)
    request_class: Columns  #: per-request-class statistics (:data:`~p2pllm_abm.metrics.CLASS_METRICS`)


class Recorder:
    """Phase 5 of a model: records every ``run.record_interval`` steps (and a run's last step), and
    the frames of all records so far."""

    def __init__(self, model: P2PLLMModel) -> None:
        self.model = model
        self.records: list[Record] = []
        self.metric_rows: list[pd.DataFrame] = []  #: the ledger's and security's metrics rows
        self.recorded_step: int | None = None  #: the step last recorded
        self.certificate = None  #: the last record's Nash-gap certificate (p2pllm_abm.equilibrium.NashGap)
        self.welfare = None  #: the last record's per-stage welfare (p2pllm_abm.welfare; None at alpha = 0)
        self.outcomes: np.ndarray | None = None  #: cumulative requests per outcome (p2pllm_abm.load.OUTCOMES)
        self.reported: dict[str, Any] = {}  #: what the model reporters read
        self._rows: tuple[int, pd.DataFrame | None] = (0, None)  #: see rows
        self._last: tuple[int, tuple[pd.DataFrame, pd.DataFrame] | None] = (0, None)  #: see last_frames

    def due(self, last: bool = False) -> bool:
        """Whether the model's current step is to be recorded now: a multiple of
        ``run.record_interval`` (with ``last``, any step: a run's last), not recorded yet."""
        steps = self.model.steps
        return self.recorded_step != steps and (last or steps % self.model.config.run.record_interval == 0)

    def record(self) -> None:
        """Record the current step (device part, then host part)."""
        self.finish(self.start())

    def record_if_due(self, last: bool = False) -> None:
        """Record the current step when it is :meth:`due`."""
        if self.due(last):
            self.record()

    def start(self, measures: tuple | None = None) -> MarketState:
        """A record's device part, dispatched without waiting for it: the Nash certificate and the
        welfare at the current prices (unless ``measures`` has them: a compiled run measured them),
        and the state the run goes on from (the record's windows emptied). Returns the recorded
        state, for :meth:`finish`."""
        model, engine = self.model, self.model.engine
        engine.await_ticks()
        if measures is None:
            env = engine.environment
            measures = record_measures_jit(engine.state.price, env.cost, env.stage, env.alive, env.params,
                                      n_stages=model.peers.n_stages, with_welfare=model.market_params.alpha > 0)
        self.certificate, self.welfare = measures
        state = engine.state
        engine.state = reset_window(state)
        return state

    def finish(self, state: MarketState) -> None:
        """A record's host part, from the recorded ``state`` (:meth:`start`): the stage, load and
        request-class statistics, the reporters' columns and the DataCollector's rows. The model must
        still be at the recorded step."""
        model = self.model
        peers, env = model.peers, model.engine.environment
        stage_load, class_load = load_statistics(peers, state, env.capacity is not None, model.request_classes)
        stage_stats = {**stage_statistics(peers, np.asarray(state.tick_revenue),
                                          np.asarray(state.tick_expected_revenue), self.certificate, self.welfare),
                       **stage_load}
        class_stats = {**model.request_classes.statistics(np.asarray(state.class_requests),
                                                          np.asarray(state.class_price), np.asarray(state.class_time)),
                       **class_load}
        if env.capacity is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                peers.utilisation = np.asarray(state.window_served) / np.asarray(state.window_capacity)
        self.outcomes = np.asarray(state.outcomes).copy()
        self.reported = reported_columns(stage_stats, class_stats)
        if model.ledger is not None:
            peers.update_ledger_columns(model.ledger.peer_columns())
        with deferred_interrupt():  # a record is in every output or in none (Ctrl-C waits for it)
            self.records.append(Record(model.steps, stage_stats, class_stats))
            if model.ledger is not None:
                self.metric_rows.extend(ledger_metric_rows(model.steps, model.ledger))
            if model.security is not None:
                self.metric_rows.append(model.security.behaviour_rows(model.steps, peers))
            model.datacollector.collect(model)
            self.recorded_step = model.steps

    # -- frames ---------------------------------------------------------------------------------
    def metrics_frame(self) -> pd.DataFrame:
        """Tidy metrics: one row per recorded step and stage (``scope = "stage"``) and per recorded
        step and request class (``scope = "request_class"``), see :mod:`p2pllm_abm.metrics`."""
        rows = self.rows()
        if not self.metric_rows:
            return rows.copy()
        frame = pd.concat([rows, *self.metric_rows], ignore_index=True)
        return frame.sort_values("step", kind="stable", ignore_index=True)  # each step: stage, class, then the rest

    def rows(self) -> pd.DataFrame:
        """The stage and request-class rows of every record so far, by step: built once per record
        (a run's outputs are rewritten as it goes, and an ensemble's for every member)."""
        done, frame = self._rows
        if done < len(self.records):
            steps, stages, classes = zip(*self.records[done:])
            new = metric_rows(steps, stages, classes).sort_values("step", kind="stable", ignore_index=True)
            frame = new if frame is None else pd.concat([frame, new], ignore_index=True)
            self._rows = (len(self.records), frame)
        return frame

    def last_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The last record's stage and request-class statistics as frames, built when first read."""
        built, frames = self._last
        if built != len(self.records):
            record = self.records[-1]
            frames = (statistics_frame([record.stage]), statistics_frame([record.request_class]))
            self._last = (len(self.records), frames)
        return frames

    @property
    def stage_stats(self) -> pd.DataFrame:
        """The last record's per-stage statistics: ``stage`` and :data:`~p2pllm_abm.metrics.STAGE_METRICS`."""
        return self.last_frames()[0]

    @property
    def class_stats(self) -> pd.DataFrame:
        """The last record's per-request-class statistics: ``request_class`` and :data:`~p2pllm_abm.metrics.CLASS_METRICS`."""
        return self.last_frames()[1]

    def snapshot(self) -> RunSnapshot:
        """What summary.json reads, as of the last record (:func:`~p2pllm_abm.metrics.summary`)."""
        model = self.model
        peers = model.peers
        layers = {"ledger": model.ledger.summary()} if model.ledger is not None else {}
        if model.security is not None:
            layers["security"] = model.security.summary()
        welfare = (welfare_summary(self.welfare, model.market_params) if self.welfare is not None else
                   {"note": "market.alpha = 0: clients ignore prices, so surplus has no money scale"})
        return RunSnapshot(
            config=model.config, steps=model.steps, stage_stats=self.stage_stats, class_stats=self.class_stats,
            outcomes=self.outcomes,
            churn={**model.membership.counts, "peers_present": int(peers.present.sum()),
                   "peers_alive": int(peers.alive.sum()), "rows": len(peers)},
            allocation=allocation_status(peers, model.config.allocation.reading), welfare=welfare,
            security_layers=layers)
