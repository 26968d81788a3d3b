"""Global sensitivity of a run's outcomes to continuous settings (paper section 5.1), with SALib.

    python -m analysis sensitivity --experiment paper_table1 --steps 500 \
        --vary market.alpha=0.2:0.8 market.eta=20:80 market.temperature=0.5:2 --method sobol --samples 64

Each point of the design (Saltelli's sequence for Sobol indices, Morris' trajectories for
elementary effects) is one run of the experiment with those values and the same seed: common random
numbers, so that the indices measure the settings, not the draws. From each run's last record come
the :data:`OUTCOMES`; SALib gives per outcome and setting the indices with 95% confidence intervals
(bootstrap). Files in ``--out``:

- ``sensitivity.csv``: ``outcome, parameter, index, value, conf`` (``conf``: half-width of the 95%
  interval); Sobol: ``S1`` (first order) and ``ST`` (total); Morris: ``mu_star`` (mean absolute
  elementary effect) and ``sigma`` (its spread: interactions or non-linearity; no interval);
- ``samples.parquet``: the design, one row per run, with its outcomes;
- ``sensitivity.png``: the indices with their intervals, one panel per outcome.

The runs go as ensembles (:mod:`p2pllm_abm.ensemble`: their steps vmapped into one compiled call
per record), a few per joblib worker (``--jobs``); each run's outcomes equal that run on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from SALib.analyze import morris as morris_analysis
from SALib.analyze import sobol as sobol_analysis
from SALib.sample import morris as morris_design
from SALib.sample import sobol as sobol_design
from tqdm.auto import tqdm

from p2pllm_abm.ensemble import Ensemble
from p2pllm_abm.config import Config, ConfigError, dotted_name, with_parameters
from p2pllm_abm.metrics import class_rows, convergence_objective, stage_rows

METHODS = ("sobol", "morris")
#: the design's runs go to each joblib worker as this many ensembles
ENSEMBLES_PER_JOB = 4
#: Morris' grid levels per setting
MORRIS_LEVELS = 4


def _final(stages: pd.DataFrame) -> pd.DataFrame:
    return stages[stages["step"] == stages["step"].max()]


def _mean_path_time(classes: pd.DataFrame) -> float:
    """The mean path time over the requests of a record's request classes (NaN without requests)."""
    requests = classes["path_requests"].to_numpy(dtype=float)
    if requests.sum() <= 0:
        return float("nan")
    return float(np.average(classes["path_time"].astype(float).fillna(0.0), weights=requests))


#: outcome -> how it is read from a finished run's metrics (stage rows, request-class rows, steps)
OUTCOMES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, int], float]] = {
    "mean_price": lambda stages, _, __: float(_final(stages)["mean_price"].mean()),  # over stages
    "relative_nash_gap": lambda stages, _, __: float(_final(stages)["relative_nash_gap"].max()),
    "convergence": lambda stages, _, steps: convergence_objective(stages, steps),  # the Optuna sweep's objective
    "consumer_surplus": lambda stages, _, __: float(_final(stages)["consumer_surplus"].astype(float).sum()),
    "social_welfare": lambda stages, _, __: float(_final(stages)["social_welfare"].astype(float).sum()),
    "hhi": lambda stages, _, __: float(_final(stages)["hhi"].astype(float).mean()),
    "path_time": lambda _, classes, __: _mean_path_time(_final(classes)),
}


def parse_ranges(specs: Sequence[str], cfg: Config) -> dict[str, tuple[float, float]]:
    """``name=low:high`` settings (dotted or Mesa-style names of float fields) as ``{dotted: (low, high)}``;
    a malformed spec, an unknown or non-float field, or ``low >= high`` is refused naming it."""
    ranges = {}
    for spec in specs:
        name, _, bounds = spec.partition("=")
        low, colon, high = bounds.partition(":")
        try:
            low_value, high_value = float(low), float(high)
        except ValueError:
            raise ConfigError("--vary", spec, "name=low:high with two numbers, e.g. market.alpha=0.2:0.8") from None
        if not colon or not low_value < high_value:
            raise ConfigError("--vary", spec, "name=low:high with low < high, e.g. market.alpha=0.2:0.8")
        field = dotted_name(name, low_value)
        section, _, leaf = field.rpartition(".")
        kind = {f.name: f.type for f in fields(getattr(cfg, section))}.get(leaf) if section else None
        if kind not in (float, "float"):
            raise ConfigError("--vary", spec, "a float field of the config (alpha, eta, temperature, demand, ...)")
        for value in (low_value, high_value):
            with_parameters(cfg, {field: value})  # refuses a value out of the field's range, naming it
        ranges[field] = (low_value, high_value)
    if not ranges:
        raise ConfigError("--vary", list(specs), "at least one name=low:high")
    return ranges


def design(method: str, ranges: dict[str, tuple[float, float]], samples: int, seed: int) -> tuple[dict, np.ndarray]:
    """SALib's problem and its design: Saltelli's ``samples * (D + 2)`` points for Sobol indices
    (first and total order), or ``samples`` Morris trajectories of ``D + 1`` points."""
    problem = {"num_vars": len(ranges), "names": list(ranges), "bounds": [list(bounds) for bounds in ranges.values()]}
    if method == "sobol":
        return problem, sobol_design.sample(problem, samples, calc_second_order=False, seed=seed)
    return problem, morris_design.sample(problem, samples, num_levels=MORRIS_LEVELS, seed=seed)


def run_outcomes(cfg: Config, points: Sequence[dict[str, float]], steps: int) -> list[dict[str, float]]:
    """The :data:`OUTCOMES` of runs of ``cfg`` with each of ``points`` set, ``steps`` steps long, as
    one :class:`~p2pllm_abm.ensemble.Ensemble` (their steps vmapped into one call per record)."""
    ensemble = Ensemble.of([with_parameters(cfg, values) for values in points], labels=points)
    ensemble.run(steps)
    outcomes = []
    for model in ensemble.models:
        metrics = model.metrics_frame()
        stages, classes = stage_rows(metrics), class_rows(metrics)
        outcomes.append({name: read(stages, classes, steps) for name, read in OUTCOMES.items()})
    return outcomes


def analyse(method: str, problem: dict, points: np.ndarray, outcomes: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Sobol or Morris indices of every outcome that every run defined (``outcome, parameter, index,
    value, conf``)."""
    rows = []
    for outcome in outcomes.columns:
        y = outcomes[outcome].to_numpy(dtype=float)
        if not np.isfinite(y).all():
            continue  # e.g. surplus at alpha = 0 (no price scale): reported by the caller
        # a Generator, not the int: SALib 1.6's Sobol analysis ignores seed=0 ("if seed:") and bootstraps
        # from numpy's global state, so the intervals would change from run to run
        bootstrap = np.random.default_rng(seed)
        if method == "sobol":
            result = sobol_analysis.analyze(problem, y, calc_second_order=False, conf_level=0.95, seed=bootstrap)
            indices = {"S1": ("S1", "S1_conf"), "ST": ("ST", "ST_conf")}
        else:
            result = morris_analysis.analyze(problem, points, y, conf_level=0.95, num_levels=MORRIS_LEVELS,
                                             seed=bootstrap)
            indices = {"mu_star": ("mu_star", "mu_star_conf"), "sigma": ("sigma", None)}
        for k, parameter in enumerate(problem["names"]):
            for index, (value, conf) in indices.items():
                rows.append({"outcome": outcome, "parameter": parameter, "index": index,
                             "value": float(result[value][k]),
                             "conf": float(result[conf][k]) if conf else float("nan")})
    return pd.DataFrame(rows, columns=["outcome", "parameter", "index", "value", "conf"])


def plot_indices(indices: pd.DataFrame, method: str, experiment: str, steps: int, runs: int, path: Path) -> Path:
    """One panel per outcome: each setting's indices as bars with their 95% intervals."""
    outcomes = list(dict.fromkeys(indices["outcome"]))
    columns = min(len(outcomes), 4)
    rows = -(-len(outcomes) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    kinds = list(dict.fromkeys(indices["index"]))
    width = 0.8 / len(kinds)
    for ax, outcome in zip(axes.ravel(), outcomes):
        part = indices[indices["outcome"] == outcome]
        names = list(dict.fromkeys(part["parameter"]))
        for j, kind in enumerate(kinds):
            bars = part[part["index"] == kind].set_index("parameter").loc[names]
            ax.bar(np.arange(len(names)) + (j - (len(kinds) - 1) / 2) * width, bars["value"], width,
                   yerr=bars["conf"].fillna(0.0), capsize=3, label=kind)
        ax.set_xticks(np.arange(len(names)), [name.rpartition(".")[2] for name in names], rotation=30)
        ax.set_title(outcome)
        ax.axhline(0.0, color="black", linewidth=0.6)
    for ax in axes.ravel()[len(outcomes):]:
        ax.set_visible(False)
    axes[0, 0].legend(title="95% interval", fontsize="small")
    label = "Sobol indices (S1 first order, ST total)" if method == "sobol" else "Morris elementary effects"
    fig.suptitle(f"{label}: {experiment}, {runs} runs of {steps} steps, one seed", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def sensitivity(cfg: Config, experiment: str, ranges: dict[str, tuple[float, float]], method: str = "sobol",
                samples: int = 64, steps: int = 500, seed: int = 0, jobs: int = 2,
                out: Path = Path("outputs/sensitivity"), progress: bool = True) -> dict[str, Any]:
    """Run the design, write ``sensitivity.csv``, ``samples.parquet`` and ``sensitivity.png`` to
    ``out``; returns the indices, the samples and the outcomes left out (not defined in every run)."""
    if method not in METHODS:
        raise ConfigError("--method", method, f"one of {', '.join(METHODS)}")
    if samples < 2:
        raise ConfigError("--samples", samples, "an integer >= 2")
    problem, points = design(method, ranges, samples, seed)
    names = problem["names"]
    # a few ensembles per worker, so that the progress bar moves
    chunks = np.array_split(np.arange(len(points)), min(len(points), ENSEMBLES_PER_JOB * max(jobs, 1)))
    jobs_iter = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(run_outcomes)(cfg, [dict(zip(names, map(float, points[k]))) for k in chunk], steps)
        for chunk in chunks)
    results = []
    with tqdm(total=len(points), desc="sensitivity", unit="run", disable=not progress) as bar:
        for chunk_outcomes in jobs_iter:
            results.extend(chunk_outcomes)
            bar.update(len(chunk_outcomes))
    outcomes = pd.DataFrame(results, columns=list(OUTCOMES))
    indices = analyse(method, problem, points, outcomes, seed)
    left_out = [name for name in OUTCOMES if not np.isfinite(outcomes[name]).all()]
    out.mkdir(parents=True, exist_ok=True)
    indices.to_csv(out / "sensitivity.csv", index=False)
    table = pd.concat([pd.DataFrame(points, columns=names), outcomes], axis=1)
    table.insert(0, "run", np.arange(len(points)))
    table.to_parquet(out / "samples.parquet", index=False)
    figure = plot_indices(indices, method, experiment, steps, len(points), out / "sensitivity.png")
    return {"indices": indices, "samples": table, "left_out": left_out, "figure": figure}
