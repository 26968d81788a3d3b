"""Core simulation speed: the toolkit against a per-agent Mesa model and a fused lax.scan.

    python -m benchmarks.core            # or: make bench
    python -m benchmarks.core --quick    # 200 and 10^4 peers only

For 200 peers (paper_table1, 4 stages) and 10^4 / 10^5 peers x 16 stages it times, per step:

- ``toolkit (full)``: P2PLLMModel with 64 clients routing requests, reallocation every 10 steps
  and metrics every 50 steps;
- ``toolkit (market)``: P2PLLMModel with only the market phases (choice probabilities and the
  eq.-5 price step; no clients, no reallocation; the one record at the end of ``run`` is
  included, about 0.13 s at 10^5 peers);
- ``per-agent Mesa``: the same price dynamics as a plain Mesa model, each agent computing its own
  stage's softmax and gradient in Python (a few steps only at 10^5 peers);
- ``fused scan``: the same dynamics as one jitted ``lax.scan`` over all steps (float64, like the
  toolkit): the limit on this hardware.

Then (not with ``--quick``) the scale run: 10^5 peers x 64 stages x 1,000 steps with 64 clients,
reallocation and metrics on, from a fresh model: its wall time and peak memory; and the ensemble
jobs: ``p2pllm-sim`` (paper_table1, 5,000 steps, no figures, no compilation cache) with one replicate
and with ``run.replicates=64``, each a fresh process timed from start to exit (imports, compiling,
the run and writing its outputs), against 64 separate one-replicate jobs (64 times one); and the
one-replicate job again with its compiled programs in the cache (``run.compilation_cache``) that an
earlier job filled.

Every figure is the median over repeats (VM timings swing 2-3x within minutes), after a warm-up
run that compiles (for the full toolkit, twice the timed steps: reallocation widens the stage
blocks early in a run, and each width compiles once). The table ends with the two ratios the core issue targets.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import mesa
import numpy as np

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.economics import market_params, price_step
from p2pllm_abm.metrics import peak_memory_mb, reset_peak_memory
from p2pllm_abm.network import PeerTable

from .timing import fmt

SIZES = {  # label -> (experiment overrides, steps timed per variant)
    "200 x 4": ([], {"full": 2000, "market": 2000, "agents": 20, "scan": 2000}),
    "10^4 x 16": (["network.peers=10000", "network.stages=16", "network.initial_distribution=null",
                   "report.reference=null"],
                  {"full": 200, "market": 2000, "agents": 3, "scan": 2000}),
    "10^5 x 16": (["network.peers=100000", "network.stages=16", "network.initial_distribution=null",
                   "report.reference=null"],
                  {"full": 100, "market": 1000, "agents": 1, "scan": 1000}),
}
#: the scale target: 10^5 peers x 64 stages x 1,000 steps, 64 clients, reallocation and metrics on
SCALE = ["network.peers=100000", "network.stages=64", "network.initial_distribution=null", "report.reference=null",
         "clients.count=64", "allocation.period=10", "run.record_interval=50", "report.table_steps=[0]"]
SCALE_STEPS = 1000
REPEATS = 3


def median_seconds_per_step(run, steps: int, repeats: int = REPEATS) -> float:
    """Median wall time per step of ``run(steps)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - started) / steps)
    return statistics.median(times)


def toolkit(overrides: list[str], market_only: bool, warmup: int):
    """A model's ``run``, after ``warmup`` steps: they compile, and let reallocation widen the stage
    blocks to the width the timed steps use (each width a run reaches compiles once)."""
    extra = ["clients.count=0", "allocation.enabled=false", "run.record_interval=100000"] if market_only else \
        ["clients.count=64", "allocation.period=10", "run.record_interval=50"]
    model = P2PLLMModel(load_config("paper_table1", overrides=[*overrides, *extra, "report.table_steps=[0]"]))
    model.run(warmup)
    return model.run


class StagePeer(mesa.Agent):
    """A peer of the per-agent baseline: computes its stage's softmax and its own gradient (eq. 5)."""

    def __init__(self, model: "PerAgentMarket", price: float, cost: float, stage: int) -> None:
        super().__init__(model)
        self.price, self.cost, self.stage, self.next_price = price, cost, stage, price

    def step(self) -> None:
        m = self.model
        rivals = m.members[self.stage]
        weights = np.array([m.alpha * r.price + (1 - m.alpha) * r.cost for r in rivals])
        logits = -weights / m.temperature
        probs = np.exp(logits - logits.max())
        own = probs[self.slot] / probs.sum()
        gradient = own * (1 - (m.alpha / m.temperature) * self.price * (1 - own))
        self.next_price = max(0.0, self.price + m.eta * gradient)

    def advance(self) -> None:
        self.price = self.next_price


class PerAgentMarket(mesa.Model):
    def __init__(self, peers: PeerTable, alpha: float, temperature: float, eta: float) -> None:
        super().__init__(rng=0)
        self.alpha, self.temperature, self.eta = alpha, temperature, eta
        self.members: dict[int, list[StagePeer]] = {s: [] for s in range(peers.n_stages)}
        for price, cost, stage in zip(peers.price.tolist(), peers.cost.tolist(), peers.stage.tolist()):
            peer = StagePeer(self, price, cost, stage)
            peer.slot = len(self.members[stage])  # its place in its stage's list
            self.members[stage].append(peer)

    def step(self) -> None:
        self.agents.do("step")
        self.agents.do("advance")


def per_agent(overrides: list[str]):
    cfg = load_config("paper_table1", overrides=overrides)
    peers = PeerTable.from_config(cfg.network, np.random.default_rng(0))
    model = PerAgentMarket(peers, cfg.market.alpha, cfg.market.temperature, cfg.market.eta)

    def run(steps: int) -> None:
        for _ in range(steps):
            model.step()
    return run


def fused_scan(overrides: list[str]):
    cfg = load_config("paper_table1", overrides=overrides)
    peers = PeerTable.from_config(cfg.network, np.random.default_rng(0))
    mkt = cfg.market
    params = market_params(mkt)
    cost, stage, alive = jnp.asarray(peers.cost), jnp.asarray(peers.stage), jnp.asarray(peers.alive)

    @jax.jit
    def scan(price, steps_marker):
        def body(p, _):
            return price_step(p, cost, stage, alive, params, peers.n_stages), None
        return jax.lax.scan(body, price, None, length=steps_marker.shape[0])[0]

    price = jnp.asarray(peers.price)

    def run(steps: int) -> None:
        scan(price, jnp.zeros(steps)).block_until_ready()
    return run


def scale_run() -> tuple[float, float, float]:
    """The scale target, from a fresh model: seconds to build it, seconds for ``SCALE_STEPS`` steps
    (compiling included), and the peak resident memory in MiB meanwhile."""
    reset_peak_memory()
    started = time.perf_counter()
    model = P2PLLMModel(load_config("paper_table1", overrides=SCALE))
    built = time.perf_counter()
    model.run(SCALE_STEPS)
    return built - started, time.perf_counter() - built, peak_memory_mb()


#: the ensemble target: 64 replicates of paper_table1 x 5,000 steps in one job
ENSEMBLE_REPLICATES = 64


def job_seconds(*overrides: str) -> float:
    """Wall time of one ``p2pllm-sim`` job (paper_table1, no figures or progress bar, no compilation
    cache unless ``overrides`` name one) in a fresh process, into a temporary run directory."""
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "p2pllm-sim"), "run.figures=false", "run.progress=false",
                        "run.compilation_cache=null", f"hydra.run.dir={run_dir}", *overrides],
                       check=True, capture_output=True)
        return time.perf_counter() - started


def ensemble_jobs() -> tuple[float, float, float]:
    """Seconds for a one-replicate job (median of :data:`REPEATS`), for a job of
    :data:`ENSEMBLE_REPLICATES` replicates, and for a one-replicate job whose compiled programs an
    earlier job left in the compilation cache (median of :data:`REPEATS`, after the job that fills it)."""
    one = statistics.median(job_seconds() for _ in range(REPEATS))
    many = job_seconds(f"run.replicates={ENSEMBLE_REPLICATES}")
    with tempfile.TemporaryDirectory() as cache:
        job_seconds(f"run.compilation_cache={cache}")
        cached = statistics.median(job_seconds(f"run.compilation_cache={cache}") for _ in range(REPEATS))
    return one, many, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 and 10^4 peers only")
    args = parser.parse_args()
    labels = list(SIZES)[:2] if args.quick else list(SIZES)
    rows = []
    for label in labels:
        overrides, steps = SIZES[label]
        scan_run = fused_scan(overrides)
        scan_run(steps["scan"])  # compile for this length
        timings = {
            "toolkit (full)": median_seconds_per_step(toolkit(overrides, False, 2 * steps["full"]), steps["full"]),
            "toolkit (market)": median_seconds_per_step(toolkit(overrides, True, 10), steps["market"]),
            "per-agent Mesa": median_seconds_per_step(per_agent(overrides), steps["agents"],
                                                      repeats=1 if steps["agents"] == 1 else REPEATS),
            "fused scan": median_seconds_per_step(scan_run, steps["scan"]),
        }
        rows.append((label, timings))
        print(f"done: {label}", flush=True)

    scale = None if args.quick else scale_run()
    jobs = None if args.quick else ensemble_jobs()
    variants = list(rows[0][1])
    print("\nTime per step (median of repeats; steps/s in brackets)\n")
    print(f"| {'peers x stages':<14} | " + " | ".join(f"{v:<24}" for v in variants)
          + " | per-agent / market | market / fused | full / fused |")
    print("|" + "---|" * (len(variants) + 4))
    for label, t in rows:
        cells = [f"{fmt(t[v])} ({1 / t[v]:,.0f}/s)" if t[v] < 1 else f"{fmt(t[v])} ({1 / t[v]:.2f}/s)" for v in variants]
        ratio_agents = t["per-agent Mesa"] / t["toolkit (market)"]
        ratio_scan = t["toolkit (market)"] / t["fused scan"]
        ratio_full = t["toolkit (full)"] / t["fused scan"]
        print(f"| {label:<14} | " + " | ".join(f"{c:<24}" for c in cells)
              + f" | {ratio_agents:,.0f}x | {ratio_scan:.2f}x | {ratio_full:.1f}x |")
    if scale is not None:
        build, run, peak = scale
        print(f"\nScale: 10^5 peers x 64 stages x {SCALE_STEPS:,} steps, 64 clients, reallocation every 10 steps, "
              f"metrics every 50: built in {fmt(build)}, ran in {fmt(run)} (compiling included), "
              f"peak memory {peak:,.0f} MiB")
    if jobs is not None:
        one, many, cached = jobs
        print(f"\nEnsemble: paper_table1 x 5,000 steps, one job each (fresh process, outputs written)\n\n"
              f"| job | wall time | / one replicate |\n|---|---|---|\n"
              f"| 1 replicate (median of {REPEATS}) | {fmt(one)} | 1.0x |\n"
              f"| {ENSEMBLE_REPLICATES} replicates, run.replicates={ENSEMBLE_REPLICATES} | {fmt(many)} | "
              f"{many / one:.1f}x |\n"
              f"| {ENSEMBLE_REPLICATES} separate jobs (64 x one) | {fmt(ENSEMBLE_REPLICATES * one)} | "
              f"{ENSEMBLE_REPLICATES:.1f}x |\n"
              f"| 1 replicate, compiled programs from the cache (median of {REPEATS}) | {fmt(cached)} | "
              f"{cached / one:.2f}x |")
    print("\nTargets: per-agent / market >= 100x at 10^4 peers; market / fused <= 3x at 10^4 and 10^5 peers; "
          "full / fused <= 3x; the scale run under 60 s; 64 replicates in one job <= 8x one replicate.")
    print(f"jax {jax.__version__}, mesa {mesa.__version__}, numpy {np.__version__}; float64 on the CPU")


if __name__ == "__main__":
    main()
