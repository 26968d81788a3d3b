"""The names :class:`~p2pllm_abm.model.P2PLLMModel` answered before its parts moved out: each one
delegates to the part that now owns it (:class:`~p2pllm_abm.phases.Membership`,
:class:`~p2pllm_abm.phases.Reallocation`, :class:`~p2pllm_abm.phases.Contracts`,
:class:`~p2pllm_abm.engine.Engine`, :class:`~p2pllm_abm.recorder.Recorder`).

New code reads the parts (``model.engine.environment``, ``model.recorder.stage_stats``,
``model.membership.counts``); these keep scripts written against the earlier model working.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .dynamics import Environment
from .engine import FusedCall


class DelegatedNames:
    """The earlier public attributes and methods of the model, delegated to its parts."""

    def membership_phase(self) -> None:
        """Phase 0 (:class:`~p2pllm_abm.phases.Membership`)."""
        self.membership()

    def reallocation_phase(self) -> None:
        """Phase 3 (:class:`~p2pllm_abm.phases.Reallocation`)."""
        self.reallocation()

    def contracts_phase(self) -> bool:
        """Phase 4 (:class:`~p2pllm_abm.phases.Contracts`), with the ledger on; whether peers left."""
        return self.contracts() if self.contracts.due(self.steps) else False

    def record_if_due(self, last: bool = False) -> None:
        """Record the current step when it is due (a multiple of ``run.record_interval``; with
        ``last``, any step: a run's last) and not recorded yet."""
        self.recorder.record_if_due(last)

    def record_due(self, last: bool = False) -> bool:
        """Whether :meth:`record_if_due` would record now."""
        return self.recorder.due(last)

    @property
    def dynamic(self) -> bool:
        """Whether peers join, leave or fail (then every step runs the membership phase)."""
        return self.membership.dynamic

    @property
    def reloading(self) -> np.ndarray:
        """Peers reloading after a move (down, but counted by Petals' block selection as joining)."""
        return self.membership.reloading

    @property
    def failing(self) -> np.ndarray | None:
        """Peers failing mid-request this step (None: failures off)."""
        return self.membership.failing

    @property
    def switch_fees(self) -> np.ndarray:
        """Cumulative ``allocation.switch_fee`` paid per row."""
        return self.membership.switch_fees

    @property
    def churn_counts(self) -> dict[str, int]:
        """Joins, leaves, failures, recoveries, moves and refused joins so far, by kind."""
        return self.membership.counts

    @property
    def moves(self) -> int:
        """Peers moved by reallocation so far."""
        return self.reallocation.moves

    @property
    def certificate(self):
        """The last record's Nash-gap certificate (:class:`~p2pllm_abm.equilibrium.NashGap`)."""
        return self.recorder.certificate

    @property
    def welfare(self):
        """The last record's per-stage welfare (:mod:`p2pllm_abm.welfare`; None at alpha = 0)."""
        return self.recorder.welfare

    @property
    def outcomes(self) -> np.ndarray:
        """Cumulative requests per outcome (:data:`p2pllm_abm.load.OUTCOMES`) as of the last record."""
        return self.recorder.outcomes

    @property
    def reported(self) -> dict[str, Any]:
        """What the DataCollector's model reporters read (the last record's columns)."""
        return self.recorder.reported

    @property
    def fusable(self) -> bool:
        """Whether :meth:`run` compiles everything between two records into one call (:attr:`Engine.fusable`)."""
        return self.engine.fusable

    @property
    def environment(self) -> Environment:
        """What the jitted ticks read (:attr:`Engine.environment`)."""
        return self.engine.environment

    def widen_blocks(self, width: int) -> None:
        """Lay the stage blocks out at least ``width`` wide from now on (:meth:`Engine.widen_blocks`)."""
        self.engine.widen_blocks(width)

    def steps_to_record(self, end: int, start: int | None = None) -> int:
        """Steps to the next record or ``end`` (:meth:`Engine.steps_to_record`)."""
        return self.engine.steps_to_record(end, start)

    def fused_call(self, steps: int, start: int | None = None) -> FusedCall:
        """A compiled call's host side (:meth:`Engine.fused_call`)."""
        return self.engine.fused_call(steps, start)

    def finish_fused_call(self, call: FusedCall, state, done, after, finite=None) -> int:
        """Take a compiled call's results (:meth:`Engine.finish_fused_call`); the steps done."""
        return self.engine.finish_fused_call(call, state, done, after, finite)

    @property
    def stage_stats(self) -> pd.DataFrame:
        """The last record's per-stage statistics (:attr:`Recorder.stage_stats`)."""
        return self.recorder.stage_stats

    @property
    def class_stats(self) -> pd.DataFrame:
        """The last record's per-request-class statistics (:attr:`Recorder.class_stats`)."""
        return self.recorder.class_stats
