"""Mechanism design by gradients: the cheapest spot-check protocol that keeps honesty a best response
(p2pllm_abm/design.py), checked in the full simulation against every modelled behaviour.

    python -m experiments.mechanism_design --out DIR        # or: key=value overrides of
    python -m experiments.mechanism_design steps=100 seeds=[0] behaviours=[lazy,adaptive]

1. A run of the default protocol gives the market (price and compute per hop, hops per peer).
2. The design minimises verification overhead + the bond's cost of capital + jackpots subject to
   incentive compatibility (every remaining horizon, every cheat rate; the verifier's dilemma),
   the bond holding the penalties and participation, by an augmented Lagrangian solved with Adam
   (optax) through the JAX model of expected profits, from several starts; then again for each
   margin of ``frontier_margins`` (the frontier).
3. The designed and the default protocol run in the full model, for every behaviour and seed:
   the realised gain of the dishonest peers over their matched honest peers, and the realised
   verification overhead.

Writes ``DIR/design.json`` (blocks ``designed`` and ``default``: parameters, ``verification_overhead``,
``max_deviation_gain``, per-behaviour gains), ``DIR/checks.parquet`` (one row per run),
``DIR/frontier.parquet`` and ``DIR/frontier.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.cli import quiet_library_logs
from p2pllm_abm.config import Config
from p2pllm_abm.design import Design, Market, constraints, cost, optimise, verification_overhead

from .settings import load_settings


def protocol_overrides(design: Design, defaults: Config) -> list[str]:
    """The config overrides that run ``design`` (stake in base units, warm-up in whole hops). The stake
    is also the minimum bond: a sybil identity posts no less than any peer (with a cheaper minimum,
    sybils would face a smaller slash than the design assumes)."""
    unit = defaults.ledger.unit
    stake = max(int(round(design.stake * unit)), 1)
    return ["verification=spot_check", f"verification.probability={design.probability:.6g}",
            f"verification.warmup={int(round(design.warmup))}", f"ledger.initial_stake={stake}",
            f"ledger.min_stake={stake}",
            f"verification.slash_fraction={design.slash_fraction:.6g}", f"ledger.sla_penalty={design.sla_penalty:.6g}",
            f"verification.forced_error_rate={design.forced_error_rate:.6g}",
            f"verification.jackpot={design.jackpot:.6g}"]


def default_design(defaults: Config) -> Design:
    """The shipped spot check (conf/verification/spot_check.yaml) as a :class:`Design`."""
    ver = load_config("paper_table1", overrides=["ledger.enabled=true", "verification=spot_check"]).verification
    led = defaults.ledger
    return Design(probability=ver.probability, warmup=float(ver.warmup), stake=led.initial_stake / led.unit,
                  slash_fraction=ver.slash_fraction, sla_penalty=led.sla_penalty,
                  forced_error_rate=ver.forced_error_rate, jackpot=ver.jackpot)


def simulate(cfg: DictConfig, overrides: list[str], behaviour: str, seed: int, counterfactual: bool = False) -> dict:
    """One run: the security block of ``behaviour`` at ``adversary_share`` under ``overrides`` (with
    ``counterfactual``, the same peers drawn but honest: the paired baseline)."""
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", f"run.steps={cfg.steps}", "report.reference=null", *cfg.market_overrides,
        *overrides, f"adversary.behaviour={behaviour}", f"adversary.fraction={cfg.adversary_share}", f"seed={seed}",
        f"adversary.counterfactual={str(counterfactual).lower()}"]))
    model.run(cfg.steps)
    return model.security.summary()


def market_of(cfg: DictConfig, defaults: Config) -> Market:
    """The market the design is for, read off a run of the default protocol with lazy peers."""
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", f"run.steps={cfg.steps}", "report.reference=null", *cfg.market_overrides,
        "verification=spot_check", "adversary.behaviour=lazy", f"adversary.fraction={cfg.adversary_share}"]))
    model.run(cfg.steps)
    protocol = model.security.protocol()
    return Market(price=protocol.price, cost=protocol.cost, horizon=protocol.horizon, steps=float(cfg.steps),
                  check_hops=float(defaults.network.stages), fn=model.security.verifier.fn,
                  cost_of_capital=float(cfg.cost_of_capital))


def check(cfg: DictConfig, name: str, overrides: list[str]) -> pd.DataFrame:
    """Every behaviour and seed under the protocol ``overrides`` in the full model: one row per pair of runs. The gain
    is paired: the dishonest peers' profit per peer minus the same peers' profit in the counterfactual
    run (same seed and draws, the same peers honest); the matched-honest difference is kept beside it."""
    rows = []
    runs = [(b, s) for b in cfg.behaviours for s in cfg.seeds]
    for behaviour, seed in tqdm(runs, desc=f"{name} protocol", unit="pair"):
        block = simulate(cfg, overrides, behaviour, seed)
        baseline = simulate(cfg, overrides, behaviour, seed, counterfactual=True)
        if block["cheater_profit_per_peer"] is None:  # no peer drew the behaviour (or none stayed honest)
            raise SystemExit(f"{behaviour} at adversary_share = {cfg.adversary_share}: no dishonest or no honest "
                             "peer to compare; allowed a share that gives both")
        rows.append({"protocol": name, "behaviour": behaviour, "seed": seed,
                     "gain": block["cheater_profit_per_peer"] - baseline["designated_profit_per_peer"],
                     "deviator_profit": block["cheater_profit_per_peer"],
                     "counterfactual_profit": baseline["designated_profit_per_peer"],
                     "matched_gain": block["cheater_profit_per_peer"] - block["honest_profit_per_peer"],
                     "cheats": block["cheats"], "caught": block["caught"], "skipped_checks": block["skipped_checks"],
                     "slashed_honest": block["slashed_honest"], "verification_overhead": block["verification_overhead"]})
    return pd.DataFrame(rows)


def block_of(design: Design, market: Market, checks: pd.DataFrame, margin: float) -> dict:
    """A protocol's block of design.json."""
    gains = checks.groupby("behaviour")["gain"].agg(["mean", "sem", "count"])
    return {"parameters": design._asdict(), "verification_overhead": float(checks["verification_overhead"].mean()),
            "model_verification_overhead": float(verification_overhead(design, market)),
            "model_cost": float(cost(design, market)),
            "model_constraints": dict(zip(("incentive", "verifier_dilemma", "bond", "participation"),
                                          np.asarray(constraints(design, market, margin)).tolist())),
            "max_deviation_gain": float(gains["mean"].max()),
            "deviation_gain": {b: {"mean": float(r["mean"]), "sem": float(r["sem"]) if r["count"] > 1 else None}
                               for b, r in gains.iterrows()},
            "slashed_honest": int(checks["slashed_honest"].sum())}


def frontier(cfg: DictConfig, market: Market) -> pd.DataFrame:
    """The designed cost and overhead at each required deterrence margin."""
    rows = []
    for margin in tqdm(cfg.frontier_margins, desc="frontier", unit="margin"):
        found = optimise(market, margin=float(margin), starts=cfg.starts)
        rows.append({"margin": float(margin), "cost": found.cost, "feasible": found.feasible,
                     "starts_feasible": found.starts_feasible,
                     "verification_overhead": float(verification_overhead(found.design, market)),
                     **{f"design_{k}": v for k, v in found.design._asdict().items()}})
    return pd.DataFrame(rows)


def plot_frontier(front: pd.DataFrame, designed: dict, default: dict, default_margin: float, cfg: DictConfig,
                  path: Path) -> Path:
    """Overhead against deterrence margin: the frontier, the designed and the default protocol."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ok = front[front["feasible"]]
    ax.plot(ok["margin"], ok["verification_overhead"], "o-", label="cheapest design (model)")
    ax.plot([cfg.margin], [designed["verification_overhead"]], "s", ms=9, label="designed, simulated")
    dilemma = "open" if default["model_constraints"]["verifier_dilemma"] > 0 else "closed"
    ax.plot([default_margin], [default["verification_overhead"]], "D", ms=9,
            label=f"default spot check, simulated (verifier's dilemma {dilemma})")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_yscale("log")
    ax.set_xlabel("deterrence margin m_d (gain per cheated hop <= -m_d c)")
    ax.set_ylabel("verification overhead")
    ax.legend(loc="center left", fontsize=8)
    fig.text(0.01, 0.005, f"Overhead: compute re-executed / compute served. Table 1 network, equal costs, {cfg.steps} "
             f"steps, r = {cfg.cost_of_capital}/step;\nsimulated points: mean over {len(cfg.behaviours)} behaviours x "
             f"{len(cfg.seeds)} seeds; line: the cheapest design at each margin (model)", fontsize=7, ha="left",
             va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad setting in one line naming it, its value and what is allowed."""
    def require(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise SystemExit(f"{name} = {cfg.get(name)!r} is invalid: allowed {allowed}")

    def number(name: str) -> float:
        value = cfg.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")

    require(isinstance(cfg.steps, int) and cfg.steps >= 1, "steps", "an integer >= 1")
    require(np.isfinite(number("cost_of_capital")) and number("cost_of_capital") >= 0, "cost_of_capital",
            "a number >= 0 (per step, on the bond)")
    require(np.isfinite(number("margin")) and number("margin") >= 0, "margin", "a number >= 0")
    require(np.isfinite(number("adversary_share")) and 0 < number("adversary_share") < 1, "adversary_share",
            "a share in (0, 1)")
    require(isinstance(cfg.starts, int) and cfg.starts >= 1, "starts", "an integer >= 1")
    require(len(cfg.seeds) >= 1 and len(cfg.behaviours) >= 1, "seeds", "at least one seed and one behaviour")


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.mechanism_design [--out DIR] [key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" in args:
        k = args.index("--out")
        if k + 1 >= len(args):
            raise SystemExit("--out needs a directory: python -m experiments.mechanism_design --out DIR")
        args[k:k + 2] = [f"out_dir={args[k + 1]}"]
    cfg, out = load_settings("mechanism_design", args)
    check_settings(cfg)
    quiet_library_logs()
    defaults = load_config("paper_table1")
    market = market_of(cfg, defaults)
    found = optimise(market, margin=float(cfg.margin), starts=cfg.starts)
    if not found.feasible:
        raise SystemExit(f"no feasible design at margin {cfg.margin}: constraints {np.asarray(found.constraints)}")
    default = default_design(defaults)
    checks = pd.concat([check(cfg, "designed", protocol_overrides(found.design, defaults)),
                        check(cfg, "default", ["verification=spot_check"])], ignore_index=True)  # the default as shipped
    designed_block = block_of(found.design, market, checks[checks["protocol"] == "designed"], float(cfg.margin))
    default_block = block_of(default, market, checks[checks["protocol"] == "default"], float(cfg.margin))
    default_margin = -float(constraints(default, market, 0.0)[0])
    front = frontier(cfg, market)
    record = {"market": market._asdict(), "margin": float(cfg.margin), "starts": cfg.starts,
              "starts_feasible": found.starts_feasible, "designed": designed_block,
              "default": {**default_block, "model_margin": default_margin},
              "overhead_ratio": designed_block["verification_overhead"] / default_block["verification_overhead"]}
    (out / "design.json").write_text(json.dumps(record, indent=2, allow_nan=False))
    checks.to_parquet(out / "checks.parquet", index=False)
    front.to_parquet(out / "frontier.parquet", index=False)
    figure = plot_frontier(front, designed_block, default_block, default_margin, cfg, out / "frontier.png")
    print(json.dumps({k: record[k] for k in ("margin", "overhead_ratio")}, indent=1))
    for name in ("designed", "default"):
        block = record[name]
        print(f"{name}: overhead {block['verification_overhead']:.4f}, max deviation gain "
              f"{block['max_deviation_gain']:.2f} per peer; parameters {block['parameters']}")
    print(checks.groupby(["protocol", "behaviour"])["gain"].mean().unstack(0).round(2).to_string())
    print(f"Wrote {out / 'design.json'}, {out / 'checks.parquet'}, {out / 'frontier.parquet'}, {figure}")


if __name__ == "__main__":
    main()
