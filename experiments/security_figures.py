"""Figures of the security experiment (:mod:`experiments.security`), PNG and PDF each:

- ``security_vs_sampling``: detection (share of cheating peers slashed), mean steps from a peer's
  first cheat to its slash, share of requests that got a wrong output, verification overhead (% of
  compute), honest peers slashed, final stake Gini, each vs the spot-check rate p, by adversary share
  (columns: slash fraction);
- ``security_mechanisms``: the same figures per mechanism, lazy vs colluding + sybil adversaries;
- ``security_over_time``: mean wealth gained per peer, honest vs lazy, and the stake Gini over
  validators, over the steps of the 20% lazy runs with slash fraction 0.25 (no forced exit) at
  p = 0.01 and p = 0.1;
- ``security_false_slashing``: honest peers slashed by fingerprint, with and without the referee;
- ``security_deterrence``: a lazy peer's and an honest peer's profit per hop vs p, with the
  closed-form threshold p* and the simulated crossing;
- ``security_collusion``: how often colluders pass redundancy vs their stake share, next to
  beta^(k-1).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PANELS = {
    "detection": "cheating peers slashed (share)",
    "mean_steps_to_detection": "steps from first cheat to slash",
    "bad_output_share": "requests with a wrong output (share)",
    "verification_overhead": "verification compute (% of serving)",
    "slashed_honest": "honest peers slashed",
    "stake_gini": "stake Gini at the end",
}


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _derived(runs: pd.DataFrame, over_time: pd.DataFrame) -> pd.DataFrame:
    runs = runs.assign(detection=runs["slashed_cheaters"] / runs["cheating_peers"].where(runs["cheating_peers"] > 0),
                       verification_overhead=100 * runs["verification_compute_share"])
    final = over_time.sort_values("step").groupby("run_id").tail(1).set_index("run_id")["stake_gini"]
    return runs.assign(stake_gini=runs["run_id"].map(final).astype(float))


def spread_note(runs: pd.DataFrame) -> str:
    """What the bands show: the range over the seeds, or that there is one seed (no band)."""
    seeds = sorted(int(seed) for seed in runs["seed"].unique())
    if len(seeds) > 1:
        return f"band: range over seeds {seeds}"
    return f"one seed ({seeds[0]}): no band; seeds=[...] adds one"


def plot_all(runs: pd.DataFrame, over_time: pd.DataFrame, deter: pd.DataFrame, threshold: dict,
             colluders: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure of the experiment into ``out``; returns the files."""
    runs = _derived(runs, over_time)
    spread = spread_note(runs)
    paths: list[Path] = []
    with sns.axes_style("whitegrid"):
        a = runs[runs["part"] == "a"].assign(adversary_share=lambda f: (100 * f["adversary_share"]).round().astype(int))
        for slash, rows in a.groupby("slash_fraction"):
            fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
            for ax, (column, label) in zip(axes.flat, PANELS.items()):
                sns.lineplot(rows, x="p", y=column, hue="adversary_share", marker="o", ax=ax, palette="viridis",
                             errorbar=("pi", 100))
                ax.set(xscale="log", xlabel="spot-check rate p (log)", ylabel=label, ylim=(0, None))
                ax.set_xticks(sorted(rows["p"].unique()), labels=[f"{p:g}" for p in sorted(rows["p"].unique())])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                handles, labels = ax.get_legend_handles_labels()
                ax.get_legend().remove()
            fig.legend(handles, labels, title="lazy peers (%)", loc="upper right", ncol=len(labels))
            fig.suptitle(f"Spot checks with uniform sampling, slash fraction {slash:g}, no forced exit ({spread})",
                         x=0.35)
            fig.tight_layout(rect=(0, 0, 1, 0.93))
            paths += _save(fig, out, f"security_vs_sampling_slash{slash:g}")

        b = runs[runs["part"] == "b"]
        fig, axes = plt.subplots(2, 3, figsize=(14, 8))
        for ax, (column, label) in zip(axes.flat, PANELS.items()):
            sns.barplot(b, x="mechanism", y=column, hue="adversary", ax=ax, errorbar=("pi", 100))
            ax.set(xlabel="", ylabel=label, ylim=(0, None))
            ax.tick_params(axis="x", rotation=30)
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
            handles, labels = ax.get_legend_handles_labels()
            ax.get_legend().remove()
        fig.legend(handles, labels, title="adversary (20% of peers)", loc="upper right", ncol=2)
        fig.suptitle(f"Mechanisms at their defaults against 20% adversarial peers ({spread})", x=0.35)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        paths += _save(fig, out, "security_mechanisms")

        shown = over_time[(over_time["part"] == "a") & (over_time["adversary_share"] == "0.2")
                          & (over_time["slash_fraction"] == "0.25") & over_time["p"].isin(["0.01", "0.1"])]
        shown = shown.assign(per_peer=shown["wealth_change"] / shown["behaviour_peers"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        sns.lineplot(shown, x="step", y="per_peer", hue="behaviour", style="p", ax=axes[0], errorbar=("pi", 100))
        axes[0].set(ylabel="wealth gained per peer (price units)", title="honest vs lazy peers (20% lazy)")
        sns.lineplot(shown.drop_duplicates(["run_id", "step"]), x="step", y="stake_gini", hue="p", ax=axes[1],
                     errorbar=("pi", 100))
        axes[1].set(ylabel="stake Gini over validators (0-1)", title="stake concentration")
        fig.suptitle(f"Spot checks, slash fraction 0.25 ({spread})", fontsize=10)
        fig.tight_layout()
        paths += _save(fig, out, "security_over_time")

        c = runs[runs["part"] == "c"].assign(referee=lambda f: f["referee"].map({True: "referee", False: "no referee"}))
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.barplot(c, x="fingerprint", y="slashed_honest", hue="referee", ax=ax, errorbar=("pi", 100))
        ax.set(ylabel="honest peers slashed", title="honest false slashing (p = 0.1, 10% lazy)")
        paths += _save(fig, out, "security_false_slashing")

        fig, ax = plt.subplots(figsize=(6.5, 4))
        long = deter.rename(columns={"lazy_profit_per_hop": "lazy peer", "honest_profit_per_hop": "honest peer"}).melt(
            "p", ["lazy peer", "honest peer"], var_name="peer", value_name="profit per hop")
        sns.lineplot(long, x="p", y="profit per hop", hue="peer", marker="o", ax=ax)
        ax.axvline(threshold["p_star"], color="k", linestyle="--", label=f"p* = {threshold['p_star']:.4f} (closed form)")
        if np.isfinite(threshold["p_simulated"]):
            ax.axvline(threshold["p_simulated"], color="tab:red", linestyle=":",
                       label=f"crossing = {threshold['p_simulated']:.4f} (simulated)")
        ax.set(xlabel="spot-check rate p", ylabel="profit per hop (price units)",
               title=f"deterrence: c = {threshold['cost']:.2g}, S = {threshold['slash']:.2g}")
        ax.legend(fontsize=8)
        paths += _save(fig, out, "security_deterrence")

        fig, ax = plt.subplots(figsize=(6.5, 4))
        sns.lineplot(colluders, x="beta", y="passed", hue="replicas", marker="o", ax=ax, palette="deep")
        for k, rows in colluders.groupby("replicas"):
            ax.plot(rows["beta"], rows["theory"], color="gray", linestyle="--", linewidth=1)
        ax.set(yscale="log", xlabel="colluding stake share beta", ylabel="wrong outputs that pass (share, log)",
               title="redundancy vs colluders (dashed: beta^(k-1))")
        paths += _save(fig, out, "security_collusion")
    return paths
