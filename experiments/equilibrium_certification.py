"""Equilibrium certification: do the price rules reach certified Nash equilibria, how fast, and where
does the paper's gradient ascent stop converging?

    python -m experiments.equilibrium_certification                 # the full sweep, ~5 min
    python -m experiments.equilibrium_certification stage_sizes=[4,10] seeds=[0]

For every (alpha, T, stage size, seed) it solves each stage game with every rule of
``experiments/conf/equilibrium_certification.yaml`` and records iterations to a certified Nash gap
``<= tol``, the final gap and the equilibrium mean price; for (gradient.alpha, gradient.temperature)
it runs the paper's eq. 5 at multiples of the case's stable step size. Writes into ``out_dir``:
``results.parquet`` (+ csv, tidy: one row per case x rule x eta), ``gap_vs_iteration.png``,
``iterations_heatmap.png``, ``equilibrium_price.png`` and prints the findings.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

import p2pllm_abm  # noqa: F401  (float64)
from p2pllm_abm.cli import quiet_library_logs
from p2pllm_abm.economics import MarketParams
from p2pllm_abm.equilibrium import diagnose_gradient_ascent, solve_equilibrium, stable_eta

from .certification_figures import plot_all

CONF_DIR = Path(__file__).resolve().parent / "conf"


def make_case(stage_size: int, stages: int, cost_range, seed: int):
    """``stages`` stages of ``stage_size`` peers with costs ~ U(cost_range)."""
    rng = np.random.default_rng(seed)
    n = stage_size * stages
    return np.repeat(np.arange(stages), stage_size), rng.uniform(*cost_range, size=n), np.ones(n, dtype=bool)


def first_below(history, tol: float) -> float:
    below = np.flatnonzero(np.asarray(history) <= tol)
    return float(below[0]) if len(below) else np.nan


def solve_case(cfg: DictConfig, alpha: float, temperature: float, size: int, seed: int) -> tuple[list[dict], dict]:
    """Every rule on one case: one row per rule, and the gap histories (for the figure)."""
    stage, cost, alive = make_case(size, cfg.stages, cfg.cost_range, seed)
    price = np.full(len(cost), float(cfg.initial_price))
    params = MarketParams(alpha, temperature, 1.0, 1.0, 0.0)
    case = {"alpha": alpha, "temperature": temperature, "stage_size": size, "seed": seed}
    rows, histories = [], {}
    for rule in cfg.rules:
        started = time.perf_counter()
        result = solve_equilibrium(rule, price, cost, stage, alive, params, cfg.stages,
                                   max_iterations=cfg.max_iterations, damping=cfg.damping)
        histories[rule] = np.asarray(result.gap_history)
        rows.append({**case, "rule": rule, "eta": np.nan, "eta_factor": np.nan, "stable_eta": np.nan,
                     "status": "converged" if result.converged else
                     ("diverged" if not np.isfinite(result.gap) else "not_converged"),
                     "converged": result.converged, "iterations": result.iterations,
                     "iterations_to_tol": first_below(result.gap_history, cfg.tol),
                     "final_gap": result.gap, "final_residual": result.residual,
                     "mean_price": float(np.mean(np.asarray(result.price))),
                     "seconds": time.perf_counter() - started})
    return rows, histories


def gradient_case(cfg: DictConfig, size: int, seed: int) -> tuple[list[dict], dict]:
    """The paper's eq. 5 at multiples of the case's stable step size."""
    stage, cost, alive = make_case(size, cfg.stages, cfg.cost_range, seed)
    price = np.full(len(cost), float(cfg.initial_price))
    alpha, temperature = cfg.gradient.alpha, cfg.gradient.temperature
    params = MarketParams(alpha, temperature, 1.0, 1.0, 0.0)
    equilibrium = solve_equilibrium("sequential_best_response", price, cost, stage, alive, params, cfg.stages)
    bound = stable_eta(equilibrium.price, cost, stage, alive, params, cfg.stages)
    case = {"alpha": alpha, "temperature": temperature, "stage_size": size, "seed": seed, "rule": "gradient"}
    rows, histories = [], {}
    for factor in cfg.gradient.eta_factors:
        started = time.perf_counter()
        eta = factor * bound
        diagnosis = diagnose_gradient_ascent(price, cost, stage, alive, params._replace(eta=eta), cfg.stages,
                                             tol=cfg.tol, max_iterations=cfg.gradient.max_iterations)
        histories[factor] = np.asarray(diagnosis.gap_history)
        rows.append({**case, "eta": eta, "eta_factor": factor, "stable_eta": bound, "status": diagnosis.status,
                     "converged": diagnosis.status == "converged", "iterations": len(diagnosis.gap_history) - 1,
                     "iterations_to_tol": np.nan if diagnosis.first_iteration_below_tol is None
                     else float(diagnosis.first_iteration_below_tol),
                     "final_gap": diagnosis.final_gap, "final_residual": np.nan,
                     "mean_price": float(np.mean(np.asarray(equilibrium.price))),
                     "seconds": time.perf_counter() - started})
    return rows, histories


def findings(results: pd.DataFrame) -> str:
    """A few lines summarising the sweep."""
    solvers = results[results["rule"] != "gradient"]
    lines = ["Iterations to a certified Nash gap <= tol (median / max over cases), and cases converged:"]
    for rule, group in solvers.groupby("rule"):
        lines.append(f"  {rule:<26} {group['iterations_to_tol'].median():6.0f} / {group['iterations_to_tol'].max():4.0f}"
                     f"   {int(group['converged'].sum())}/{len(group)} converged")
    gradient = results[results["rule"] == "gradient"]
    if not gradient.empty:
        lines.append("Gradient ascent (eq. 5) by eta / stable eta: share converged, median iterations to tol")
        for factor, group in gradient.groupby("eta_factor"):
            statuses = ", ".join(f"{k} {v}" for k, v in group["status"].value_counts().items())
            lines.append(f"  {factor:5.2f}  {group['converged'].mean():5.0%}  "
                         f"{group['iterations_to_tol'].median():7.0f}   ({statuses})")
        bounds = gradient.groupby("stage_size")["stable_eta"].median()
        lines.append("Stable eta (median over seeds) by stage size: "
                     + ", ".join(f"{size}: {value:.3g}" for size, value in bounds.items()))
    return "\n".join(lines)


@hydra.main(config_path=str(CONF_DIR), config_name="equilibrium_certification", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_library_logs()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = list(itertools.product(cfg.alphas, cfg.temperatures, cfg.stage_sizes, cfg.seeds))
    rows = []
    for alpha, temperature, size, seed in tqdm(cases, desc="solver cases"):
        rows += solve_case(cfg, alpha, temperature, size, seed)[0]
    gradient_histories = {}
    for size, seed in tqdm(list(itertools.product(cfg.stage_sizes, cfg.seeds)), desc="gradient cases"):
        case_rows, gradient_histories[size, seed] = gradient_case(cfg, size, seed)
        rows += case_rows
    size, seed = cfg.stage_sizes[0], cfg.seeds[0]  # the case drawn in gap_vs_iteration.png
    example = {"size": size, "seed": seed, "gradient": gradient_histories[size, seed],
               "solvers": solve_case(cfg, cfg.gradient.alpha, cfg.gradient.temperature, size, seed)[1]}
    results = pd.DataFrame(rows)
    results.to_parquet(out_dir / "results.parquet", index=False)
    results.to_csv(out_dir / "results.csv", index=False)
    figures = plot_all(results, example, out_dir)
    print(findings(results))
    print(f"\nWrote {out_dir / 'results.parquet'} and " + ", ".join(str(f) for f in figures))


if __name__ == "__main__":
    main()
