"""``python -m analysis calibrate``: fit the paper's unstated settings, write ``calibration.json``
and a figure of the fit, and (``--reproduce DIR``) run the calibrated experiment in full and print
it beside the literal reading and the paper.

    python -m analysis calibrate --table paper_table1 \\
        --fit market.temperature network.initial_price market.eta --fixed market.alpha=0.5 --out outputs/calibration
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from p2pllm_abm.calibration import calibrated_config, trajectory
from p2pllm_abm.config import load_config
from p2pllm_abm.paper import layer_name
from p2pllm_abm.paths import write_text_atomic

FIGURE = "calibration_fit.png"


def write_calibration(result: dict[str, Any], out: Path) -> list[Path]:
    """``out/calibration.json`` and ``out/calibration_fit.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "calibration.json"
    write_text_atomic(path, json.dumps(result, indent=2))
    return [path, plot_fit(result, out / FIGURE)]


def plot_fit(result: dict[str, Any], path: Path) -> Path:
    """Mean price and peers per layer over the iterations, literal reading and calibrated (seed
    ``seeds[0]``, replayed at every reallocation), with the paper's published points."""
    table = result["table"]
    seed = result["seeds"][0]
    last = table["steps"][-1]
    literal = dataclasses.replace(load_config(result["experiment"], overrides=result.get("user_overrides", [])),
                                  seed=seed)
    runs = pd.concat([trajectory(literal, last).assign(reading="literal (section 5.2)"),
                      trajectory(calibrated_config(result, seed), last).assign(reading="calibrated")])
    runs["layer"] = runs["stage"].map(layer_name)
    paper = pd.DataFrame([{"step": step, "layer": layer_name(s), "peers": nodes[s], "mean_price": prices[s]}
                          for step, nodes, prices in zip(table["steps"], table["paper_nodes"], table["paper_prices"])
                          for s in range(len(nodes))])
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, column, label in ((axes[0], "mean_price", "mean price (per request)"),
                                  (axes[1], "peers", "peers per layer")):
            sns.lineplot(data=runs, x="step", y=column, hue="layer", style="reading", ax=ax, linewidth=1.2)
            sns.scatterplot(data=paper, x="step", y=column, hue="layer", marker="X", s=70, ax=ax, legend=False,
                            edgecolor="black")
            ax.set(xscale="symlog", xlabel="iteration (symlog)", ylabel=label)
        axes[0].legend(fontsize=7, title="X: paper's Table 1", title_fontsize=7)
        axes[1].get_legend().remove()
        parameters = ", ".join(f"{name.split('.')[1]} = {p['value']:.3g}" for name, p in result["parameters"].items())
        fig.suptitle(f"Calibrated to {result['table_name']} ({parameters}; {result['reading']} reading)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return Path(path)


def side_by_side(result: dict[str, Any]) -> pd.DataFrame:
    """Rows (iteration, metric), a column per layer, each cell ``literal | calibrated (paper)``."""
    literal, fitted = result["literal_table"], result["table"]
    rows = []
    for k, step in enumerate(fitted["steps"]):
        for metric, key, paper_key, fmt in (("Nodes", "nodes", "paper_nodes", "{:d}"),
                                            ("Avg. Price", "prices", "paper_prices", "{:.2f}")):
            cells = {layer_name(s): f"{fmt.format(literal[key][k][s])} | {fmt.format(fitted[key][k][s])} "
                                       f"({fmt.format(fitted[paper_key][k][s])})"
                     for s in range(len(fitted[key][k]))}
            rows.append({"Iteration": step, "Metric": metric, **cells})
    return pd.DataFrame(rows).set_index(["Iteration", "Metric"])


def findings(result: dict[str, Any]) -> str:
    """What the calibration found, in a few lines."""
    seeds = result["seeds"]
    values = "; ".join(f"{name} = {p['value']:.4g} [{p['low']:.4g}, {p['high']:.4g}]"
                       for name, p in result["parameters"].items())
    lines = [f"Calibration to {result['table_name']} over {len(seeds)} cost draws (seeds {seeds[0]}-{seeds[-1]}; "
             f"median [90% interval]): {values}",
             f"  price loss (mean squared relative error of the price cells, seed {seeds[0]}): "
             f"{result['loss']:.3g} calibrated vs {result['literal_loss']:.3g} literal"]
    for reading, fit in result["readings"].items():
        exact = fit["final_rows_exact_share"]
        lines.append(f"  node rows, {reading} reading: RMSE {fit['node_rmse']:.2f} peers over the checkpoints; "
                     f"the last two rows equal the paper's in {exact:.0%} of seeds")
    lines.append(f"  reading used for the fit: {result['reading']}")
    return "\n".join(lines)


def reproduce(result: dict[str, Any], run_dir: Path) -> None:
    """Run the calibrated experiment in full (the model, not the replay) into ``run_dir``, with
    its figures, and print the three tables side by side and the findings."""
    from p2pllm_abm.cli import run_experiment

    run_experiment(calibrated_config(result, result["seeds"][0]), Path(run_dir), report=False)
    print(f"\nNodes and average price per layer [literal | calibrated (paper)], seed {result['seeds'][0]}:")
    print(side_by_side(result).to_string())
    print()
    print(findings(result))
    print(f"\nCalibrated run directory: {run_dir}")
