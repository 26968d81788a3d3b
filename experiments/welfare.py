"""Welfare experiment: how much surplus does the paper's price competition lose, and to whom?

    python -m experiments.welfare                          # about 1 minute here
    python -m experiments.welfare seeds=[0] alphas=[0.5]   # smaller

On the paper's Table 1 network (``experiments/conf/welfare.yaml``; the allocation eq. 7-8 reach
after ``steps`` steps, one per seed), every stage's price equilibrium is solved (Newton, certified)
for each temperature x alpha x outside option, and :func:`p2pllm_abm.welfare.welfare` measures
consumer surplus, compute time bought, revenue, social welfare, the planner's welfare (prices at
marginal cost), deadweight loss, the price of anarchy (with an outside option), HHI, markups and
elasticities. Writes into ``out_dir``: ``welfare.parquet`` (one row per seed x T x alpha x
outside option: totals over stages, HHI and markups averaged over stages), ``welfare.md`` (the
paper's setting and the sweep's means) and ``welfare_vs_T_alpha.png``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from p2pllm_abm import load_config  # noqa: E402
from p2pllm_abm.calibration import allocation_schedule  # noqa: E402
from p2pllm_abm.economics import MarketParams  # noqa: E402
from p2pllm_abm.equilibrium import solve_equilibrium  # noqa: E402
from p2pllm_abm.welfare import welfare  # noqa: E402

from .security import markdown  # noqa: E402
from .settings import load_settings  # noqa: E402

#: welfare quantities summed over stages; the others are averaged over stages
TOTALS = ("consumer_surplus", "compute_time_bought", "revenue", "producer_surplus", "social_welfare",
          "planner_welfare", "deadweight_loss")
AVERAGES = ("hhi", "markup", "lerner", "elasticity")


def equilibrium_welfare(cost, stage, alive, n_stages: int, temperature: float, alpha: float,
                        outside: float | None) -> dict[str, float]:
    """Totals of one certified equilibrium's welfare."""
    params = MarketParams(alpha, temperature, 1.0, 1.0, 0.0, 0.0, np.inf if outside is None else outside)
    run = solve_equilibrium("newton", np.full(len(cost), temperature / alpha), cost, stage, alive, params, n_stages)
    if not run.converged:
        raise RuntimeError(f"no certified equilibrium at T = {temperature}, alpha = {alpha}: {run.message}")
    got = welfare(run.price, cost, stage, alive, params, n_stages)
    row = {name: float(np.sum(getattr(got, name))) for name in TOTALS}
    row.update({name: float(np.mean(getattr(got, name))) for name in AVERAGES})
    row["price_of_anarchy"] = row["planner_welfare"] / row["social_welfare"] if outside is not None else None
    row["mean_price"] = float(np.mean(np.asarray(run.price)[alive]))
    row["deadweight_loss_per_revenue"] = row["deadweight_loss"] / row["revenue"]  # independent of surplus's zero
    return row


def sweep(cfg: DictConfig) -> pd.DataFrame:
    rows = []
    for seed in tqdm(cfg.seeds, desc="welfare seeds", unit="seed"):
        network = load_config(cfg.experiment, overrides=[*cfg.overrides, f"seed={seed}", "clients.count=0"])
        schedule = allocation_schedule(network, cfg.steps)
        stage, n_stages = schedule.stages[-1], network.network.stages
        for temperature, alpha, outside in itertools.product(cfg.temperatures, cfg.alphas, cfg.outside_options):
            rows.append({"seed": seed, "temperature": temperature, "alpha": alpha,
                         "outside_option": "none" if outside is None else f"w0 = {outside:g}",
                         **equilibrium_welfare(schedule.cost, stage, schedule.alive, n_stages, temperature, alpha,
                                               outside)})
    return pd.DataFrame(rows)


def report(frame: pd.DataFrame, cfg: DictConfig) -> str:
    setting = frame[(frame["temperature"] == cfg.paper_setting.temperature) & (frame["alpha"] == cfg.paper_setting.alpha)]
    columns = ["consumer_surplus", "compute_time_bought", "revenue", "social_welfare", "planner_welfare",
               "deadweight_loss", "deadweight_loss_per_revenue", "price_of_anarchy", "hhi", "markup", "elasticity",
               "mean_price"]
    at_paper = setting.groupby("outside_option")[columns].mean().astype(object)
    at_paper = at_paper.where(at_paper.notna(), "n/a (no zero)")
    by_t = frame.groupby(["outside_option", "temperature"])[["deadweight_loss", "deadweight_loss_per_revenue",
                                                              "consumer_surplus", "revenue", "hhi"]].mean()
    lines = [f"Welfare at the paper's setting (T = {cfg.paper_setting.temperature}, alpha = {cfg.paper_setting.alpha}; "
             f"totals over the 4 stages per unit demand, mean over seeds {list(cfg.seeds)}):", "",
             markdown(at_paper.T.rename_axis("quantity").reset_index()), "",
             "By temperature (mean over alphas and seeds):", "", markdown(by_t.reset_index()), ""]
    return "\n".join(lines)


def plot(frame: pd.DataFrame, path: Path) -> Path:
    panels = [("deadweight_loss", "none", "deadweight loss", "price units per unit demand"),
              ("price_of_anarchy", None, "price of anarchy W*/W", "ratio"),
              ("consumer_surplus", None, "consumer surplus", "price units per unit demand"),
              ("revenue", None, "peers' revenue", "price units per unit demand"),
              ("hhi", None, "HHI of request shares", "index, 0-10,000"),
              ("markup", None, "share-weighted markup", "price units")]
    outside = sorted(o for o in frame["outside_option"].unique() if o != "none")
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for ax, (column, option, title, unit) in zip(axes.ravel(), panels):
            option = option or (outside[0] if column == "price_of_anarchy" and outside else "none")
            data = frame[frame["outside_option"] == option]
            if data[column].notna().any():
                sns.lineplot(data=data, x="temperature", y=column, hue="alpha", marker="o", ax=ax,
                             palette="viridis", errorbar=("pi", 90))
            ax.set(title=title + (", no outside option" if option == "none" else f", {option}"), xlabel="temperature T",
                   ylabel=unit)
        fig.suptitle("Equilibrium welfare of the Table 1 network vs T and alpha (totals over stages, per unit "
                     "demand; bands: 90% over seeds)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.welfare key=value ...``: overrides of experiments/conf/welfare.yaml."""
    cfg, out = load_settings("welfare", argv)
    frame = sweep(cfg)
    frame.to_parquet(out / "welfare.parquet", index=False)
    text = report(frame, cfg)
    (out / "welfare.md").write_text(text)
    print(text)
    print(out / "welfare.parquet")
    print(plot(frame, out / "welfare_vs_T_alpha.png"))


if __name__ == "__main__":
    main()
