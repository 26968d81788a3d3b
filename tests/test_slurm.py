"""``hydra/launcher=submitit_slurm`` against a real SLURM: the one-node SLURM that
``.ci/local_slurm.sh`` sets up (``.ci/run`` starts it when missing). Skipped where no SLURM
partition answers; locally: ``sudo .ci/local_slurm.sh`` first."""

import os
import re
import shutil
import subprocess

import pytest
from omegaconf import OmegaConf

from analysis.collect import collect
from p2pllm_abm.sweep import SWEEP_PID, SweepCallback
from tests.test_sweeps import multirun

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def partition() -> str | None:
    """The default partition of the SLURM that answers here, if any."""
    if shutil.which("sinfo") is None:
        return None
    try:
        names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    default = [name for name in names if name.endswith("*")]
    return (default or names or [None])[0].rstrip("*") if names else None


PARTITION = partition()


@pytest.mark.skipif(PARTITION is None, reason="no SLURM answers here (sudo .ci/local_slurm.sh sets one up)")
def test_four_job_multirun_through_slurm_is_collected(tmp_path):
    """Four jobs submitted with sbatch, run by slurmd, collected; submitit's sacct warning (SLURM
    accounting is off) is shown once, explained."""
    stdout = multirun(tmp_path, "market.alpha=0.25,0.75", "seed=0,1", f"hydra.launcher.partition={PARTITION}",
                      "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                      launcher="submitit_slurm")
    assert "4 jobs, 4 done, 0 skipped (already complete), 0 failed" in stdout
    runs = collect(tmp_path).runs
    assert len(runs) == 4 and (runs["status"] == "complete").all()
    assert sorted(zip(runs["market.alpha"], runs["seed"])) == [(0.25, 0), (0.25, 1), (0.75, 0), (0.75, 1)]
    scripts = list((tmp_path / ".submitit").glob("*/*_submission.sh"))
    assert scripts and all(f"#SBATCH --partition={PARTITION}" in script.read_text() for script in scripts)
    warned = re.findall(r"Call #(\d+) - Bypassing sacct error.*", stdout)
    assert set(warned) <= {"1"}  # the first poll's warning only (printed by submitit's and Hydra's handlers)
    assert all("further sacct warnings are not shown" in line
               for line in stdout.splitlines() if "Bypassing sacct error" in line)


def test_slurm_jobs_do_not_watch_the_submitting_process(monkeypatch):
    """A local launcher's workers exit with the sweep (they watch its process id); a SLURM job may
    run on another node, where that id means nothing, so it is not given one."""
    monkeypatch.setenv(SWEEP_PID, "12345")
    SweepCallback().on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"_target_": SLURM_LAUNCHER}}}))
    assert SWEEP_PID not in os.environ
    SweepCallback().on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"_target_": "joblib.JoblibLauncher"}}}))
    assert os.environ[SWEEP_PID] == str(os.getpid())
