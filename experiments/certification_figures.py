"""Figures of the equilibrium certification sweep (seaborn): gap vs iteration per rule, the
iterations-to-converge heatmap of eq. 5 over (eta, stage size), equilibrium mean price vs (alpha, T)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def gap_vs_iteration(example: dict, out_dir: Path) -> Path:
    """Max Nash gap per iteration for each rule on one case (log scale)."""
    rows = [(f"{rule}", i, g) for rule, history in example["solvers"].items() for i, g in enumerate(history)]
    rows += [(f"gradient, eta = {factor:g} x stable", i, g) for factor, history in example.get("gradient", {}).items()
             if factor in (0.5, 0.95, 1.25) for i, g in enumerate(history)]
    frame = pd.DataFrame(rows, columns=["rule", "iteration", "gap"])
    frame["gap"] = frame["gap"].clip(lower=1e-17)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=frame, x="iteration", y="gap", hue="rule", ax=ax)
    ax.set(yscale="log", xscale="symlog", xlim=(0, None), xlabel="iteration (symlog)",
           ylabel="max Nash gap (price units)",
           title=f"{example['size']} peers per stage, seed {example['seed']}")
    return _save(fig, out_dir / "gap_vs_iteration.png")


def iterations_heatmap(results: pd.DataFrame, out_dir: Path) -> Path:
    """Median iterations of eq. 5 to a gap <= tol over (eta / stable eta, stage size); cells where
    the median case never got there read "> max"."""
    gradient = results[results["rule"] == "gradient"]
    ceiling = int(gradient["iterations"].max())
    filled = gradient.assign(iterations_to_tol=gradient["iterations_to_tol"].fillna(ceiling + 1))
    table = filled.pivot_table(index="stage_size", columns="eta_factor", values="iterations_to_tol", aggfunc="median")
    labels = table.map(lambda v: f">{ceiling}" if v > ceiling else f"{v:.0f}")
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    sns.heatmap(table, annot=labels, fmt="", cmap="viridis_r", ax=ax, cbar_kws={"label": "iterations"})
    ax.set(xlabel="eta / stable eta", ylabel="peers per stage", title="eq. 5: iterations to Nash gap <= tol")
    return _save(fig, out_dir / "iterations_heatmap.png")


def equilibrium_price(results: pd.DataFrame, out_dir: Path) -> Path:
    """Equilibrium mean price vs alpha, one line per T, one panel per stage size (band over seeds)."""
    solved = results[(results["rule"] == "sequential_best_response") & results["converged"]]
    grid = sns.relplot(data=solved, x="alpha", y="mean_price", hue="temperature", col="stage_size", kind="line",
                       palette="viridis", height=3, aspect=1.0, col_wrap=min(4, solved["stage_size"].nunique()),
                       facet_kws={"sharey": True})
    grid.set(yscale="log")
    grid.set_axis_labels("alpha", "equilibrium mean price (per request)")
    path = out_dir / "equilibrium_price.png"
    grid.savefig(path, dpi=150)
    plt.close(grid.figure)
    return path


def plot_all(results: pd.DataFrame, example: dict, out_dir: Path) -> list[Path]:
    return [gap_vs_iteration(example, out_dir), iterations_heatmap(results, out_dir), equilibrium_price(results, out_dir)]
