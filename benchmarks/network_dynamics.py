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

Every figure is the median of 5 repeats (3 with ``--quick``) of runs started from a warm model
(compiled, with its spare rows in use); the repeats go round the variants in turn, so that the
machine's drift hits them alike. The table ends with the ratio the network-dynamics issue targets:
churn and failures at 10^4 peers at most 2x the baseline.
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


def seconds_per_step(runs: dict[str, list[str]], steps: int, repeats: int) -> dict[str, float]:
    """Median wall time per step of ``run(steps)`` for each of ``runs`` (name -> overrides), each a
    warm model; the repeats go round the runs in turn, so that the machine's drift hits them alike."""
    models = {}
    for name, overrides in runs.items():
        models[name] = P2PLLMModel(load_config("paper_table1", overrides=[*overrides, "run.progress=false"]))
        models[name].run(steps)  # compiles, and lets churn fill the spare rows
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model.run(steps)
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 peers only, half the steps, 3 repeats")
    args = parser.parse_args()
    sizes = {"10^4 x 16": SIZES["10^4 x 16"]} if args.quick else SIZES
    repeats = 3 if args.quick else 5
    results = {}
    for label, (overrides, peers, steps) in sizes.items():
        steps = steps // 2 if args.quick else steps
        runs = {name: [*overrides, *extra] for name, extra in variants(peers).items()}
        timed = seconds_per_step(runs, steps, repeats)
        results.update({(label, name): seconds for name, seconds in timed.items()})
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
