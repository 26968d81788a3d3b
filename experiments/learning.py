"""Learning experiment: can peers find the equilibrium price without knowing their demand?

    python -m experiments.learning                      # about 1 minute here
    python -m experiments.learning seeds=[0] steps=1000 # smaller

Eq. 5 moves a price by ``eta dR_i/dp_i``, which needs the choice probability ``P_i``: a peer would
have to know every rival's price and cost and the clients' alpha and T. The ``observed`` rule
(:func:`p2pllm_abm.dynamics.observed_update`) sees only its own realised revenue at a randomly
perturbed price. On the same networks (``experiments/conf/learning.yaml``) both run, and every
record's distance to the certified equilibrium of the same stages (Newton) and relative Nash gap are
compared. Writes ``learning.parquet`` (one row per run and record), ``learning.md`` and
``learning_vs_eq5.png`` into ``out_dir``.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from p2pllm_abm import P2PLLMModel, load_config  # noqa: E402
from p2pllm_abm.equilibrium import solve_equilibrium  # noqa: E402

from .security import markdown  # noqa: E402
from .settings import load_settings  # noqa: E402



def run(cfg: DictConfig, seed: int, rule: str, eta: float | None) -> pd.DataFrame:
    """One run's records: step, mean relative distance of prices to the equilibrium, max relative gap."""
    overrides = [*cfg.overrides, f"seed={seed}", f"market.update_rule={rule}", f"run.steps={cfg.steps}",
                 f"run.record_interval={cfg.record_interval}", "report.table_steps=[0]", "run.progress=false",
                 f"market.exploration={cfg.exploration}", f"market.baseline_rate={cfg.baseline_rate}",
                 *([f"market.eta={eta}"] if eta is not None else [])]
    model = P2PLLMModel(load_config(cfg.experiment, overrides=overrides))
    env = model.engine.environment
    target = solve_equilibrium("newton", np.full(len(model.peers.price), 2.0), env.cost, env.stage, env.alive,
                               model.market_params, model.peers.n_stages)
    if not target.converged:
        raise RuntimeError(f"no certified equilibrium for seed {seed}: {target.message}")
    model.run(cfg.steps)
    peers = model.peers_frame()
    index = pd.Series(np.arange(len(model.peer_unique_ids)), index=model.peer_unique_ids)
    equilibrium = np.asarray(target.price)[index.loc[peers["agent_id"]].to_numpy()]
    peers["distance"] = np.abs(peers["price"] - equilibrium) / equilibrium
    rows = model.metrics_frame()
    gap = rows[rows["scope"] == "stage"].groupby("step")["relative_nash_gap"].max()
    frame = peers.groupby("step")["distance"].mean().to_frame("distance").join(gap).reset_index()
    label = "eq. 5 (knows P_i)" if rule == "gradient" else f"observed, eta = {eta:g}"
    return frame.assign(seed=seed, rule=rule, eta=float(model.market_params.eta), label=label)


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.learning key=value ...``: overrides of experiments/conf/learning.yaml."""
    cfg, out = load_settings("learning", argv)
    plan = [(seed, "gradient", None) for seed in cfg.seeds] + [(seed, "observed", eta) for seed in cfg.seeds
                                                                for eta in cfg.etas]
    frame = pd.concat([run(cfg, *item) for item in tqdm(plan, desc="learning runs", unit="run")], ignore_index=True)
    frame.to_parquet(out / "learning.parquet", index=False)
    final = frame[frame["step"] == frame["step"].max()]
    table = final.groupby("label")[["distance", "relative_nash_gap"]].agg(["median", "max"])
    table.columns = [f"{a} ({b})" for a, b in table.columns]
    text = (f"Prices at step {cfg.steps} vs the certified equilibrium ({cfg.experiment}, {list(cfg.overrides)}; "
            f"seeds {list(cfg.seeds)}): mean |p - p*| / p* and the max relative Nash gap\n\n"
            + markdown(table.reset_index()) + "\n")
    (out / "learning.md").write_text(text)
    print(text)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        plotted = frame[np.isfinite(frame["distance"]) & (frame["distance"] < 10)]
        for ax, column, label in ((axes[0], "distance", "mean |p - p*| / p*"),
                                  (axes[1], "relative_nash_gap", "max relative Nash gap")):
            sns.lineplot(data=plotted, x="step", y=column, hue="label", ax=ax, errorbar=("pi", 90))
            ax.set(yscale="log", xlabel="step", ylabel=label)
        fig.suptitle("Eq. 5 vs prices learned from realised revenue (bands: 90% of seeds; runs that left [0, 10] "
                     "are cut off)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "learning_vs_eq5.png", dpi=150)
        plt.close(fig)
    print(out / "learning.parquet")
    print(out / "learning_vs_eq5.png")


if __name__ == "__main__":
    main()
