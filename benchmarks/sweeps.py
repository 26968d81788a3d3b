"""Parallel efficiency of multiruns: ``sweep=alpha`` (27 jobs of the paper's Table 1 run) one job
at a time (Hydra's basic launcher, and joblib with one worker) against the default joblib
launcher on all cores.

    python -m benchmarks.sweeps          # or: make bench-sweeps; about 4 minutes on 2 cores

Each variant runs in a fresh sweep directory (nothing to resume) as the ``p2pllm-sim`` command a
user types; wall time includes start-up and JAX compilation (the basic launcher runs every job
in the main process, one joblib worker runs them all in one process: both compile once; the
parallel workers compile once each). Parallel efficiency = T(one at a time) / (cores x
T(parallel)), with the faster of the two one-at-a-time variants.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2pllm_abm.cores import available_cores

from .timing import fmt

SIM = str(Path(sys.executable).with_name("p2pllm-sim"))
LAUNCHERS = {
    "one at a time (basic)": ["hydra/launcher=basic"],
    "one at a time (joblib, n_jobs=1)": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"],
    "joblib, all cores (default)": ["hydra/launcher=joblib"],
}


def sweep_seconds(launcher: list[str], sweep_dir: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([SIM, "-m", "sweep=alpha", *launcher, f"hydra.sweep.dir={sweep_dir}",
                             "run.progress=false", "run.figures=false"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "27 done" not in result.stdout:
        raise RuntimeError(f"sweep with {launcher} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    cores = available_cores()
    seconds = {}
    root = Path(tempfile.mkdtemp(prefix="bench_sweeps_"))
    try:
        for number, (label, launcher) in enumerate(LAUNCHERS.items()):
            print(f"{label} ...", flush=True)
            seconds[label] = sweep_seconds(launcher, root / str(number))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    parallel = seconds["joblib, all cores (default)"]
    serial = min(seconds["one at a time (basic)"], seconds["one at a time (joblib, n_jobs=1)"])
    print(f"\nsweep=alpha (27 jobs x 5000 steps of paper_table1), {cores} cores\n")
    print("| launcher | wall time | speed-up over the faster one-at-a-time | parallel efficiency |")
    print("|---|---|---|---|")
    for label, elapsed in seconds.items():
        efficiency = f"{serial / (cores * elapsed):.0%}" if elapsed is parallel else "-"
        print(f"| {label} | {fmt(elapsed)} | {serial / elapsed:.2f}x | {efficiency} |")

if __name__ == "__main__":
    main()
