"""The figures every run writes: node counts and mean price per stage over time (seaborn)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
import pandas as pd
import seaborn as sns

from .metrics import label_columns, run_config, stage_rows
from .paper import REFERENCES, layer_name
from .paths import atomic_path

#: figure file name -> (metrics.parquet column, y-axis label)
STAGE_FIGURES = {
    "nodes_per_stage.png": ("peers", "peers serving the layer"),
    "mean_price_per_stage.png": ("mean_price", "mean price (per request)"),
}


def quantile_scale(values: np.ndarray, low: float = 5, high: float = 95) -> Normalize:
    """A colour scale from the ``low``-th to the ``high``-th percentile of ``values`` (clipped), so
    that an outlier (one very expensive peer) does not wash the other colours out."""
    bottom, top = np.percentile(values, [low, high]) if len(values) else (0.0, 1.0)
    return Normalize(vmin=bottom, vmax=top if top > bottom else bottom + 1e-9, clip=True)


def published_points(reference: str | None) -> pd.DataFrame:
    """A published table of :mod:`p2pllm_abm.paper` as rows ``step, layer, peers, mean_price``
    (empty without a reference)."""
    if not reference:
        return pd.DataFrame(columns=["step", "layer", "peers", "mean_price"])
    return pd.DataFrame([{"step": step, "layer": layer_name(s), "peers": nodes[s], "mean_price": prices[s]}
                         for step, (nodes, prices) in sorted(REFERENCES[reference].items())
                         for s in range(len(nodes))])


def plot_stage_trajectories(metrics: pd.DataFrame, outdir: Path, reference: str | None = None) -> list[Path]:
    """One line per stage over the recorded steps, for each of :data:`STAGE_FIGURES`; with a
    ``reference`` (``report.reference``), the published points of that table as crosses. An
    ensemble's lines are means over its replicates, with 95% bands."""
    outdir = Path(outdir)
    frame = stage_rows(metrics)
    frame = frame.assign(layer=frame["stage"].map(layer_name))
    # an ensemble's metrics (p2pllm_abm.ensemble) lead with its members' labels: a line is the mean
    # over replicates (band: normal 95% interval), one line style per value of the first ensemble parameter
    style = next((name for name in label_columns(frame) if name != "replicate"), None)
    paper = published_points(reference)
    paper = paper[paper["step"] <= frame["step"].max()]
    paths = []
    with sns.axes_style("whitegrid"):
        for name, (column, label) in STAGE_FIGURES.items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            # an ensemble's band: mean +- 1.96 standard errors (seaborn's bootstrap took 50 s for 27 members)
            sns.lineplot(data=frame, x="step", y=column, hue="layer", style=style, errorbar=("se", 1.96), ax=ax)
            if len(paper):
                sns.scatterplot(data=paper, x="step", y=column, hue="layer", marker="X", s=60, ax=ax,
                                edgecolor="black", legend=False)
                ax.set_title(f"lines: this run; crosses: {reference} (published)", fontsize=8)
            ax.set(xlabel="iteration", ylabel=label)
            if style is not None:  # layers x parameter values: the legend beside the axes
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
            fig.tight_layout()
            with atomic_path(outdir / name) as temporary:
                fig.savefig(temporary, dpi=150, format="png")
            plt.close(fig)
            paths.append(outdir / name)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m p2pllm_abm.figures RUN_DIR``: redraw a run's figures from its metrics.parquet."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory holding metrics.parquet")
    run_dir = parser.parse_args(argv).run_dir
    metrics_path = run_dir / "metrics.parquet"
    if not metrics_path.is_file():
        parser.error(f"run_dir = {str(run_dir)!r} has no metrics.parquet: allowed a p2pllm-sim run directory")
    summary = run_dir / "summary.json"
    reference = run_config(json.loads(summary.read_text()))["report"]["reference"] if summary.is_file() else None
    for path in plot_stage_trajectories(pd.read_parquet(metrics_path), run_dir, reference):
        print(path)


if __name__ == "__main__":
    main()
