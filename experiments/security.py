"""Security experiment: can verification and slashing keep cheaters out of the market?

    python -m experiments.security                       # the default size, about 4 minutes here
    python -m experiments.security steps=300 seeds=[0]   # smaller

On the paper's Table 1 network with the ledger on (``experiments/conf/security.yaml``):

(a) spot checks with uniform sampling: rate p x adversary share (lazy peers) x slash fraction,
    without forced exit (a slashed peer stays while its bond covers ``ledger.min_stake``);
(b) every mechanism at its defaults against 20% lazy peers and against 20% colluding + sybil peers,
    and the default spot check (warm-up included) against 10%, 20% and 30% lazy peers;
(c) honest false slashing: exact SHA-256 vs top-k fingerprints, with and without the referee
    (rates measured by ``python -m torch_backend.fingerprints``, shipped in conf/fingerprints/);
(d) the deterrence threshold: equal costs, lazy peers that always cheat, a fixed slash S and no
    forced exit; the p at which a lazy peer's profit per hop falls below an honest one's, next to
    the closed form ``p* = c / ((1 - FN)(price + S))``;
(e) redundancy against colluders of stake share beta: how often a colluding primary's wrong output
    passes k replicas, next to ``beta^(k-1)``.

Writes into ``out_dir``: ``runs.parquet`` (one row per run: its parameters and summary.json's
``security`` block), ``over_time.parquet`` (behaviour rows and stake Gini of every run),
``deterrence.parquet``, ``collusion.parquet``, ``fingerprints.parquet``, ``security.md`` (the
tables printed) and the figures of :mod:`experiments.security_figures`.
"""

from __future__ import annotations

import itertools
import json


import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.behaviours import CODE, COLLUDERS
from p2pllm_abm.cli import quiet_library_logs
from p2pllm_abm.config import VerificationConfig, resolve_fingerprints
from p2pllm_abm.metrics import chain_rows
from p2pllm_abm.verification import Hops, Verifier, fingerprint_rates, minimal_sampling_rate

from .security_figures import plot_all
from .settings import load_settings



def run(overrides: list[str], steps: int) -> tuple[dict, pd.DataFrame]:
    """One model run: its security block and its behaviour rows with the stake Gini over time."""
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", f"run.steps={steps}", "report.reference=null", *overrides]))
    model.run(steps)
    metrics = model.metrics_frame()
    behaviour = metrics[metrics["scope"] == "behaviour"].dropna(axis=1, how="all")
    gini = chain_rows(metrics)[["step", "stake_gini"]]
    over_time = behaviour.merge(gini, on="step", how="left")
    return model.security.summary(), over_time


def grid(cfg: DictConfig) -> list[tuple[str, dict, list[str], int]]:
    """Every run of parts (a)-(c): (part, parameters, overrides, steps)."""
    runs = []
    base = [f"adversary.cheat_probability={cfg.cheat_probability}"]
    for p, share, slash, seed in itertools.product(cfg.sampling_rates, cfg.adversary_shares, cfg.slash_fractions,
                                                   cfg.seeds):
        params = {"p": p, "adversary_share": share, "slash_fraction": slash, "seed": seed}
        runs.append(("a", params, [*base, "verification=spot_check", "verification.warmup=0",
                                   "verification.exit_on_slash=false",
                                   f"verification.probability={p}", f"adversary.fraction={share}",
                                   f"verification.slash_fraction={slash}", f"seed={seed}"], cfg.steps))
    for mechanism, adversary, seed in itertools.product(cfg.mechanisms, ("lazy", "colluding+sybil"), cfg.seeds):
        kinds = (["adversary.behaviour=lazy"] if adversary == "lazy" else
                 ["adversary.behaviour=mix", "adversary.mix.colluding=1", "adversary.mix.sybil=1"])
        params = {"mechanism": mechanism, "adversary": adversary, "seed": seed}
        runs.append(("b", params, [*base, *kinds, f"verification={mechanism}", "adversary.fraction=0.2",
                                   f"seed={seed}"], cfg.steps))
    for share, seed in itertools.product(cfg.target_shares, cfg.seeds):  # the targets: default spot checks
        params = {"adversary_share": share, "seed": seed}
        runs.append(("t", params, [*base, "verification=spot_check", f"adversary.fraction={share}", f"seed={seed}"],
                     cfg.steps))
    for mechanism, behaviour, seed in itertools.product(cfg.mechanisms, cfg.strategic, cfg.seeds):
        params = {"mechanism": mechanism, "adversary": behaviour, "seed": seed}
        runs.append(("s", params, [*base, f"adversary.behaviour={behaviour}", f"verification={mechanism}",
                                   "adversary.fraction=0.2", f"seed={seed}"], cfg.steps))
    for rate, seed in itertools.product(cfg.dilemma.forced_error_rates, cfg.seeds):
        params = {"forced_error_rate": rate, "seed": seed}
        runs.append(("v", params, [*base, "verification=spot_check", "adversary.behaviour=lazy_verifier",
                                   "adversary.fraction=0.2",
                                   f"verification.forced_error_rate={rate}",
                                   f"verification.jackpot={cfg.dilemma.jackpot if rate > 0 else 0.0}",
                                   f"seed={seed}"], cfg.steps))
    for fingerprint, referee, seed in itertools.product(("exact", "topk"), (True, False), cfg.seeds):
        params = {"fingerprint": fingerprint, "referee": referee, "seed": seed}
        runs.append(("c", params, [*base, "verification=spot_check", f"verification.fingerprint={fingerprint}",
                                   f"verification.referee={str(referee).lower()}", "adversary.fraction=0.1",
                                   f"seed={seed}"], cfg.referee_steps))
    return runs


def deterrence(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """Part (d): profit per hop of lazy and honest peers vs p, the crossing, and p*."""
    d = cfg.deterrence
    unit = 10**6
    rows = []
    for p in tqdm(d.sampling_rates, desc="deterrence", unit="run"):
        _, over_time = run([
            f"network.cost_range=[{d.cost},{d.cost}]", f"adversary.fraction={d.adversary_share}",
            "adversary.cheat_probability=1.0", "verification=spot_check", "verification.warmup=0",
            f"verification.probability={p}", "verification.exit_on_slash=false",
            f"verification.slash_amount={int(d.slash * unit)}", f"verification.compute_price={d.compute_price}",
            "ledger.sla_penalty=0", f"ledger.initial_stake={10**12}", f"ledger.peer_endowment={2 * 10**12}"],
            cfg.steps)
        final = over_time[over_time["step"] == over_time["step"].max()].set_index("behaviour")
        honest_hops = final.loc["honest", "compute_cost"] / (d.cost * d.compute_price)
        lazy_hops = final.loc["lazy", "cheats"]
        rows.append({"p": p, "honest_hops": honest_hops, "lazy_hops": lazy_hops,
                     "price_per_hop": final.loc["honest", "wealth_change"] / honest_hops,
                     "honest_profit_per_hop": final.loc["honest", "profit"] / honest_hops,
                     "lazy_profit_per_hop": final.loc["lazy", "profit"] / lazy_hops,
                     "lazy_caught_share": final.loc["lazy", "caught"] / lazy_hops})
    frame = pd.DataFrame(rows)
    frame["advantage"] = frame["lazy_profit_per_hop"] - frame["honest_profit_per_hop"]
    _, fn = fingerprint_rates(VerificationConfig().fingerprint_profile, "topk")
    price = float(frame["price_per_hop"].mean())
    theory = minimal_sampling_rate(d.cost * d.compute_price, price, d.slash, fn)
    advantage, rates = frame["advantage"].to_numpy(), frame["p"].to_numpy()
    crossings = np.flatnonzero((advantage[:-1] > 0) & (advantage[1:] <= 0))
    simulated = float("nan")
    if len(crossings):
        k = crossings[0]
        simulated = rates[k] + advantage[k] * (rates[k + 1] - rates[k]) / (advantage[k] - advantage[k + 1])
    return frame, {"p_star": theory, "p_simulated": simulated, "price": price, "cost": d.cost * d.compute_price,
                   "slash": d.slash, "fn": fn, "relative_error": abs(simulated - theory) / theory}


def collusion(cfg: DictConfig) -> pd.DataFrame:
    """Part (e): the mechanism alone on one stage of 100 equal-stake peers, the market's choice always
    a colluder; the share of its wrong outputs that pass k replicas."""
    c, rows = cfg.collusion, []
    n = 100
    for share, k in itertools.product(c.shares, c.replicas):
        colluders = round(share * n)
        behaviour = np.where(np.arange(n) < colluders, CODE["colluding"], CODE["honest"]).astype(np.int8)
        owner = np.where(behaviour == CODE["colluding"], COLLUDERS, np.arange(n))
        verifier = Verifier(VerificationConfig(mechanism="redundancy", replicas=k), 1.0, 0.0,
                            np.random.default_rng(int(1000 * share) + k))
        hops = Hops(request=np.arange(c.hops), position=np.zeros(c.hops, np.int64), peer=np.zeros(c.hops, np.int64),
                    stage=np.zeros(c.hops, np.int64), cost=np.ones(c.hops))
        verdict = verifier.check(hops, behaviour, owner, np.full(n, 10**6), np.zeros(n, np.int64), c.hops, 1)
        rows.append({"beta": colluders / n, "replicas": k, "passed": float((verdict.cheated & ~verdict.caught).mean()),
                     "theory": (colluders / n) ** (k - 1), "committee_all_colluders": (colluders / n) ** k})
    return pd.DataFrame(rows)


def fingerprint_table() -> pd.DataFrame:
    data = json.loads(resolve_fingerprints(VerificationConfig().fingerprint_profile).read_text())
    return pd.DataFrame(data["variants"])[["mode", "batch", "threads", "exact_mismatch", "topk_mismatch"]]


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.security key=value ...``: overrides of experiments/conf/security.yaml
    (OmegaConf dot-list; each run composes conf/ through Hydra, so this is no Hydra app itself)."""
    cfg, out = load_settings("security", argv)
    quiet_library_logs()
    rows, over_time = [], []
    for run_id, (part, params, overrides, steps) in enumerate(tqdm(grid(cfg), desc="security runs", unit="run")):
        summary, history = run(overrides, steps)
        if part in ("s", "v") and summary["cheater_profit_per_peer"] is not None:  # the paired gain (counterfactual)
            baseline, _ = run([*overrides, "adversary.counterfactual=true"], steps)
            summary["paired_gain"] = summary["cheater_profit_per_peer"] - baseline["designated_profit_per_peer"]
        rows.append({**summary, "run_id": run_id, "part": part, **params})
        over_time.append(history.assign(run_id=run_id, part=part, **{k: str(v) for k, v in params.items()}))
    runs = pd.DataFrame(rows)
    history = pd.concat(over_time, ignore_index=True)
    deter, threshold = deterrence(cfg)
    colluders = collusion(cfg)
    fingerprints = fingerprint_table()
    for name, frame in (("runs", runs), ("over_time", history), ("deterrence", deter), ("collusion", colluders),
                        ("fingerprints", fingerprints)):
        frame.to_parquet(out / f"{name}.parquet", index=False)
    report = tables(runs, deter, threshold, colluders, fingerprints)
    (out / "security.md").write_text(report)
    (out / "deterrence.json").write_text(json.dumps(threshold, indent=2))
    print(report)
    for path in plot_all(runs, history, deter, threshold, colluders, out):
        print(path)


def markdown(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table, floats to 4 significant digits."""
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def tables(runs: pd.DataFrame, deter: pd.DataFrame, threshold: dict, colluders: pd.DataFrame,
           fingerprints: pd.DataFrame) -> str:
    """The experiment's findings as Markdown tables."""
    columns = ["cheating_peers", "slashed_cheaters", "slashed_honest", "bad_output_share",
               "verification_compute_share", "mean_steps_to_detection"]
    a = runs[runs["part"] == "a"].groupby(["p", "adversary_share", "slash_fraction"])[columns].mean().reset_index()
    b = runs[runs["part"] == "b"].groupby(["mechanism", "adversary"])[columns].mean().reset_index()
    targets = runs[runs["part"] == "t"].groupby("adversary_share")[columns].mean().reset_index()
    strategic = runs[runs["part"] == "s"].groupby(["mechanism", "adversary"])[
        ["cheating_peers", "cheats", "slashed_cheaters", "slashed_honest", "bad_output_share", "deterrence_threshold_at_q",
         "paired_gain"]].mean().reset_index()
    dilemma = runs[runs["part"] == "v"].groupby("forced_error_rate")[
        ["skipped_checks", "forced_errors", "exposed_verifiers", "jackpots_paid", "slashed_honest", "paired_gain"]
    ].mean().reset_index()
    c = runs[runs["part"] == "c"].groupby(["fingerprint", "referee"])[
        ["honest_flags", "slashed_honest", "slashed_cheaters", "cheating_peers"]].mean().reset_index()
    return "\n\n".join([
        "## (a) Spot checks, uniform sampling\n\n" + markdown(a),
        "## (b) Mechanisms at their defaults, 20% adversaries\n\n" + b.pipe(markdown)
        + "\n\nThe default spot check (p = 0.1, warm-up 16) against lazy peers:\n\n" + targets.pipe(markdown),
        "## (s) Strategic adversaries, 20% of the peers (deterrence_threshold_at_q: the spot-check or "
        "watcher probability at which cheating stops paying; paired_gain: the dishonest peers' profit per peer "
        "minus the same peers' in the counterfactual run, where they serve honestly)\n\n"
        + strategic.pipe(markdown),
        "## (v) The verifier's dilemma: 20% lazy verifiers, spot checks, with and without forced errors "
        "(paired_gain: the lazy verifiers' profit per peer minus their counterfactual honest one)\n\n" + dilemma.pipe(markdown),
        "## (c) Honest false slashing (spot checks p = 0.1, 10% lazy)\n\n" + c.pipe(markdown),
        "## (d) Deterrence threshold\n\n" + deter.pipe(markdown)
        + f"\n\nsimulated threshold p = {threshold['p_simulated']:.4f}; closed form p* = c / ((1 - FN)(price + S)) = "
          f"{threshold['cost']:.3g} / ((1 - {threshold['fn']:.3g})({threshold['price']:.4g} + {threshold['slash']:.3g})) "
          f"= {threshold['p_star']:.4f}; relative difference {threshold['relative_error']:.1%}",
        "## (e) Redundancy vs colluding stake share\n\n" + colluders.pipe(markdown),
        "## Measured false mismatches of honest hops (conf/fingerprints)\n\n"
        + fingerprints.pipe(markdown),
    ]) + "\n"


if __name__ == "__main__":
    main()
