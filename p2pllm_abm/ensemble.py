"""Ensembles: many runs of one model shape in one compiled call.

Researchers mostly run many small replicates, and sweeps of the market's scalars (alpha, eta, T,
demand, price floor) over one network shape. An :class:`Ensemble` holds such runs as members:

- ``replicates=R``: member ``r`` is the run with ``seed + r``;
- ``ensemble={"market.alpha": [0.3, 0.5], ...}``: every point of the grid (the product of the lists,
  in order), each with its ``R`` replicates.

Between two records every member's steps (requests, prices, eq. 7-8 reallocation; paper section
5.1) run in one vmapped call (:func:`~p2pllm_abm.dynamics.run_ensemble_steps`); each member then
records as a single run does. A member's stage blocks are as wide as the ensemble's widest, which
changes nothing: its random draws do not depend on the width (one uniform per client and stage,
:func:`~p2pllm_abm.dynamics.stage_choices`), and the padding adds exact zeros. Member ``k`` therefore
equals ``P2PLLMModel(configs[k])`` run on its own, up to the order in which XLA's batched
reductions add (``tests/test_ensemble.py`` states the tolerance).

Members whose runs need the host between steps (ledger, churn, failures, adversaries; see
:attr:`~p2pllm_abm.model.P2PLLMModel.fusable`) run one after another, with the same outputs.
Settings that change the compiled shapes (peers, stages, clients) are not ensemble parameters:
sweep them with a Hydra multirun.

>>> ensemble = Ensemble(load_config("paper_table1"), replicates=8, ensemble={"market.alpha": [0.3, 0.5]})
>>> ensemble.run(1000)
>>> ensemble.metrics_frame()  # replicate and market.alpha columns, one block per member
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import Config, ConfigError, ensemble_grid, grid_configs, grid_points, validate
from .dynamics import MarketState, run_ensemble_steps
from .metrics import metric_rows, peak_memory_mb, record_rows, summary, write_outputs
from .engine import FusedCall
from .model import P2PLLMModel
from .runtime import long_lived_objects_frozen


def member_labels(config: Config) -> list[dict[str, Any]]:
    """Each member's labels, in member order: its point of the ``run.ensemble`` grid (by dotted
    name) and its ``replicate`` (the seed offset), replicates innermost."""
    return [{**point, "replicate": r} for point in grid_points(config) for r in range(config.run.replicates)]


def member_configs(config: Config) -> list[Config]:
    """The members' configs, in :func:`member_labels`' order: each grid point set, then seeds
    ``config.seed + replicate``, with no replicates or ensemble of their own."""
    points = grid_configs(dataclasses.replace(config, run=dataclasses.replace(config.run, replicates=1)))
    return [dataclasses.replace(point, seed=config.seed + r) for point in points for r in range(config.run.replicates)]


class Ensemble:
    """Runs that share one compiled shape, advanced together (see the module's docstring).

    ``replicates`` and ``ensemble`` default to the config's ``run.replicates`` and ``run.ensemble``."""

    def __init__(self, config: Config, replicates: int | None = None,
                 ensemble: Mapping[str, Sequence[Any]] | None = None) -> None:
        run = dataclasses.replace(config.run, replicates=config.run.replicates if replicates is None else replicates,
                                  ensemble=config.run.ensemble if ensemble is None else dict(ensemble))
        config = validate(dataclasses.replace(config, run=run))
        self._start(config, member_labels(config), member_configs(config))

    @classmethod
    def of(cls, configs: Sequence[Config], labels: Sequence[Mapping[str, Any]]) -> Ensemble:
        """An ensemble of members given one by one, each config with its labels (for example the
        points of a sensitivity design). They must share the compiled shapes and the record interval."""
        ensemble = cls.__new__(cls)
        ensemble._start(configs[0], [dict(member) for member in labels], list(configs))
        return ensemble

    def _start(self, config: Config, labels: list[dict[str, Any]], configs: list[Config]) -> None:
        self.config, self.labels = config, labels
        intervals = {member.run.record_interval for member in configs}
        if len(intervals) > 1:
            raise ConfigError("run.record_interval", sorted(intervals), "one record interval for every member")
        self.models = [P2PLLMModel(member) for member in configs]
        self._metric_pieces: list[pd.DataFrame] = []  #: metrics rows built so far (see metrics_frame)
        self._records_read = [0] * len(self.models)  #: each member's records in them
        #: whether the members run in one vmapped call (no host phases), else one after another
        self.fused = all(model.engine.fusable for model in self.models)
        if self.fused:
            self._check_shapes()

    @property
    def steps(self) -> int:
        """Steps every member has done."""
        return min(model.steps for model in self.models)

    def run(self, steps: int, progress: bool = False) -> None:
        """Advance every member ``steps`` steps (one vmapped call per record when :attr:`fused`),
        record the last step, and show a progress bar when ``progress``."""
        if steps < 0:
            raise ValueError(f"steps = {steps} is invalid: allowed steps >= 0")
        if not self.fused:
            for model in tqdm(self.models, disable=not progress, unit="member", desc="p2pllm-sim ensemble"):
                model.run(steps)
            return
        end = self.steps + steps
        recorded: list[tuple[P2PLLMModel, MarketState]] = []  # members' records whose host part is still to take
        with long_lived_objects_frozen(), \
                tqdm(total=steps, disable=not progress, unit="step", desc="p2pllm-sim ensemble") as bar:
            while self.steps < end:
                before = self.steps
                calls, results = self._dispatch([model.engine.steps_to_record(end) for model in self.models])
                for model, state in recorded:  # while the steps run
                    model.recorder.finish(state)
                self._finish(calls, *results)
                recorded = [(model, model.recorder.start()) for model in self.models if model.recorder.due()]
                bar.update(self.steps - before)
        for model, state in recorded:
            model.recorder.finish(state)
        for model in self.models:
            model.recorder.record_if_due(last=True)

    def _dispatch(self, steps: list[int]) -> tuple[list[FusedCall], tuple[MarketState, jax.Array, jax.Array]]:
        """Up to ``steps[k]`` steps of member ``k``, all in one :func:`~p2pllm_abm.dynamics.run_ensemble_steps`
        call over blocks of one width (the members' widest), dispatched: each member's call and the
        call's (stacked) results, for :meth:`_finish`."""
        self._share_block_width()
        calls = [model.engine.fused_call(n) for model, n in zip(self.models, steps)]
        return calls, run_ensemble_steps(
            stack([model.engine.state for model in self.models]), stack([model.engine.environment for model in self.models]),
            jnp.asarray(steps), jnp.asarray([model.steps for model in self.models]),
            stack([call.reallocation for call in calls]), **self.models[0].engine.tick_options())

    def _finish(self, calls: list[FusedCall], state: MarketState, done: jax.Array, after: jax.Array) -> None:
        """Each member takes its part of a :meth:`_dispatch` call's results."""
        done, after = np.asarray(done), np.asarray(after)
        for model, call, member, n, turns in zip(self.models, calls, unstack(state), done, after):
            model.engine.finish_fused_call(call, member, n, turns)

    def _share_block_width(self) -> None:
        """Widen every member's stage blocks to the widest member's (one compiled shape)."""
        width = max(model.engine.block_width for model in self.models)
        for model in self.models:
            model.engine.widen_blocks(width)

    def _check_shapes(self) -> None:
        """Refuse members whose compiled inputs differ in kind or shape (they cannot share one call),
        naming the ensemble parameters."""
        self._share_block_width()

        def signature(model: P2PLLMModel) -> Any:
            inputs = (model.engine.state, model.engine.environment, model.engine.fused_call(0).reallocation)
            return (jax.tree.structure(inputs), [np.shape(leaf) for leaf in jax.tree.leaves(inputs)],
                    model.engine.tick_options())

        first = signature(self.models[0])
        for labels, model in zip(self.labels, self.models):
            if signature(model) != first:
                varied = {name: value for name, value in labels.items() if name != "replicate"}
                raise ConfigError("run.ensemble", varied, "parameters that leave the compiled shapes and options "
                                  "alone (market scalars such as alpha, eta, temperature, demand, price_floor); "
                                  "sweep the others with a Hydra multirun")

    def _frame(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """Members' frames, one after another, each with its labels as leading columns."""
        labelled = [frame.assign(**labels)[[*labels, *frame.columns]] for labels, frame in zip(self.labels, frames)]
        return pd.concat(labelled, ignore_index=True)

    def metrics_frame(self) -> pd.DataFrame:
        """Every member's :meth:`~p2pllm_abm.model.P2PLLMModel.metrics_frame` with its labels
        (``replicate`` and the ensemble parameters), one member after another. The rows of records
        not read before are built in one call for all members (a job rewrites this frame as it goes)."""
        if any(model.recorder.metric_rows for model in self.models):  # ledger or security rows: member by member
            return self._frame([model.metrics_frame() for model in self.models])
        member, steps, stages, classes = [], [], [], []
        for k, (model, done) in enumerate(zip(self.models, self._records_read)):
            for step, stage, request_class in model.recorder.records[done:]:
                member.append(k), steps.append(step), stages.append(stage), classes.append(request_class)
        if steps:
            rows = metric_rows(steps, stages, classes)  # stage rows then class rows, in (member, record) order
            counts = record_rows(stages) + record_rows(classes)
            self._metric_pieces.append(rows.assign(member=np.repeat(np.concatenate([member, member]), counts)))
            self._records_read = [len(model.recorder.records) for model in self.models]
        rows = pd.concat(self._metric_pieces, ignore_index=True).sort_values(["member", "step"], kind="stable")
        labels = pd.DataFrame(self.labels).iloc[rows["member"].to_numpy()].reset_index(drop=True)
        return pd.concat([labels, rows.drop(columns="member").reset_index(drop=True)], axis=1)

    def peers_frame(self) -> pd.DataFrame:
        """Every member's peers frame with its labels."""
        return self._frame([model.peers_frame() for model in self.models])

    def events_frame(self) -> pd.DataFrame:
        """Every member's events frame with its labels."""
        return self._frame([model.events_frame() for model in self.models])

    def final_table(self) -> pd.DataFrame:
        """One row per member: its labels, and per stage its final peers, mean price and relative
        Nash gap (what ``p2pllm-sim`` prints for an ensemble)."""
        rows = []
        for labels, model in zip(self.labels, self.models):
            stats = model.recorder.stage_stats
            rows.append({**labels, **{f"{name} {s + 1}": value for name, column in
                                      (("peers", "peers"), ("price", "mean_price"), ("gap", "relative_nash_gap"))
                                      for s, value in enumerate(stats[column].tolist())}})
        return pd.DataFrame(rows)

    def write_outputs(self, outdir: Path, wall_time_s: float) -> dict[str, Path]:
        """Write the run directory of an ensemble job: ``metrics.parquet``, ``peers.parquet``,
        ``events.parquet`` (and with the ledger on ``ledger.parquet``) with the members' labels as
        columns (:meth:`metrics_frame`), and ``summary.json`` holding ``members``, each member's
        :func:`~p2pllm_abm.metrics.summary` with its labels (its wall time is the whole job's)."""
        members = [{"labels": labels, **summary(model, wall_time_s)} for labels, model in zip(self.labels, self.models)]
        record = {"replicates": self.config.run.replicates, "ensemble": ensemble_grid(self.config),
                  "fused": self.fused, "wall_time_s": wall_time_s, "peak_memory_mb": peak_memory_mb(),
                  "members": members}
        ledger = self.models[0].ledger is not None
        journal = self._frame([model.ledger.ledger.journal_frame() for model in self.models]) if ledger else None
        return write_outputs(self, record, outdir, journal)


def runs_ensemble(config: Config) -> bool:
    """Whether ``config`` asks for more than one run (``run.replicates > 1`` or a ``run.ensemble``)."""
    return config.run.replicates > 1 or bool(config.run.ensemble)


@jax.jit
def stack(trees: list[Any]) -> Any:
    """Pytrees of one structure stacked leaf by leaf along a new leading axis (members), in one
    compiled call."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def unstack(tree: Any) -> list[Any]:
    """:func:`stack` undone: one pytree per member, in one compiled call."""
    members = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda leaf: leaf[k], tree) for k in range(members)]
