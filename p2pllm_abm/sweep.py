"""Multiruns that survive: resumable jobs, failures kept in their run directory, a closing summary,
and no core oversubscription when jobs share a machine.

Every job of ``p2pllm-sim -m ...`` goes through :func:`run_job`:

- a run directory holding :data:`COMPLETE` (written last, with digests of the job's config and of
  every output file) is *skipped* when the same config runs again and every output is there and
  unchanged; otherwise the job is redone, saying why (``run.resume=false`` forces a rerun);
- a job that raises (a bad override, a crash) writes its traceback to :data:`ERROR` and
  ``status = failed`` to :data:`STATUS`, and the sweep goes on with the other jobs;
- :class:`SweepCallback` (registered in ``conf/config.yaml``) limits every job's JAX/BLAS threads
  before the launcher starts its workers, and prints :func:`sweep_summary` at the end; a sweep
  with a failed job then exits with code 1;
- a launcher's worker exits when the multirun's main process dies (:func:`exit_with_sweep`), so
  killing a sweep leaves no workers behind; running the same command again resumes it (a SLURM
  job is SLURM's to stop: ``scancel``; it may run on another node);
- with SLURM accounting off, submitit's repeated ``sacct`` warnings are shown once, explained
  (:class:`SacctWarningOnce`).

The sweep directory is fixed by the sweep, not by the clock (``conf/config.yaml``), and each job's
subdirectory is named by its overrides, so the same command finds the same directories again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import Config, to_config
from .cores import available_cores
from .paths import file_digest, write_text_atomic

COMPLETE = "complete.json"  #: written last by a finished job
STATUS = "status.json"  #: done, skipped or failed, with the sweep id
ERROR = "error.txt"  #: the traceback of a failed job
SWEEP_ID = "P2PLLM_SWEEP_ID"  #: environment variable naming the running multirun
SWEEP_PID = "P2PLLM_SWEEP_PID"  #: environment variable holding the multirun's main process id
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def config_digest(config: Config) -> str:
    """SHA-256 of the job's config (``run.progress``, ``run.resume`` and ``run.compilation_cache``
    left out: they do not change results)."""
    data = OmegaConf.to_container(OmegaConf.structured(config))
    for ignored in ("progress", "resume", "compilation_cache"):
        data["run"].pop(ignored)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


#: files of a job directory that are not its outputs (markers, Hydra's log)
NOT_OUTPUTS = (COMPLETE, STATUS, ERROR)


def output_digests(outdir: Path) -> dict[str, str]:
    """SHA-256 of every output file of a job directory (not the markers, logs or hidden files)."""
    return {path.name: file_digest(path) for path in sorted(Path(outdir).iterdir())
            if path.is_file() and path.name not in NOT_OUTPUTS and not path.name.startswith(".")
            and path.suffix != ".log"}


def read_marker(outdir: Path) -> tuple[dict[str, Any] | None, str]:
    """The :data:`COMPLETE` record of a job directory and ``""``, or ``None`` and why not (``""``
    when there is no marker: a job not run yet, or not finished)."""
    marker = Path(outdir) / COMPLETE
    if not marker.is_file():
        return None, ""
    try:
        record = json.loads(marker.read_text())
        if not isinstance(record.get("config_digest"), str) or not isinstance(record.get("outputs"), dict) \
                or not record["outputs"]:
            raise ValueError("no config digest or no outputs listed")
    except (OSError, ValueError, AttributeError) as error:
        return None, f"{COMPLETE} does not read ({type(error).__name__}: {error})"
    return record, ""


def outputs_intact(outdir: Path, outputs: dict[str, str]) -> tuple[bool, str]:
    """Whether every listed output exists with its recorded digest, and if not, the first that does not."""
    for name, expected in outputs.items():
        path = Path(outdir) / name
        if not path.is_file():
            return False, f"{name} is missing"
        if file_digest(path) != expected:
            return False, f"{name} does not match the digest recorded when the job completed"
    return True, ""


def completion(outdir: Path, digest: str) -> tuple[bool, str]:
    """Whether ``outdir`` holds a completed run of the config with ``digest``: its :data:`COMPLETE`
    marker reads, names that config, and every output it lists exists with the digest it lists.
    Otherwise ``False`` and why (empty when there is no marker: a job not run yet)."""
    record, why = read_marker(outdir)
    if record is None:
        return False, why
    if record["config_digest"] != digest:
        return False, "its config changed"
    return outputs_intact(outdir, record["outputs"])


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


_watching = False


def exit_with_sweep(interval: float = 1.0) -> None:
    """In a launcher's worker process (not the multirun's main one): exit (code 1) within
    ``interval`` seconds of the main process dying, so that a killed sweep leaves no workers behind.
    Started once per process, by :func:`run_job`."""
    global _watching
    main = int(os.environ.get(SWEEP_PID, "0"))
    if _watching or not main or main == os.getpid():
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent or _gone(main):
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-sweep", daemon=True).start()
    _watching = True


def write_status(outdir: Path, status: str, **details: Any) -> None:
    record = {"status": status, "sweep_id": os.environ.get(SWEEP_ID), "time": time.time(), **details}
    write_text_atomic(Path(outdir) / STATUS, json.dumps(record, indent=2))


def run_job(cfg: DictConfig, outdir: Path, task: Callable[[Config, Path], float], multirun: bool) -> float:
    """Validate ``cfg`` and run ``task(config, outdir)``, which returns the job's objective (what
    a Hydra sweeper such as Optuna minimises). In a ``multirun``, a job whose ``outdir`` already
    holds this config's completed run is skipped and returns the objective recorded there, and a
    failure is recorded (traceback in :data:`ERROR`, status ``failed``) instead of raised, so the
    sweep goes on, with objective NaN."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if multirun:
        exit_with_sweep()
    try:
        config = to_config(cfg)
        digest = config_digest(config)
        if multirun and config.run.resume:
            complete, why = completion(outdir, digest)
            if complete:
                write_status(outdir, "skipped")
                print(f"Skipped (complete): {outdir}")
                return float(json.loads((outdir / COMPLETE).read_text()).get("objective", "nan"))
            if why:
                print(f"Redoing {outdir}: {why}")
        (outdir / COMPLETE).unlink(missing_ok=True)
        (outdir / ERROR).unlink(missing_ok=True)
        started = time.perf_counter()
        objective = float(task(config, outdir))
    except Exception as error:
        if not multirun:
            raise
        write_text_atomic(outdir / ERROR, traceback.format_exc())
        write_status(outdir, "failed", error=f"{type(error).__name__}: {error}")
        print(f"Failed: {outdir} ({type(error).__name__}: {error})")
        return float("nan")
    write_status(outdir, "done")
    write_text_atomic(outdir / COMPLETE, json.dumps({"config_digest": digest, "objective": objective,
                                                     "wall_time_s": time.perf_counter() - started,
                                                     "outputs": output_digests(outdir)}))
    return objective


def thread_environment(threads: int) -> dict[str, str]:
    """Environment that keeps the BLAS libraries to ``threads`` threads and, for one thread, XLA's
    CPU client to its calling thread (XLA has no flag for another count)."""
    environment = {name: str(threads) for name in THREAD_VARIABLES}
    if threads == 1:
        environment["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return environment


def threads_per_job(launcher: DictConfig | dict) -> int | None:
    """Threads each job may use: the cores divided among joblib's parallel jobs, a submitit job's
    ``cpus_per_task``; ``None`` (leave JAX alone) for the basic launcher, one job at a time."""
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        cores = available_cores()
        n_jobs = int(launcher.get("n_jobs", -1))
        parallel = cores if n_jobs < 0 else min(n_jobs, cores)
        return max(1, cores // max(parallel, 1))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    return None


def sweep_summary(sweep_dir: Path, sweep_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The jobs under ``sweep_dir`` (those of multirun ``sweep_id`` if given) by status."""
    jobs: dict[str, list[dict[str, Any]]] = {"done": [], "skipped": [], "failed": []}
    for status_file in sorted(Path(sweep_dir).glob(f"*/{STATUS}")):
        record = json.loads(status_file.read_text())
        if sweep_id is None or record.get("sweep_id") == sweep_id:
            jobs.setdefault(record["status"], []).append({"dir": status_file.parent, **record})
    return jobs


def format_summary(sweep_dir: Path, jobs: dict[str, list[dict[str, Any]]]) -> str:
    counts = {status: len(entries) for status, entries in jobs.items()}
    lines = [f"Sweep {sweep_dir}: {sum(counts.values())} jobs, {counts['done']} done, "
             f"{counts['skipped']} skipped (already complete), {counts['failed']} failed"]
    for job in jobs["failed"]:
        lines.append(f"  failed: {job['dir'].name}\n          {job['error']}  (traceback: {job['dir'] / ERROR})")
    return "\n".join(lines)


def on_slurm(launcher: DictConfig | dict) -> bool:
    """Whether ``launcher`` (``hydra.launcher``) submits the jobs to SLURM (``submitit_slurm``)."""
    return "SlurmLauncher" in str(launcher.get("_target_", ""))


class SacctWarningOnce(logging.Filter):
    """submitit asks ``sacct`` for its jobs' states at every poll. Without SLURM accounting (no
    slurmdbd, as on the local SLURM of ``.ci/local_slurm.sh``) every call fails and submitit warns
    each time; this lets the first warning through, saying what it means, and drops the repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = (f"{record.getMessage()} (SLURM accounting is off here: submitit now judges a "
                                   "job done by the result file it writes; if SLURM kills a job before it writes "
                                   "one, stop the sweep with Ctrl-C and run it again, finished jobs are skipped; "
                                   "further sacct warnings are not shown)"), ()
        return True


class SweepCallback(Callback):
    """Hydra callback of every multirun: thread limits for the jobs, then the closing summary.

    ``threads_per_job`` overrides :func:`threads_per_job` (``hydra.callbacks.sweep.threads_per_job``)."""

    def __init__(self, threads_per_job: int | None = None) -> None:
        self.threads = threads_per_job
        self.sweep_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id = uuid.uuid4().hex
        os.environ[SWEEP_ID] = self.sweep_id  # inherited by the launcher's worker processes
        if on_slurm(config.hydra.launcher):
            # a SLURM job may run on another node, where this process id means nothing, and outlives
            # the sweep that submitted it (scancel stops it)
            os.environ.pop(SWEEP_PID, None)
            logging.getLogger("submitit").addFilter(SacctWarningOnce())
        else:
            os.environ[SWEEP_PID] = str(os.getpid())
        threads = self.threads or threads_per_job(config.hydra.launcher)
        if threads is not None:
            os.environ.update(thread_environment(threads))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print the summary; a sweep in which a job failed then exits with code 1."""
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_summary(sweep_dir, self.sweep_id)
        print(format_summary(sweep_dir, jobs), flush=True)
        if jobs["failed"]:
            raise SystemExit(1)
