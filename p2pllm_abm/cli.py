"""``p2pllm-sim``: the Hydra entry point.

    p2pllm-sim                                            # paper Table 1 setup
    p2pllm-sim experiment=paper_28 market.temperature=2.0 seed=7
    p2pllm-sim -m market.alpha=0.25,0.5,0.75 seed=0,1     # multirun

Each run writes metrics.parquet, peers.parquet, summary.json and PNG figures into its Hydra
output directory and prints the checkpoint table (beside the paper's numbers when the experiment
names a reference). In a multirun every job goes through :func:`p2pllm_abm.sweep.run_job`
(resume, failures recorded, closing summary).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import hydra
import matplotlib
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .compile_cache import enable_compilation_cache
from .config import (CONF_DIR, Config, ConfigError, RunConfig, check_group_choice, check_override, first_line,
                     register_schema, validate_plugins)
from .metrics import convergence_objective, reset_peak_memory, stage_rows, write_parquet, write_run_outputs
from .ensemble import Ensemble, runs_ensemble
from .model import P2PLLMModel
from .paper import checkpoint_table
from .paths import ensure_writable
from .sweep import run_job


#: a run flushes metrics.parquet about this many times (see :func:`run_experiment`)
FLUSHES = 20


def flush_segment(run: RunConfig) -> int:
    """Steps between two flushes: a multiple of ``run.record_interval``, so that running in segments
    gives the same records, bit for bit, as one ``model.run(steps)``."""
    return run.record_interval * max(1, round(run.steps / FLUSHES / run.record_interval))


def run_experiment(config: Config, outdir: Path, report: bool = True) -> P2PLLMModel | Ensemble:
    """Build the model (an :class:`~p2pllm_abm.ensemble.Ensemble` when ``run.replicates > 1`` or
    ``run.ensemble`` is set), run ``config.run.steps`` steps and write the run directory; with
    ``report``, print the checkpoint table (an ensemble: each member's final stages) and the files
    written.

    The directory must be writable before the model is built. The run goes in segments of
    :func:`flush_segment` steps, each followed by an atomic rewrite of ``metrics.parquet``, so a
    late failure (or a directory that becomes unwritable) keeps what was recorded; an interrupt
    (Ctrl-C) or an error still writes every output before it propagates."""
    outdir = Path(outdir)
    try:
        ensure_writable(outdir)
    except OSError as error:
        raise ConfigError("hydra.run.dir", str(outdir), f"a directory this process can write ({error})") from None
    enable_compilation_cache(config.run.compilation_cache)
    reset_peak_memory()
    ensemble = runs_ensemble(config)
    model = Ensemble(config) if ensemble else P2PLLMModel(config)
    started = time.perf_counter()
    try:
        with tqdm(total=config.run.steps, disable=not config.run.progress, unit="step", desc="p2pllm-sim") as bar:
            while model.steps < config.run.steps:
                steps = min(flush_segment(config.run), config.run.steps - model.steps)
                model.run(steps)
                bar.update(steps)
                write_parquet(model.metrics_frame(), outdir / "metrics.parquet")
    finally:
        try:
            wall_time_s = time.perf_counter() - started
            paths = (model.write_outputs(outdir, wall_time_s) if ensemble
                     else write_run_outputs(model, outdir, wall_time_s))
            if config.run.figures:
                from .figures import plot_stage_trajectories  # matplotlib + seaborn: 0.6 s to import
                paths.update({p.name: p for p in plot_stage_trajectories(model.metrics_frame(), outdir,
                                                                         config.report.reference)})
        except OSError as error:
            raise ConfigError("hydra.run.dir", str(outdir), f"a directory this process can write ({error}); the "
                              "outputs could not be written at the end of the run") from error
    if not report:
        return model
    if ensemble:
        print(f"\nFinal stages of the {len(model.models)} members (layers 1..m; gap: relative Nash gap), "
              f"step {model.steps}:")
        print(model.final_table().to_string(index=False))
    else:
        steps = sorted({s for s in config.report.table_steps if s <= model.steps} | {model.steps})  # the last step too
        table = checkpoint_table(model.metrics_frame(), steps, config.report.reference)
        header = "ours (paper)" if config.report.reference else "ours"
        print(f"\nNodes and average price per layer at checkpoints [{header}], seed {config.seed}:")
        print(table.to_string())
        if model.ledger is not None:
            print(ledger_report(model.ledger.summary(), config.ledger.unit))
    print(f"\nRun directory: {outdir}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return model


def ledger_report(ledger: dict, unit: int) -> str:
    """A few lines on the ledger of a finished run (summary.json's ``ledger`` block)."""
    def rate(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (f"\nLedger ({ledger['backend']}, payments={ledger['payments']}, sharding={ledger['sharding']}, "
            f"registry={ledger['registry_view']}): conserved={ledger['conserved']}, "
            f"supply {ledger['total_supply'] / unit:,.0f} price units\n"
            f"  {ledger['requests_paid']:,} requests paid; {ledger['transactions_submitted']:,} transactions sent "
            f"({rate(ledger['onchain_tx_per_request'])} per request), {ledger['transactions_failed']:,} failed\n"
            f"  confirmation latency {rate(ledger['mean_confirmation_latency_slots'], 2)} slots, settlement "
            f"{rate(ledger['mean_settlement_latency_slots'], 2)} slots; finalized up to slot {ledger['finalized_slot']} "
            f"of {ledger['slot']}; stake Gini {rate(ledger['stake_gini'])}, Nakamoto coefficient "
            f"{ledger['nakamoto_coefficient']}")


def quiet_library_logs() -> None:
    """Hydra logs at INFO; Mesa logs every step there and JAX its accelerator search."""
    for noisy in ("MESA", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def experiment_objective(config: Config, outdir: Path) -> float:
    """Run the experiment; its objective is :func:`~p2pllm_abm.metrics.convergence_objective` (an
    ensemble's: the mean over its members)."""
    model = run_experiment(config, outdir)
    members = model.models if isinstance(model, Ensemble) else [model]
    return float(np.mean([convergence_objective(stage_rows(member.metrics_frame()), config.run.steps)
                          for member in members]))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> float:
    """The Hydra app; returns the run's objective (iterations to a small Nash gap) for sweepers. A
    refused value ends a single run with :func:`refuse` (a multirun records it per job)."""
    quiet_library_logs()
    hydra_config = HydraConfig.get()
    try:
        return run_job(cfg, Path(hydra_config.runtime.output_dir), experiment_objective,
                       multirun=hydra_config.mode == RunMode.MULTIRUN)
    except ConfigError as error:
        refuse(error)


def refuse(error: ConfigError) -> NoReturn:
    """Print a refused value in one line on stderr and exit with code 2 (``HYDRA_FULL_ERROR=1``:
    raise it, with its traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"p2pllm-sim: {error}", file=sys.stderr)
    raise SystemExit(2)


def override_fields(arguments: list[str]) -> list[tuple[str, Any]]:
    """``(field, value)`` of the command line's overrides that set schema fields, values parsed as
    Hydra parses them, one pair per value of a sweep (``market.alpha=0.25,0.75``): not flags,
    not config groups (``experiment=``, ``hydra/launcher=``) and not Hydra's own settings. A
    ``+``, ``++`` or ``~`` prefix does not matter (adding an unknown field is refused like setting
    one). An argument Hydra cannot parse is a :class:`ConfigError`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()}
    candidates = [argument for argument in arguments if not argument.startswith("-") and "=" in argument]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except OverrideParseException as error:
        raise ConfigError("overrides", candidates, f"overrides Hydra can parse ({first_line(error)})") from None
    fields = []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or key in groups or override.is_delete():
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        fields.extend((key, value) for value in values)
    return fields


def check_group_choices(arguments: list[str]) -> None:
    """Refuse a config group choice on the command line (``experiment=paper28``) that names no file
    of ``conf/<group>/`` (:func:`~p2pllm_abm.config.check_group_choice`; Hydra would stop with a
    traceback)."""
    for argument in arguments:
        key, sep, value = argument.partition("=")
        group = key.lstrip("+~")
        if not argument.startswith("-") and sep and (CONF_DIR / group).is_dir() and value not in ("null", ""):
            for choice in value.split(","):  # a sweep over choices
                check_group_choice(group, choice)


def main() -> None:
    """``p2pllm-sim``: every overridden field must exist in the schema (else one line naming the
    nearest valid one, exit code 2) before Hydra composes anything; then the Hydra app."""
    matplotlib.use("Agg")  # the run's figures are files
    arguments = sys.argv[1:]
    try:
        check_group_choices(arguments)
        fields = override_fields(arguments)
        for name, value in fields:  # plug-ins first: the names they register are valid below
            if name.lstrip("+~") == "run.plugins":
                validate_plugins(value)
        for name, value in fields:
            check_override(name, value)
    except ConfigError as error:
        refuse(error)
    register_schema()
    for argument in arguments:  # Hydra creates these itself, and fails with a traceback
        key, _, value = argument.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            try:
                ensure_writable(Path(value))
            except OSError as error:
                refuse(ConfigError(key, value, f"a directory this process can write ({error})"))
    hydra_app()
