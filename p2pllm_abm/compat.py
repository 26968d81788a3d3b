"""The names :class:`~p2pllm_abm.model.P2PLLMModel` answered before its parts moved out: each one
delegates to the part that now owns it (:class:`~p2pllm_abm.phases.Membership`,
:class:`~p2pllm_abm.phases.Reallocation`, :class:`~p2pllm_abm.phases.Contracts`,
:class:`~p2pllm_abm.engine.Engine`, :class:`~p2pllm_abm.recorder.Recorder`).

New code reads the parts (``model.engine.environment``, ``model.recorder.stage_stats``,
``model.membership.counts``); these keep scripts written against the earlier model working.
"""

from __future__ import annotations

from .engine import FusedCall


def delegated(part: str, name: str, doc: str) -> property:
    """A read-only attribute answered by the model's ``part`` (its attribute ``name``)."""
    return property(lambda model: getattr(getattr(model, part), name), doc=doc)


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

    dynamic = delegated("membership", "dynamic",
                        "Whether peers join, leave or fail (then every step runs the membership phase).")
    reloading = delegated("membership", "reloading",
                          "Peers reloading after a move (down, but counted by Petals' block selection as joining).")
    failing = delegated("membership", "failing", "Peers failing mid-request this step (None: failures off).")
    switch_fees = delegated("membership", "switch_fees", "Cumulative ``allocation.switch_fee`` paid per row.")
    churn_counts = delegated("membership", "counts",
                             "Joins, leaves, failures, recoveries, moves and refused joins so far, by kind.")
    moves = delegated("reallocation", "moves", "Peers moved by reallocation so far.")
    certificate = delegated("recorder", "certificate",
                            "The last record's Nash-gap certificate (:class:`~p2pllm_abm.equilibrium.NashGap`).")
    welfare = delegated("recorder", "welfare",
                        "The last record's per-stage welfare (:mod:`p2pllm_abm.welfare`; None at alpha = 0).")
    outcomes = delegated("recorder", "outcomes",
                         "Cumulative requests per outcome (:data:`p2pllm_abm.load.OUTCOMES`) as of the last record.")
    reported = delegated("recorder", "reported",
                         "What the DataCollector's model reporters read (the last record's columns).")
    fusable = delegated("engine", "fusable",
                        "Whether :meth:`run` compiles everything between two records into one call "
                        "(:attr:`Engine.fusable`).")
    environment = delegated("engine", "environment", "What the jitted ticks read (:attr:`Engine.environment`).")
    stage_stats = delegated("recorder", "stage_stats",
                            "The last record's per-stage statistics (:attr:`Recorder.stage_stats`).")
    class_stats = delegated("recorder", "class_stats",
                            "The last record's per-request-class statistics (:attr:`Recorder.class_stats`).")

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
