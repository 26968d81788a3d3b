"""The cost of load, churn and failures: time per step with them against the same run without.

    python -m benchmarks.network_dynamics            # or: make bench-dynamics
    python -m benchmarks.network_dynamics --quick    # 10^4 peers only, fewer steps

At 200 peers x 4 stages (paper_table1) and 10^4 peers x 16 stages, each with 64 clients,
reallocation every 10 steps and metrics every 50, it times ``P2PLLMModel.run`` per step for:

- ``baseline``: no capacity, no churn, no failures (ticks between events fused);
- ``+ churn + failures``: 5% of peers leaving per step and as many joining (Poisson), 1% failing per
  step for 10 steps (every step runs the membership phase on the host, and failover in the tick);
- ``capacity`` and ``capacity + churn + failures``: the same two with ``network.step_ms=20``
  (queues, waits, utilisation);
- ``+ petals``: the last with Petals' routing (the path DP) instead of the logit stage choice (200
  peers only: a path DP's cost grows with the square of the stage sizes).

Every figure is the median over repeats of runs started from a warm model (compiled, with its
spare rows in use). The table ends with the ratio the network-dynamics issue targets: churn and
failures at 10^4 peers at most 2x the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

from p2pllm_abm import P2PLLMModel, load_config

from .timing import fmt

SIZES = {  # label -> (overrides, peers, steps timed)
    "200 x 4": ([], 200, 200),
    "10^4 x 16": (["network.peers=10000", "network.stages=16", "network.initial_distribution=null",
                   "report.reference=null"], 10_000, 100),
}


def variants(peers: int) -> dict[str, list[str]]:
    """The runs timed at ``peers`` peers (Petals' routing is a path DP: only at the small size, as
    ``clients.routing=path``, whose cost grows with the square of the stage sizes)."""
    dynamics = ["churn.leave_rate=0.05", f"churn.join_rate={0.05 * peers}", "failures.rate=0.01", "failures.downtime=10",
                "churn.headroom=0.05"]  # 5% spare rows: 5 standard deviations of the peer count at 10^4
    runs = {"baseline": [], "+ churn + failures": dynamics, "capacity": ["network.step_ms=20"],
            "capacity + churn + failures": ["network.step_ms=20", *dynamics]}
    return {**runs, "+ petals": ["network.step_ms=20", *dynamics, "clients.routing=petals"]} if peers <= 1000 else runs


def seconds_per_step(overrides: list[str], steps: int, repeats: int) -> float:
    """Median wall time per step of ``run(steps)`` over ``repeats`` runs of one warm model."""
    model = P2PLLMModel(load_config("paper_table1", overrides=[*overrides, "run.progress=false"]))
    model.run(steps)  # compiles, and lets churn fill the spare rows
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.run(steps)
        times.append((time.perf_counter() - started) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 peers only, half the steps, 2 repeats")
    args = parser.parse_args()
    sizes = {"10^4 x 16": SIZES["10^4 x 16"]} if args.quick else SIZES
    repeats = 2 if args.quick else 3
    results = {}
    for label, (overrides, peers, steps) in sizes.items():
        steps = steps // 2 if args.quick else steps
        for name, extra in variants(peers).items():
            results[label, name] = seconds_per_step([*overrides, *extra], steps, repeats)
    names = list(variants(1))  # every variant (the 200-peer set)
    print(f"| time per step | {' | '.join(names)} |")
    print("|---" * (len(names) + 1) + "|")
    for label in sizes:
        cells = [fmt(results[label, name]) if (label, name) in results else "-" for name in names]
        print(f"| {label} | {' | '.join(cells)} |")
    print()
    for label in sizes:
        ratio = results[label, "+ churn + failures"] / results[label, "baseline"]
        loaded = results[label, "capacity + churn + failures"] / results[label, "capacity"]
        print(f"{label}: churn + failures / baseline = {ratio:.2f}x (target <= 2x); with capacity on both sides "
              f"{loaded:.2f}x")


if __name__ == "__main__":
    main()
