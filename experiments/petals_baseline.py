"""The paper's market against Petals' rules on the same networks under load, churn and failures.

    python -m experiments.petals_baseline                       # about 2 minutes here
    python -m experiments.petals_baseline seeds=[0] steps=200   # smaller

Each system (``experiments/conf/petals_baseline.yaml``) runs the same network per seed with the same
load, churn and failures:

- ``market``: the paper (per-stage logit choice on price and compute cost, eq. 5 prices, eq. 7-8 layers);
- ``market_load_aware``: the same, clients also weighing each peer's expected queue wait;
- ``petals``: Petals' min-latency routing (compute + latency + 18 ms per hop; no price, no load) and
  its block selection with ``balance_quality`` 0.75 (``clients.routing=petals``, ``allocation.rule=petals``).

Per run it measures throughput (requests served per step by the bottleneck stage, the pipeline's
service rate: the smallest stage ``throughput`` of each record after ``burn_in``, averaged; requests
beyond it wait in queues), the p95 request time (median over
the records after ``burn_in`` of each record's p95), load imbalance (the coefficient of variation of
the live peers' utilisation, averaged over those records), the share of requests dropped, and what
peers earn (mean cumulative revenue of the peers present at the end, and its Gini coefficient).
Writes into ``out_dir``: ``comparison.parquet`` (one row per system and seed), ``comparison.md``
(means and seed ranges), ``petals_comparison.png`` and ``petals_p95_over_time.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from p2pllm_abm import P2PLLMModel, load_config  # noqa: E402
from p2pllm_abm.metrics import class_rows, request_summary, stage_rows  # noqa: E402

from .security import markdown  # noqa: E402
from .settings import load_settings  # noqa: E402

#: the comparison's measures: column, axis label
MEASURES = {
    "throughput": "requests served per step (bottleneck stage)",
    "p95_time_ms": "p95 request time (ms)",
    "load_imbalance": "load imbalance (CV of peer utilisation)",
    "dropped_share": "requests dropped (share)",
    "mean_earnings": "mean revenue per peer (price units)",
    "earnings_gini": "Gini of peer revenue",
}


def gini(values: np.ndarray) -> float:
    """The Gini coefficient of non-negative ``values`` (0: equal, towards 1: one holds all)."""
    values = np.sort(np.asarray(values, dtype=float))
    if len(values) == 0 or values.sum() == 0:
        return float("nan")
    ranks = np.arange(1, len(values) + 1)
    return float((2 * ranks - len(values) - 1) @ values / (len(values) * values.sum()))


def measure(model: P2PLLMModel, burn_in: int) -> tuple[dict[str, float], pd.DataFrame]:
    """One run's measures (:data:`MEASURES`) and its p95 request time per record."""
    requests = request_summary(model.outcomes)
    stages = stage_rows(model.metrics_frame())
    served = stages[stages["step"] >= burn_in].groupby("step")["throughput"].min().astype(float)
    classes = class_rows(model.metrics_frame())
    classes = classes[classes["path_requests"] > 0]
    over_time = (classes.groupby("step")["request_time_p95"].max().astype(float).rename("p95_time_ms").reset_index())
    late = over_time[over_time["step"] >= burn_in]
    peers = model.peers_frame()
    peers = peers[(peers["step"] >= burn_in) & peers["alive"]]
    imbalance = peers.groupby("step")["utilisation"].agg(lambda u: np.nanstd(u) / np.nanmean(u)).mean()
    present = model.peers.present
    return {
        "throughput": float(served.mean()),
        "p95_time_ms": float(late["p95_time_ms"].median()),
        "load_imbalance": float(imbalance),
        "dropped_share": requests["dropped"] / requests["sent"],
        "mean_earnings": float(model.peers.revenue[present].mean()),
        "earnings_gini": gini(model.peers.revenue[present]),
        "failed_over": requests["failed_over"],
        "moves": model.moves,
    }, over_time


def compare(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every system on every seed: the measures (one row each) and the p95 time per record."""
    rows, series = [], []
    jobs = [(system, seed) for seed in cfg.seeds for system in cfg.systems]
    for system, seed in tqdm(jobs, desc="petals baseline", unit="run"):
        config = load_config(cfg.experiment, overrides=[*cfg.overrides, *cfg.systems[system], f"seed={seed}",
                                                        f"run.steps={cfg.steps}", "run.progress=false"])
        model = P2PLLMModel(config)
        model.run(cfg.steps)
        measures, over_time = measure(model, cfg.burn_in)
        rows.append({"system": system, "seed": seed, **measures})
        series.append(over_time.assign(system=system, seed=seed))
    return pd.DataFrame(rows), pd.concat(series, ignore_index=True)


def report(frame: pd.DataFrame, cfg: DictConfig) -> str:
    columns = list(MEASURES)
    mean = frame.groupby("system", sort=False)[columns].mean()
    low = frame.groupby("system", sort=False)[columns].min()
    high = frame.groupby("system", sort=False)[columns].max()
    table = mean.copy().astype(object)
    for column in columns:
        table[column] = [f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in zip(mean[column], low[column], high[column])]
    return "\n".join([
        f"The paper's market vs Petals' rules: {len(cfg.seeds)} seeds x {cfg.steps} steps of {cfg.experiment} with "
        f"{' '.join(cfg.overrides)}; mean [min, max] over seeds.", "",
        markdown(table.reset_index()), ""])


def plot_comparison(frame: pd.DataFrame, path: Path) -> Path:
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for ax, (column, label) in zip(axes.ravel(), MEASURES.items()):
            sns.barplot(data=frame, x="system", y=column, hue="system", errorbar=("pi", 100), ax=ax, legend=False,
                        palette="colorblind")
            sns.stripplot(data=frame, x="system", y=column, color="black", size=3, ax=ax)
            ax.set(xlabel="", ylabel=label, title=label)
            if column == "p95_time_ms":
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)  # counts and shares (a panel of zeros reads as zero, not as +-0.04)
        fig.suptitle("The paper's market vs Petals' rules under load, churn and failures (bars: mean over seeds; "
                     "lines: seed range; dots: seeds)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return path


def plot_over_time(series: pd.DataFrame, path: Path) -> Path:
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.lineplot(data=series, x="step", y="p95_time_ms", hue="system", errorbar=("pi", 100), marker="o", ax=ax,
                     palette="colorblind")
        ax.set(yscale="log", xlabel="step", ylabel="p95 request time (ms)",
               title="p95 request time per record (band: seed range)")
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.petals_baseline key=value ...``: overrides of experiments/conf/petals_baseline.yaml."""
    cfg, out = load_settings("petals_baseline", argv)
    frame, series = compare(cfg)
    frame.to_parquet(out / "comparison.parquet", index=False)
    text = report(frame, cfg)
    (out / "comparison.md").write_text(text)
    print(text)
    print(out / "comparison.parquet")
    print(plot_comparison(frame, out / "petals_comparison.png"))
    print(plot_over_time(series, out / "petals_p95_over_time.png"))


if __name__ == "__main__":
    main()
