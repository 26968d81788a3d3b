"""Figures of the cryptoeconomic layer (paper section 4) for papers.

    python -m analysis ledger-figures outputs/paper_table1_ledger   # one run: money and stake over time
    python -m analysis ledger-figures multirun/sweep_ledger         # a sweep: latency vs shards, escrow vs channels

From one ledger run (``ledger_money_<run>``): the peers' balances, bonded stake and earnings not
yet on their balance (open escrows or their side of channels) over time, in price units; the
Gini coefficients of the peers' balances and stakes; and each shard's mean confirmation latency.
From a sweep over ``network.stages``, ``ledger.sharding`` and ``ledger.payments``
(``p2pllm-sim -m sweep=ledger``): ``ledger_shards`` (confirmation latency vs stages, sharded by
stage or one chain) and ``ledger_payments`` (on-chain transactions per request and locked
liquidity, escrow vs channels). PNG and PDF each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import pandas as pd
import seaborn as sns

from p2pllm_abm.ledger import gini
from p2pllm_abm.metrics import shard_rows
from p2pllm_abm.paper import layer_name

from .collect import collect, single_run_summary


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def money_over_time(peers: pd.DataFrame, unit: int) -> pd.DataFrame:
    """Per recorded step: the peers' total balance, stake and earnings not yet paid out (price
    units) and the Gini coefficients of balance and stake over the peers."""
    rows = []
    for step, at in peers.groupby("step"):
        rows.append({"step": step, "balance": at["balance"].sum() / unit, "stake": at["stake"].sum() / unit,
                     "escrowed": at["escrowed"].sum() / unit, "balance_gini": gini(at["balance"].to_numpy()),
                     "stake_gini": gini(at["stake"].to_numpy())})
    return pd.DataFrame(rows)


def plot_ledger_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """``ledger_money_<run>``: money, its concentration and confirmation latency over a run."""
    run_dir = Path(run_dir)
    summary = single_run_summary(run_dir, "the ledger figure")
    if "ledger" not in summary:
        raise ValueError(f"run_dir = {str(run_dir)!r} is not a ledger run: allowed a run with ledger.enabled=true")
    money = money_over_time(pd.read_parquet(run_dir / "peers.parquet"), summary["config"]["ledger"]["unit"])
    shards = shard_rows(pd.read_parquet(run_dir / "metrics.parquet"))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        totals = money.melt("step", ["balance", "stake", "escrowed"], var_name="held as", value_name="price units")
        sns.lineplot(totals, x="step", y="price units", hue="held as", ax=axes[0])
        axes[0].set(title="peers' money (all peers)", xlabel="step", ylabel="price units (log)", yscale="log")
        concentration = money.melt("step", ["balance_gini", "stake_gini"], var_name="of", value_name="Gini")
        sns.lineplot(concentration, x="step", y="Gini", hue="of", ax=axes[1])
        axes[1].set(title="concentration over peers", xlabel="step", ylabel="Gini coefficient", ylim=(-0.02, 1))
        by_stage = summary["ledger"]["sharding"] == "stage"  # then shard s settles Layer s + 1
        latency = shards.assign(shard=shards["shard"].map(
            lambda s: f"shard {s} ({layer_name(s)})" if by_stage else f"shard {s}"))
        sns.lineplot(latency, x="step", y="confirmation_latency", hue="shard", ax=axes[2])
        axes[2].set(title="confirmation latency", xlabel="step", ylabel="slots waited (mean since last record)")
        fig.suptitle(f"{run_dir.name}: payments={summary['ledger']['payments']}, "
                     f"sharding={summary['ledger']['sharding']}, conserved={summary['ledger']['conserved']}")
    return _save(fig, Path(out or run_dir), f"ledger_money_{run_dir.name}")


def plot_ledger_sweep(multirun_dir: Path, out: Path | None = None) -> list[Path]:
    """``ledger_shards`` and ``ledger_payments`` from a sweep over stages, sharding and payments."""
    multirun_dir = Path(multirun_dir)
    runs = collect(multirun_dir).complete_runs
    needed = ["network.stages", "ledger.sharding", "ledger.payments", "ledger_mean_confirmation_latency_slots"]
    missing = [name for name in needed if name not in runs.columns]
    if missing or runs.empty:
        raise ValueError(f"multirun_dir = {str(multirun_dir)!r} has no complete ledger runs with {missing or needed}: "
                         "allowed a sweep such as p2pllm-sim -m sweep=ledger")
    runs = runs.assign(stages=runs["network.stages"].astype(int),
                       locked=(runs["ledger_escrow_locked"] + runs["ledger_channel_locked"]) / runs["ledger.unit"])
    out = Path(out or multirun_dir / "figures")
    paths = []
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.lineplot(runs, x="stages", y="ledger_mean_confirmation_latency_slots", hue="ledger.sharding",
                     style="ledger.payments", markers=True, ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set(xlabel="model stages (= shards when sharded by stage)", ylim=(0, None),
               ylabel="mean confirmation latency (slots, symlog)", title="chain latency vs shards")
        ax.set_xticks(sorted(runs["stages"].unique()), labels=sorted(runs["stages"].unique()))
        ax.xaxis.set_minor_formatter(NullFormatter())
        paths += _save(fig, out, "ledger_shards")
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        sns.barplot(runs, x="stages", y="ledger_onchain_tx_per_request", hue="ledger.payments", ax=axes[0],
                    errorbar=None)
        axes[0].set(yscale="log", xlabel="model stages", ylabel="on-chain transactions sent per request",
                    title="on-chain load")
        sns.barplot(runs, x="stages", y="locked", hue="ledger.payments", ax=axes[1], errorbar=None)
        axes[1].set(yscale="log", xlabel="model stages", ylabel="locked at the end (price units)",
                    title="locked liquidity (escrow or channel deposits)")
        paths += _save(fig, out, "ledger_payments")
    return paths


def draw(source: Path, out: Path | None = None) -> list[Path]:
    """A run directory (with summary.json) gives the run figure; any other directory the sweep's."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source = {str(source)!r} is not a directory: allowed a ledger run or sweep directory")
    return plot_ledger_run(source, out) if (source / "summary.json").is_file() else plot_ledger_sweep(source, out)
