"""Multiruns with the joblib and submitit_local launchers, failures, resuming, collection, gallery."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from analysis.__main__ import main as analysis
from analysis.collect import Collection, collect, parse_overrides, summary_numbers
from p2pllm_abm import load_config
from p2pllm_abm.config import CONF_DIR, register_schema, to_config
from p2pllm_abm.metrics import convergence_objective, convergence_step, strict_json
from p2pllm_abm.sweep import COMPLETE, ERROR, config_digest, thread_environment, threads_per_job
from tests.test_cli import sim

TINY = ["experiment=paper_28", "run.steps=20", "run.record_interval=10", "report.table_steps=[0,10,20]",
        "run.progress=false", "run.figures=false"]


def multirun(sweep_dir, *overrides, launcher="joblib", returncode=0):
    result = sim("-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}", *TINY, *overrides)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("joblib")
    return sweep_dir, multirun(sweep_dir, "market.alpha=0.25,0.75", "market.temperature=1,2", "seed=0,1")


@pytest.mark.parametrize("launcher", ["joblib", pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_four_job_multirun_is_collected_with_parameter_columns(launcher, tmp_path):
    stdout = multirun(tmp_path, "market.alpha=0.25,0.75", "seed=0,1", launcher=launcher)
    assert "4 jobs, 4 done, 0 skipped (already complete), 0 failed" in stdout
    collection = collect(tmp_path)
    runs = collection.runs
    assert len(runs) == 4 and (runs["status"] == "complete").all()
    assert sorted(zip(runs["market.alpha"], runs["seed"])) == [(0.25, 0), (0.25, 1), (0.75, 0), (0.75, 1)]
    assert collection.swept == ["market.alpha", "seed"]
    assert (runs["run.steps"] == 20).all() and runs["final_mean_price"].gt(0).all()
    steps = collection.steps
    assert len(steps) == 4 * 3 * 4 and set(steps["step"]) == {0, 10, 20}  # runs x records x stages
    assert steps.groupby("run")["market.alpha"].nunique().eq(1).all()


def test_failed_job_is_recorded_and_the_sweep_goes_on_then_resumes(tmp_path):
    stdout = multirun(tmp_path, "market.alpha=0.5,1.5", returncode=1)  # a failed job: exit code 1
    assert "2 jobs, 1 done, 0 skipped (already complete), 1 failed" in stdout
    assert "market.alpha = 1.5 is invalid" in stdout
    failed = next(tmp_path.glob("*market.alpha=1.5*"))
    assert "ConfigError" in (failed / ERROR).read_text() and not (failed / COMPLETE).exists()
    done = next(tmp_path.glob("*market.alpha=0.5*"))
    assert (done / COMPLETE).is_file()

    collection = collect(tmp_path)
    assert sorted(collection.runs["status"]) == ["complete", "failed"]
    assert any("market.alpha = 1.5 is invalid" in problem for problem in collection.problems)

    metrics_before = (done / "metrics.parquet").stat().st_mtime_ns
    again = multirun(tmp_path, "market.alpha=0.5,1.5", returncode=1)
    assert "2 jobs, 0 done, 1 skipped (already complete), 1 failed" in again
    assert (done / "metrics.parquet").stat().st_mtime_ns == metrics_before


def test_rerunning_a_finished_sweep_skips_every_job(joblib_sweep):
    sweep_dir, first = joblib_sweep
    assert "8 jobs, 8 done" in first
    again = multirun(sweep_dir, "market.alpha=0.25,0.75", "market.temperature=1,2", "seed=0,1")
    assert "8 jobs, 0 done, 8 skipped (already complete), 0 failed" in again


def test_changed_config_reruns_instead_of_skipping(tmp_path):
    multirun(tmp_path, "seed=0")
    (only,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    marker = json.loads((only / COMPLETE).read_text())
    (only / COMPLETE).write_text(json.dumps({**marker, "config_digest": "stale"}))
    assert "1 jobs, 1 done, 0 skipped" in multirun(tmp_path, "seed=0")


def test_collect_reports_partial_runs(joblib_sweep, tmp_path):
    sweep_dir, _ = joblib_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    broken = sorted(p for p in copy.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    (broken / "summary.json").unlink()
    collection = collect(copy)
    assert (collection.runs["status"] == "partial").sum() == 1 and len(collection.runs) == 8
    assert len(collection.problems) == 1 and broken.name in collection.problems[0]


def test_gallery_and_table_from_a_tiny_sweep(joblib_sweep, tmp_path, capsys):
    sweep_dir, _ = joblib_sweep
    analysis(["collect", str(sweep_dir), "--out", str(tmp_path / "tables")])
    reread = Collection.read(tmp_path / "tables")
    assert reread.swept == ["market.alpha", "market.temperature", "seed"] and len(reread.runs) == 8
    analysis(["figures", str(tmp_path / "tables"), "--out", str(tmp_path / "figures")])
    printed = capsys.readouterr().out
    # alpha, T and seed swept: no eta or network-size axis to draw b and e on
    assert "skipped b_convergence_vs_eta: its x axis is market.eta" in printed
    assert "skipped e_scaling: its x axis is network.peers" in printed
    assert not list((tmp_path / "figures").glob("b_*")) and not list((tmp_path / "figures").glob("e_*"))
    with pytest.raises(SystemExit):
        analysis(["figures", str(tmp_path / "tables"), "--only", "e_scaling"])
    stems = ["a_table1_trajectories", "c_price_vs_alpha", "d_revenue_curve"]
    for stem in stems:
        for suffix in (".pdf", ".png"):
            assert (tmp_path / "figures" / f"{stem}{suffix}").stat().st_size > 1000
        caption = (tmp_path / "figures" / f"{stem}.txt").read_text()
        assert str(sweep_dir) in caption and "market.alpha=0.25,0.75" in caption
    capsys.readouterr()
    analysis(["table", str(sweep_dir), "--format", "latex", "--where", "market.alpha=0.25", "--steps", "0", "20"])
    latex = capsys.readouterr().out
    assert latex.startswith(r"\begin{tabular}")
    assert "0 & Nodes & 4 & 10 &" in latex  # layer 1 starts with 10 peers in all 4 runs: an integer
    with pytest.raises(SystemExit):
        analysis(["table", str(sweep_dir), "--where", "market.alpha=0.3"])


def test_table_statistics_are_over_runs(joblib_sweep):
    from analysis.tables import table1

    sweep_dir, _ = joblib_sweep
    collection = collect(sweep_dir)
    table = table1(collection, [20], {"market.alpha": 0.75, "market.temperature": 2})
    chosen = collection.runs[(collection.runs["market.alpha"] == 0.75) & (collection.runs["market.temperature"] == 2)]
    at = collection.steps[collection.steps["run"].isin(chosen["run"]) & (collection.steps["step"] == 20)]
    prices = at[at["stage"] == 0]["mean_price"]
    assert table.loc[(20, "Avg. Price", len(prices)), "Layer 1"] == f"{prices.mean():.2f} ± {prices.std():.2f}"


def test_overrides_are_typed_and_hydra_ones_left_out(joblib_sweep):
    sweep_dir, _ = joblib_sweep
    run_dir = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    parsed = parse_overrides(run_dir)
    assert isinstance(parsed["market.alpha"], float) and isinstance(parsed["seed"], int)
    assert "run.progress" not in parsed and not any(key.startswith("hydra") for key in parsed)


def test_config_digest_ignores_progress_only():
    base = load_config("paper_28")
    assert config_digest(base) == config_digest(load_config("paper_28", ["run.progress=false", "run.resume=false"]))
    assert config_digest(base) != config_digest(load_config("paper_28", ["market.eta=2.0"]))


def test_threads_are_divided_among_parallel_jobs():
    cores = len(os.sched_getaffinity(0))
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert threads_per_job({**joblib, "n_jobs": -1}) == 1
    assert threads_per_job({**joblib, "n_jobs": 1}) == cores
    assert threads_per_job({"_target_": "hydra_plugins.hydra_submitit_launcher.x", "cpus_per_task": 4}) == 4
    assert threads_per_job({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) is None
    assert thread_environment(1)["XLA_FLAGS"].startswith("--xla_cpu_multi_thread_eigen=false")
    assert "XLA_FLAGS" not in thread_environment(2) and thread_environment(2)["OMP_NUM_THREADS"] == "2"


def test_ready_sweeps_compose():
    register_schema()
    for sweep, jobs in (("alpha", 27), ("eta", 30), ("temperature", 24), ("network_size", 8), ("paper_grid", 54)):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=[f"sweep={sweep}"], return_hydra_config=True)
        params = composed.hydra.sweeper.params
        assert np.prod([len(str(values).split(",")) for values in params.values()]) == jobs
        assert composed.hydra.sweep.dir == f"multirun/sweep_{sweep}"
        first = [f"{key}={str(values).split(',')[0]}" for key, values in params.items()]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            job = to_config(compose(config_name="config", overrides=[f"sweep={sweep}", *first]))  # validates
        assert job.network.peers == {"paper_grid": 28, "network_size": 28, "eta": 40}.get(sweep, 200)
    assert load_config("paper_table1", ["sweep=network_size", "size=n10000_m64"]).network.stages == 64


@pytest.mark.slow  # make test-slow
def test_optuna_sweep_minimises_the_returned_objective(tmp_path):
    result = sim("-m", "sweep=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", *TINY[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    objectives = [json.loads(marker.read_text())["objective"] for marker in tmp_path.glob(f"*/{COMPLETE}")]
    assert len(objectives) == 2 and best["best_value"] == min(objectives)
    assert set(best["best_params"]) == {"market.eta", "allocation.period"}


def test_convergence_objective():
    def stages(gaps):  # one row per step and stage
        return pd.DataFrame([{"step": step, "stage": s, "relative_nash_gap": g}
                             for step, row in gaps.items() for s, g in enumerate(row)])

    converging = stages({0: [0.5, 0.5], 10: [1e-2, 1e-4], 20: [1e-4, 1e-3], 30: [0.0, 0.0]})
    assert convergence_step(converging) == 20 and convergence_objective(converging, 30) == 20
    stuck = stages({0: [0.5, 0.5], 10: [0.2, 0.1]})
    assert np.isnan(convergence_step(stuck)) and convergence_objective(stuck, 10) == pytest.approx(12.0)


def test_a_single_run_into_a_finished_directory_runs_again(tmp_path):
    for _ in range(2):
        result = sim(*TINY, f"hydra.run.dir={tmp_path}")
        assert result.returncode == 0 and "Nodes and average price" in result.stdout
    assert (tmp_path / COMPLETE).is_file()


def test_a_job_whose_outputs_are_missing_or_changed_is_redone_saying_why(tmp_path):
    multirun(tmp_path, "seed=0")
    (only,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    recorded = json.loads((only / COMPLETE).read_text())["outputs"]
    assert {"metrics.parquet", "peers.parquet", "summary.json"} <= set(recorded)
    for damage, why in ((lambda: (only / "metrics.parquet").unlink(), "metrics.parquet is missing"),
                        (lambda: (only / COMPLETE).write_text("{not json"), "complete.json does not read"),
                        (lambda: (only / COMPLETE).write_text("null"), "complete.json does not read"),
                        (lambda: (only / "peers.parquet").write_bytes(b"truncated"), "peers.parquet does not match")):
        damage()
        stdout = multirun(tmp_path, "seed=0")
        assert f"Redoing {only}: {why}" in stdout and "1 jobs, 1 done, 0 skipped" in stdout
    assert "1 jobs, 0 done, 1 skipped" in multirun(tmp_path, "seed=0")


def test_collect_lists_every_broken_run_with_its_reason_and_never_aborts(joblib_sweep, tmp_path):
    sweep_dir, _ = joblib_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    runs = sorted(p for p in copy.iterdir() if p.is_dir() and not p.name.startswith("."))
    (runs[0] / "summary.json").write_text("{}")
    (runs[1] / "summary.json").write_text("null")
    (runs[2] / "summary.json").unlink()
    (runs[2] / "status.json").write_text("{garbage")
    (runs[3] / ".hydra" / "overrides.yaml").write_text("garbage: [")
    peers = runs[4] / "peers.parquet"
    peers.write_bytes(peers.read_bytes()[: peers.stat().st_size // 2])
    (runs[5] / ".hydra" / "overrides.yaml").write_text("just a string")
    collection = collect(copy)
    status = dict(zip(collection.runs["run"], collection.runs["status"]))
    assert [status[r.name] for r in runs[:6]] == ["partial", "partial", "partial", "broken", "partial", "broken"]
    assert [status[r.name] for r in runs[6:]] == ["complete", "complete"]
    assert len(collection.problems) == 6
    for run, reason in zip(runs, ("summary.json lacks", "summary.json holds NoneType", "status.json does not read",
                                  "overrides.yaml does not read", "peers.parquet does not read", "not a list of key=value")):
        assert any(problem.startswith(run.name) and reason in problem for problem in collection.problems), reason


@pytest.mark.slow  # make test-slow
def test_killing_a_sweep_leaves_no_workers_and_the_same_command_resumes_it(tmp_path):
    import signal
    import subprocess
    import time

    from tests.test_cli import SIM

    command = [SIM, "-m", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path}", "experiment=paper_28",
               "run.steps=20000", "run.record_interval=1000", "report.table_steps=[0]", "run.progress=false",
               "run.figures=false", "seed=0,1"]
    main = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers():
        found = []
        for stat in __import__("glob").glob("/proc/[0-9]*/stat"):
            try:
                fields = open(stat).read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == main.pid and fields[0] != "Z":
                found.append(int(stat.split("/")[2]))
        return found

    deadline = time.time() + 90
    while time.time() < deadline and len(list(tmp_path.glob("*/.hydra/overrides.yaml"))) < 2:
        time.sleep(0.5)
    children = workers()
    assert children and len(list(tmp_path.glob("*/.hydra"))) == 2
    main.send_signal(signal.SIGKILL)
    main.wait()
    time.sleep(5)
    alive = []
    for pid in children:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    assert not alive, f"workers {alive} outlived the sweep"
    assert not list(tmp_path.glob(f"*/{COMPLETE}"))
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "2 jobs, 2 done, 0 skipped" in resumed.stdout


def test_trajectory_panels_wrap_at_four_columns_and_share_y():
    """Six values of the facet parameter: two rows of four panels per metric (the last two hidden),
    every panel of a metric on one y scale; the legend names the paper's layers."""
    from analysis.gallery import table1_trajectories

    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    steps = pd.DataFrame([{"run": f"r{a}", "market.alpha": a, "step": step, "stage": stage,
                           "peers": 10 + stage, "mean_price": a * (1 + step) + stage}
                          for a in alphas for step in (0, 10) for stage in (0, 1)])
    runs = pd.DataFrame({"run": [f"r{a}" for a in alphas], "market.alpha": alphas, "status": "complete"})
    fig, _ = table1_trajectories(Collection(runs=runs, steps=steps, swept=["market.alpha"]))
    axes = np.array(fig.axes).reshape(4, 4)
    assert all(ax.get_visible() for ax in axes[:2].ravel()) and [ax.get_visible() for ax in axes[2:, 2:].ravel()] == [
        False] * 4
    price_axes = [axes[1, c] for c in range(4)] + [axes[3, c] for c in range(2)]
    assert len({ax.get_ylim() for ax in price_axes}) == 1
    assert [text.get_text() for text in axes[0, 0].get_legend().get_texts()] == ["Layer 1", "Layer 2"]


def test_trajectories_of_the_published_network_carry_its_points():
    """Runs of paper_table1 (4 layers, report.reference set): Table 1's published points are drawn
    as crosses beside the runs' lines; runs of another shape get none."""
    from analysis.gallery import table1_trajectories
    from p2pllm_abm.paper import PAPER_TABLE1

    def collection(stages: int) -> Collection:
        steps = pd.DataFrame([{"run": f"r{seed}", "seed": seed, "step": step, "stage": stage, "peers": 50,
                               "mean_price": 6.0} for seed in (0, 1) for step in (0, 100, 500) for stage in range(stages)])
        runs = pd.DataFrame({"run": ["r0", "r1"], "seed": [0, 1], "status": "complete",
                             "report.reference": "paper_table1"})
        return Collection(runs=runs, steps=steps, swept=["seed"])

    fig, caption = table1_trajectories(collection(4))
    crosses = [c for c in fig.axes[1].collections if len(c.get_offsets()) == 4 * 3]  # 4 layers x steps 0, 100, 500
    assert crosses and "crosses: paper_table1" in caption
    prices = sorted(y for _, y in crosses[0].get_offsets())
    assert prices == sorted(p for step in (0, 100, 500) for p in PAPER_TABLE1[step][1])
    fig, caption = table1_trajectories(collection(3))
    assert "crosses" not in caption

    # swept over alpha: only the panel at the published alpha (0.5) carries the points
    swept = collection(4)
    swept.steps["market.alpha"] = swept.steps["seed"].map({0: 0.3, 1: 0.5})
    swept.runs["market.alpha"] = [0.3, 0.5]
    swept.swept = ["market.alpha", "seed"]
    fig, _ = table1_trajectories(swept)
    marked = [any(len(c.get_offsets()) == 12 for c in ax.collections) for ax in fig.axes]
    assert marked == [False, True, False, True]  # axes: (peers, alpha 0.3), (peers, 0.5), (price, 0.3), (price, 0.5)


@pytest.mark.parametrize("prefix", ["", "members[3]."])
def test_collect_reads_summary_nulls_back_as_the_values_they_stand_for(prefix):
    """strict_json writes inf, -inf and NaN as null with a reason; collect reads them back (an
    unbounded Nash gap stays inf, not a run that fails to read), for a single run and a member."""
    values = [0.5, np.inf, -np.inf, np.nan]
    written = strict_json({"final": {"gap": values}})
    reasons = {f"{prefix}{path}": reason for path, reason in written["non_finite"].items()}
    np.testing.assert_array_equal(summary_numbers(written["final"]["gap"], f"{prefix}final.gap", reasons), values)
