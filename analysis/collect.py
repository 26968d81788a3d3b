"""Many run directories into tidy tables.

    python -m analysis collect multirun/sweep_alpha      # writes runs.parquet, steps.parquet, collection.json

``runs.parquet``: one row per run directory: ``run`` (its name), ``status`` (complete, failed,
partial), every swept parameter (from ``.hydra/overrides.yaml``, typed), the run's whole config
flattened to dotted columns (``market.alpha``, ...), and summary figures (``steps_per_s``,
``peak_memory_mb``, ``final_mean_price``, ``final_nash_gap``, ``converged_step``, ..., and for a
ledger run its summary block as ``ledger_*`` columns).
``steps.parquet``: one row per run x recorded step x stage, the stage rows of ``metrics.parquet``
with ``run`` and the swept parameters. Failed and partial runs are listed, never fatal.

An ensemble job (``run.replicates``, ``run.ensemble``; :mod:`p2pllm_abm.ensemble`) reads as its
members, one row each, like separate runs: same ``run`` name, with ``replicate`` and the ensemble's
parameters as columns (its config columns are the member's: seed, ``market.alpha``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from p2pllm_abm.metrics import NON_FINITE_REASONS, convergence_step, label_columns, stage_rows, write_parquet
from p2pllm_abm.paths import write_text_atomic
from p2pllm_abm.sweep import COMPLETE, STATUS, outputs_intact, read_marker

#: overrides that do not change a run's results, and an ensemble job's own (its rows carry each
#: member's labels instead: ``replicate`` and the ensemble's parameters)
IGNORED_OVERRIDES = ("run.progress", "run.resume", "sweep", "run.replicates", "run.ensemble")


@dataclass
class Collection:
    """The tables of a sweep, the parameters it swept, and what could not be read."""

    runs: pd.DataFrame
    steps: pd.DataFrame
    swept: list[str]  #: overridden parameters that take more than one value across the runs
    problems: list[str] = field(default_factory=list)
    source: Path | None = None

    @property
    def complete_runs(self) -> pd.DataFrame:
        """The rows of :attr:`runs` whose run finished."""
        return self.runs[self.runs["status"] == "complete"]

    def write(self, out_dir: Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("runs.parquet", "steps.parquet", "collection.json")}
        write_parquet(self.runs, paths["runs.parquet"])
        write_parquet(self.steps, paths["steps.parquet"])
        write_text_atomic(paths["collection.json"], json.dumps(
            {"source": str(self.source), "swept": self.swept, "problems": self.problems}, indent=2))
        return paths

    @classmethod
    def read(cls, directory: Path) -> Collection:
        """Tables written by :meth:`write`."""
        directory = Path(directory)
        meta = json.loads((directory / "collection.json").read_text())
        return cls(pd.read_parquet(directory / "runs.parquet"), pd.read_parquet(directory / "steps.parquet"),
                   meta["swept"], meta["problems"], Path(meta["source"]) if meta["source"] else None)


def run_directories(multirun_dir: Path) -> list[Path]:
    """Every job directory (one holding ``.hydra/overrides.yaml``) at or below ``multirun_dir``."""
    return sorted(path.parent.parent for path in Path(multirun_dir).rglob(".hydra/overrides.yaml"))


def parse_overrides(run_dir: Path) -> dict[str, Any]:
    """``key=value`` overrides of a job, values typed by YAML, the ones in :data:`IGNORED_OVERRIDES`
    and Hydra's own (``hydra.*``, ``hydra/...``) left out."""
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) and "=" in item for item in overrides):
        raise ValueError(f"{run_dir / '.hydra' / 'overrides.yaml'} is not a list of key=value overrides")
    parsed = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in IGNORED_OVERRIDES or key.startswith("hydra"):
            continue
        parsed[key] = yaml.safe_load(value)
        if isinstance(parsed[key], (list, dict)):
            parsed[key] = json.dumps(parsed[key])
    return parsed


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested dict; lists become JSON strings (parquet needs one type per column)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


#: what summary.json's nulls stood for, by the reason it records for them (metrics.strict_json)
NON_FINITE_VALUES = {NON_FINITE_REASONS[kind]: float(kind) for kind in NON_FINITE_REASONS}


def summary_numbers(values: list[Any], path: str, reasons: dict[str, str]) -> np.ndarray:
    """A list of numbers from summary.json at ``path``, each null back to the non-finite value its
    reason in ``reasons`` (summary.json's ``non_finite``) names: an unbounded Nash gap is inf again."""
    return np.array([NON_FINITE_VALUES.get(reasons.get(f"{path}[{k}]"), np.nan) if value is None else value
                     for k, value in enumerate(values)], dtype=float)


def run_record(run_dir: Path, summary: dict[str, Any], stages: pd.DataFrame, reasons: dict[str, str] | None = None,
               prefix: str = "") -> dict[str, Any]:
    """Summary figures of one finished run (``summary``: its summary.json, or an ensemble member's at
    ``prefix`` in it, whose nulls ``reasons`` explains)."""
    reasons = summary.get("non_finite", {}) if reasons is None else reasons

    def final(key: str) -> np.ndarray:
        return summary_numbers(summary["final"][key], f"{prefix}final.{key}", reasons)

    return {
        **flatten(summary["config"]),
        "steps": summary["steps"],
        "wall_time_s": summary["wall_time_s"],
        "steps_per_s": summary["steps_per_s"],
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "stage_size": summary["config"]["network"]["peers"] / summary["config"]["network"]["stages"],
        "final_mean_price": float(np.mean(final("mean_price_per_stage"))),
        "final_nash_gap": float(np.max(final("nash_gap_per_stage"))),
        "final_relative_nash_gap": float(np.max(final("relative_nash_gap_per_stage"))),
        "converged_step": convergence_step(stages),
        "allocation_efficient": summary["allocation"].get("efficient"),
        # a ledger run's summary block, scalar figures only (ledger_conserved, ledger_onchain_tx_per_request, ...)
        **{f"ledger_{key}": value for key, value in summary.get("ledger", {}).items()
           if isinstance(value, (bool, int, float, str)) or value is None},
    }


def collect(multirun_dir: Path) -> Collection:
    """Read every run under ``multirun_dir`` into a :class:`Collection`. A run whose files do not
    read is listed with its status (``failed`` when its status says so, ``partial`` when it has no
    readable outputs, ``broken`` when its overrides do not read) and the reason; none is fatal, and
    a run is ``complete`` only when its marker reads and every output it lists is intact."""
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise FileNotFoundError(f"multirun_dir = {str(multirun_dir)!r} is not a directory: allowed a "
                                "p2pllm-sim multirun (or run) directory")
    rows, step_frames, problems, swept = [], [], [], {}
    for run_dir in run_directories(multirun_dir):
        name = str(run_dir.relative_to(multirun_dir)) if run_dir != multirun_dir else run_dir.name
        try:
            overrides = parse_overrides(run_dir)
        except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError) as error:
            problems.append(f"{name}: broken (.hydra/overrides.yaml does not read: {type(error).__name__}: {error})")
            rows.append({"run": name, "status": "broken", "error": f"overrides do not read: {error}"})
            continue
        swept.update(dict.fromkeys(overrides))
        row = {"run": name, **overrides}
        try:
            summary = _read(run_dir, "summary.json", lambda path: json.loads(path.read_text()))
            if not isinstance(summary, dict):
                raise ValueError(f"summary.json holds {type(summary).__name__}, not an object")
            stages = _read(run_dir, "metrics.parquet", lambda path: stage_rows(pd.read_parquet(path)))
            _read(run_dir, "peers.parquet", pq.ParquetFile)  # its footer must read (a truncated file does not)
            try:
                reasons = summary.get("non_finite", {})
                members = [(labels, run_record(run_dir, member, member_stages, reasons, prefix))
                           for labels, member, member_stages, prefix in ensemble_members(summary, stages)]
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"summary.json lacks what a finished run writes ({type(error).__name__}: "
                                 f"{error})") from None
        except (OSError, ValueError) as error:
            status, message = _status(run_dir)
            problems.append(f"{name}: {status}{f' ({message})' if message else ''}; no readable outputs "
                            f"({type(error).__name__}: {error})")
            rows.append({**row, "status": status, "error": message})
            continue
        marker, why = read_marker(run_dir)
        intact, damage = outputs_intact(run_dir, marker["outputs"]) if marker else (False, "")
        if not intact:
            problems.append(f"{name}: partial ({damage or why or f'no {COMPLETE}: interrupted or still running'})")
        for labels, record in members:
            swept.update(dict.fromkeys(labels))
            rows.append({**row, **labels, "status": "complete" if intact else "partial",
                         **{k: v for k, v in record.items() if k not in overrides and k not in labels}})
        step_frames.append(stages.assign(run=name, **overrides))
    if not rows:
        raise FileNotFoundError(f"multirun_dir = {str(multirun_dir)!r} holds no run directories "
                                "(none has .hydra/overrides.yaml)")
    steps = pd.concat(step_frames, ignore_index=True) if step_frames else pd.DataFrame()
    runs = pd.DataFrame(rows)
    varied = [name for name in swept if runs[name].nunique(dropna=False) > 1]
    return Collection(runs, steps, varied, problems, multirun_dir)


def ensemble_members(summary: dict[str, Any],
                     stages: pd.DataFrame) -> list[tuple[dict[str, Any], dict, pd.DataFrame, str]]:
    """``(labels, summary, stage rows, path)`` of each member of a run: a single run is one member
    without labels at path ``""``; an ensemble job's members are its summary's ``members`` (path
    ``members[k].``), and their rows in ``stages`` are the ones with their labels."""
    if "members" not in summary:
        return [({}, summary, stages, "")]
    members = []
    for k, member in enumerate(summary["members"]):
        labels = member["labels"]
        mine = np.logical_and.reduce([stages[name] == value for name, value in labels.items()])
        members.append((labels, member, stages[mine], f"members[{k}]."))
    return members


def single_run_summary(run_dir: Path, reader: str) -> dict[str, Any]:
    """The summary.json of a directory holding one run; an ensemble job's directory is refused
    (``reader`` names what needs one run)."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if "members" in summary:
        raise ValueError(f"run_dir = {str(run_dir)!r} holds an ensemble job ({len(summary['members'])} members): "
                         f"allowed the directory of a single run for {reader} (run one member on its own: its "
                         "seed and parameters are in summary.json's members)")
    return summary


def first_member(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of an ensemble job's frame (its members' labels lead, before ``step``) that belong
    to its first member; a single run's frame as it is."""
    labels = label_columns(frame)
    if not labels:
        return frame
    first = frame[labels].iloc[0]
    return frame[np.logical_and.reduce([frame[name] == first[name] for name in labels])].drop(columns=labels)


def _read(run_dir: Path, name: str, reader: Callable[[Path], Any]) -> Any:
    """``reader(run_dir / name)``; a file that does not read is a ``ValueError`` naming it."""
    try:
        return reader(run_dir / name)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        raise ValueError(f"{name} does not read ({type(error).__name__}: {error})") from None


def _status(run_dir: Path) -> tuple[str, str | None]:
    """A run without outputs: ``failed`` with its error when its status says so, else ``partial``
    (with the reason when the status file itself does not read)."""
    try:
        record = json.loads((run_dir / STATUS).read_text()) if (run_dir / STATUS).is_file() else {}
        if not isinstance(record, dict):
            raise ValueError(f"holds {type(record).__name__}, not an object")
    except (OSError, ValueError) as error:
        return "partial", f"{STATUS} does not read: {error}"
    return ("failed", record.get("error")) if record.get("status") == "failed" else ("partial", None)
