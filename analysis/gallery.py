"""The figure gallery for papers, from a collected sweep (:mod:`analysis.collect`).

    python -m analysis figures multirun/sweep_alpha            # collects first if needed

Every figure is written as PDF and PNG in one style, with a caption file naming the sweep that
produced it (its directory, runs, swept parameters, the sweep's overrides and sweeper
parameters) and the command that regenerates it. Bands are 95% confidence intervals over the runs
that share an x value (seeds, for the ready sweeps). Only the figures the sweep can support are
drawn (a figure's x parameter must take two values or more); the others are listed as skipped, with
why. Multi-panel figures wrap at four columns and share the y axis of each metric.

(a) ``table1_trajectories``: peers and mean price per stage vs iteration (the paper's Table 1);
(b) ``convergence_vs_eta``: iterations until the Nash gap is small, and the final gap, vs eta per
    stage size (``sweep=eta``);
(c) ``price_vs_alpha``: final (equilibrium) mean price vs alpha for several T (``sweep=temperature``);
(d) ``revenue_curve``: expected revenue R(p) of a peer of stage 1 for several compute costs, its
    maximiser (the best response) marked (the paper's Figure 3), from the first complete run;
(e) ``scaling``: steps/s and peak memory vs number of peers (``sweep=network_size``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml
from omegaconf import OmegaConf

from p2pllm_abm.config import Config, MarketConfig, field_value, load_config
from p2pllm_abm.economics import expected_revenue, market_params
from p2pllm_abm.equilibrium import best_response
from p2pllm_abm.metrics import CONVERGENCE_GAP, run_config
from p2pllm_abm.figures import published_points
from p2pllm_abm.paper import layer_name

from .collect import Collection, first_member

BAND = ("ci", 95)


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)


def _facet_parameter(collection: Collection) -> str | None:
    """The first swept parameter other than the seed that takes several values."""
    for name in collection.swept:
        if name != "seed" and name in collection.runs and collection.runs[name].nunique() > 1:
            return name
    return None


MAX_COLUMNS = 4  #: panels per row at most; more facet values wrap onto further rows


def published_setup(steps: pd.DataFrame, setup: Config | None, swept: list[str]) -> bool:
    """Whether the runs of ``steps`` are the published table's: its number of layers, and every
    swept parameter (the seed aside) at the published experiment's value."""
    if setup is None or steps["stage"].nunique() != setup.network.stages:
        return False
    return all(name == "seed" or name not in steps or (steps[name] == field_value(setup, name)).all()
               for name in swept)


def table1_trajectories(collection: Collection) -> tuple[plt.Figure, str]:
    steps = collection.steps.assign(layer=lambda f: f["stage"].map(layer_name))
    facet = _facet_parameter(collection)
    values = sorted(steps[facet].unique()) if facet else [None]
    columns, blocks = min(len(values), MAX_COLUMNS), -(-len(values) // MAX_COLUMNS)
    metrics = (("peers", "peers serving the layer"), ("mean_price", "mean price (per request)"))
    references = collection.complete_runs.get("report.reference", pd.Series(dtype=object)).dropna().unique()
    reference = references[0] if len(references) == 1 else None
    paper = published_points(reference)
    paper = paper[paper["step"] <= steps["step"].max()]
    setup = load_config(reference) if reference else None  # the published table's settings
    parts = [steps if facet is None else steps[steps[facet] == value] for value in values]
    marked = [len(paper) > 0 and published_setup(part, setup, collection.swept) for part in parts]
    fig, axes = plt.subplots(2 * blocks, columns, figsize=(3.6 * columns, 2.75 * 2 * blocks), squeeze=False,
                             sharex=True)
    for k, (value, part) in enumerate(zip(values, parts)):
        block, column = divmod(k, MAX_COLUMNS)
        for row, (metric, label) in enumerate(metrics):
            ax = axes[2 * block + row, column]
            if (block, column) != (0, 0):
                ax.sharey(axes[row, 0])  # one y scale per metric
            sns.lineplot(data=part, x="step", y=metric, hue="layer", errorbar=BAND, ax=ax, legend=k == row == 0)
            if marked[k]:  # the published points, as crosses
                sns.scatterplot(data=paper, x="step", y=metric, hue="layer", marker="X", s=50, edgecolor="black",
                                ax=ax, legend=False)
            ax.set(xlabel="iteration" if row else "", ylabel=label if column == 0 else "",
                   title=f"{facet} = {value}" if facet and row == 0 else "")
    for k in range(len(values), blocks * columns):  # the last row's empty panels
        block, column = divmod(k, MAX_COLUMNS)
        axes[2 * block, column].set_visible(False)
        axes[2 * block + 1, column].set_visible(False)
    published = f"; crosses: {reference} as published (in panels run with its settings)" if any(marked) else ""
    return fig, ("Peers and mean price per layer over the iterations (the paper's Table 1), bands: 95% CI over "
                 f"seeds{published}")


def convergence_vs_eta(collection: Collection) -> tuple[plt.Figure, str]:
    runs = collection.complete_runs.assign(
        stage_size=lambda f: f["stage_size"].map(lambda size: f"{size:g}"))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    sns.lineplot(data=runs, x="market.eta", y="converged_step", hue="stage_size", marker="o", errorbar=BAND,
                 ax=axes[0])
    sns.lineplot(data=runs, x="market.eta", y="final_relative_nash_gap", hue="stage_size", marker="o",
                 errorbar=BAND, ax=axes[1], legend=False)
    axes[0].set(xscale="log", ylabel=f"iterations to gap <= {CONVERGENCE_GAP:g}", xlabel="eta (price step)")
    axes[1].set(xscale="log", yscale="log", ylabel="final relative Nash gap", xlabel="eta (price step)")
    axes[0].legend(title="peers per stage")
    return fig, (f"Iterations of eq. 5 until the largest relative Nash gap is <= {CONVERGENCE_GAP:g} (missing: "
                 "not within the run) and the final gap, vs eta, per stage size")


def price_vs_alpha(collection: Collection) -> tuple[plt.Figure, str]:
    runs = collection.complete_runs.assign(
        T=lambda f: f["market.temperature"].astype(str))
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sns.lineplot(data=runs, x="market.alpha", y="final_mean_price", hue="T", marker="o", errorbar=BAND, ax=ax)
    ax.set(xlabel="alpha", ylabel="final mean price (per request)", yscale="log")
    return fig, "Final mean price (the equilibrium price under best-response updates) vs alpha, per temperature T"


def revenue_curve(collection: Collection) -> tuple[plt.Figure, str]:
    run_dir = collection.source / collection.complete_runs["run"].iloc[0]
    config = run_config(json.loads((run_dir / "summary.json").read_text()))  # an ensemble: its first member's
    peers = first_member(pd.read_parquet(run_dir / "peers.parquet"))
    peers = peers[(peers["step"] == peers["step"].max()) & peers["alive"] & (peers["stage"] == 0)]
    market = config["market"]
    params = market_params(OmegaConf.merge(OmegaConf.structured(MarketConfig), market))  # older runs: defaults
    rivals_price, rivals_cost = peers["price"].to_numpy(), peers["cost"].to_numpy()
    costs = np.quantile(rivals_cost, [0.1, 0.5, 0.9])
    curves, optima = [], []
    for c in costs:
        price, cost = np.append(rivals_price, 1.0), np.append(rivals_cost, c)
        stage, alive = np.zeros(len(price), dtype=np.int64), np.ones(len(price), dtype=bool)
        best = float(best_response(jnp.asarray(price), jnp.asarray(cost), stage, alive, params, 1)[-1])
        top = 3.0 * best if np.isfinite(best) else 10.0
        grid = np.linspace(top / 300, top, 300)

        def revenue(q, price=price, cost=cost, stage=stage, alive=alive):
            return expected_revenue(jnp.asarray(price).at[-1].set(q), cost, stage, alive, params, 1)[-1]

        values = np.asarray(jax.vmap(revenue)(jnp.asarray(grid)))
        curves.append(pd.DataFrame({"price": grid, "revenue": values, "cost": f"c = {c:.3g} ms"}))
        optima.append((best, float(revenue(best)), f"c = {c:.3g} ms"))
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sns.lineplot(data=pd.concat(curves), x="price", y="revenue", hue="cost", ax=ax)
    for (best, value, _), color in zip(optima, sns.color_palette()):
        ax.plot([best], [value], marker="o", color=color)
        ax.axvline(best, color=color, lw=0.6, ls=":")
    ax.set(xlabel="own price p (per request)", ylabel="R(p), price units per step", yscale="log")
    return fig, (f"Expected revenue R(p) (eq. 2; log scale: costs far apart give revenues orders of magnitude "
                 f"apart) of a peer joining stage 1 of run {run_dir.name} at its final prices, for the 10%, 50% "
                 "and 90% quantiles of that stage's costs; dots mark the maximiser (the best response)")


def scaling(collection: Collection) -> tuple[plt.Figure, str]:
    runs = collection.complete_runs
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    sns.lineplot(data=runs, x="network.peers", y="steps_per_s", marker="o", errorbar=BAND, ax=axes[0])
    sns.lineplot(data=runs, x="network.peers", y="peak_memory_mb", marker="o", errorbar=BAND, ax=axes[1])
    axes[0].set(xscale="log", yscale="log", xlabel="peers", ylabel="steps per second")
    axes[1].set(xscale="log", xlabel="peers", ylabel="peak memory of the job (MiB)")
    return fig, "Simulation speed (steps/s over the whole run) and peak resident memory vs number of peers"


#: file stem -> figure function
FIGURES: dict[str, Callable[[Collection], tuple[plt.Figure, str]]] = {
    "a_table1_trajectories": table1_trajectories,
    "b_convergence_vs_eta": convergence_vs_eta,
    "c_price_vs_alpha": price_vs_alpha,
    "d_revenue_curve": revenue_curve,
    "e_scaling": scaling,
}
#: file stem -> the parameter its x axis sweeps (a figure is drawn only where the sweep varies it)
X_PARAMETER = {"b_convergence_vs_eta": "market.eta", "c_price_vs_alpha": "market.alpha",
               "e_scaling": "network.peers"}


def unsupported(collection: Collection, stem: str) -> str | None:
    """Why the sweep cannot support figure ``stem`` (None if it can): its x parameter must take at
    least two values among the complete runs, and there must be complete runs at all."""
    runs = collection.complete_runs
    if runs.empty:
        return "no complete run"
    parameter = X_PARAMETER.get(stem)
    if parameter is not None and (parameter not in runs or runs[parameter].nunique() < 2):
        taken = sorted(runs[parameter].unique().tolist()) if parameter in runs else "not swept"
        return f"its x axis is {parameter}, which takes fewer than two values here ({taken})"
    return None


def caption(collection: Collection, description: str, stem: str) -> str:
    """The caption file's text: the figure, the sweep that produced it, how to regenerate it."""
    counts = collection.runs["status"].value_counts().to_dict()
    lines = [f"{description}.", "",
             f"Sweep: {collection.source} ({len(collection.runs)} runs: "
             + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")",
             f"Swept parameters: {', '.join(collection.swept) or 'none'}"]
    multirun = collection.source / "multirun.yaml" if collection.source else None
    if multirun is not None and multirun.is_file():
        hydra = yaml.safe_load(multirun.read_text())["hydra"]
        lines.append(f"Command-line overrides: {' '.join(hydra['overrides']['task'])}")
        if hydra.get("sweeper", {}).get("params"):
            lines.append(f"Sweeper parameters: {hydra['sweeper']['params']}")
    lines.append(f"Regenerate: python -m analysis figures {collection.source} (file {stem})")
    return "\n".join(lines) + "\n"


def draw_gallery(collection: Collection, out_dir: Path,
                 names: list[str] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw the figures ``names`` (default: all of :data:`FIGURES` the sweep supports) into
    ``out_dir``; returns the files written and the figures skipped, with why (:func:`unsupported`).
    A figure asked for by name that the sweep cannot support is refused (ValueError)."""
    skipped = {stem: why for stem in names or list(FIGURES) if (why := unsupported(collection, stem))}
    if names and skipped:
        raise ValueError("; ".join(f"{stem} cannot be drawn from {collection.source}: {why}"
                                   for stem, why in skipped.items()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _style()
    written = {}
    for stem in [stem for stem in names or list(FIGURES) if stem not in skipped]:
        fig, description = FIGURES[stem](collection)
        fig.tight_layout()
        for suffix in (".pdf", ".png"):
            fig.savefig(out_dir / f"{stem}{suffix}", dpi=200)
            written[f"{stem}{suffix}"] = out_dir / f"{stem}{suffix}"
        plt.close(fig)
        (out_dir / f"{stem}.txt").write_text(caption(collection, description, stem))
        written[f"{stem}.txt"] = out_dir / f"{stem}.txt"
    return written, skipped
