"""Equilibrium solvers and certificates at scale.

    python -m benchmarks.equilibrium          # or: make bench-equilibrium

1. Every update rule on 64 stages x 1,000 peers per stage (64,000 peers, costs ~ U(1, 5),
   alpha = 0.5, T = 1, prices started at 1): iterations and wall time until the certified Nash
   gap is <= 1e-10 and every price is within 1e-11 of its best response (the paper's gradient rule
   at eta = 0.8 x its stable bound, capped at 3,000 iterations and timed once).
2. Time to certify (Nash gap of every peer and stage) 10^5 peers over 16 stages.

Times are medians of 3 runs after a compiling run (VM timings swing 2-3x within minutes).
"""

from __future__ import annotations

import jax
import numpy as np

from p2pllm_abm.equilibrium import solver_rules
from p2pllm_abm.economics import MarketParams
from p2pllm_abm.equilibrium import nash_gap_jit, solve_equilibrium, stable_eta

from .timing import timed

REPEATS = 3


def network(n_stages: int, per_stage: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_stages * per_stage
    return np.repeat(np.arange(n_stages), per_stage), rng.uniform(1.0, 5.0, n), np.ones(n, dtype=bool), np.ones(n)


def main() -> None:
    stage, cost, alive, price = network(64, 1000)
    params = MarketParams(0.5, 1.0, 1.0, 1.0, 0.0)
    reference = solve_equilibrium("sequential_best_response", price, cost, stage, alive, params, 64)
    eta = 0.8 * stable_eta(reference.price, cost, stage, alive, params, 64)
    print(f"64 stages x 1,000 peers; gradient rule at eta = {eta:.4g} (0.8 x stable bound)\n")
    print("| rule | iterations | converged | final gap | final residual | wall time |")
    print("|---|---|---|---|---|---|")
    for rule in solver_rules():
        rule_params = params._replace(eta=eta) if rule == "gradient" else params
        cap = 3000 if rule == "gradient" else 200

        def run(rule=rule, rule_params=rule_params, cap=cap):
            result = solve_equilibrium(rule, price, cost, stage, alive, rule_params, 64, tol=1e-10,
                                       max_iterations=cap)
            jax.block_until_ready(result.price)
            return result

        seconds, result = timed(run, repeats=1 if rule == "gradient" else REPEATS)
        print(f"| {rule} | {result.iterations} | {result.converged} | {result.gap:.2e} | {result.residual:.2e} "
              f"| {seconds:.2f} s |", flush=True)

    stage, cost, alive, price = network(16, 100_000 // 16)
    price = price * 2.0

    def run_certify():
        return jax.block_until_ready(nash_gap_jit(price, cost, stage, alive, params, n_stages=16))

    seconds, certificate = timed(run_certify, repeats=REPEATS)
    print(f"\nCertify 10^5 peers x 16 stages: {seconds * 1e3:.1f} ms "
          f"(max stage gap {float(np.max(certificate.stage_gap)):.3g})")
    print(f"jax {jax.__version__}; float64 on the CPU")


if __name__ == "__main__":
    main()
