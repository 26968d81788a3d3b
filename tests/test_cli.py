"""The p2pllm-sim entry point: a run directory, a multirun, and clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from p2pllm_abm.paper import PAPER_TABLE1, checkpoint_table

SIM = str(Path(sys.executable).with_name("p2pllm-sim"))
FAST = ["run.steps=20", "run.record_interval=10", "report.table_steps=[0,10,20]", "run.progress=false"]


def sim(*args, extra_env: dict[str, str] | None = None):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(extra_env or {})}
    return subprocess.run([SIM, *args], capture_output=True, text=True, env=env, timeout=300)


def test_single_run_writes_the_run_directory(tmp_path):
    result = sim("experiment=paper_28", *FAST, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    for name in ("metrics.parquet", "peers.parquet", "summary.json", "nodes_per_stage.png", "mean_price_per_stage.png"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 20 and sum(summary["final"]["peers_per_stage"]) == 28
    assert summary["config"]["network"]["initial_distribution"] == [10, 4, 10, 4]
    assert "Avg. Price" in result.stdout and "Layer 4" in result.stdout
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert sorted(metrics["step"].unique()) == [0, 10, 20]


def test_multirun_sweeps_every_combination(tmp_path):
    """One directory per job, named by the overrides that change results (not by a cache path,
    whose slashes would nest it)."""
    result = sim("-m", "experiment=paper_28", *FAST, "market.alpha=0.25,0.75", "seed=0,1",
                 f"run.compilation_cache={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    assert "4 jobs, 4 done" in result.stdout
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 4
    combos = {(s["config"]["market"]["alpha"], s["config"]["seed"]) for s in summaries}
    assert combos == {(0.25, 0), (0.25, 1), (0.75, 0), (0.75, 1)}


def test_invalid_override_fails_before_running_with_a_clear_message(tmp_path):
    result = sim("market.alpha=1.5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == "p2pllm-sim: market.alpha = 1.5 is invalid: allowed 0 <= alpha <= 1"
    assert not (tmp_path / "metrics.parquet").exists()


@pytest.mark.parametrize("override, nearest", [("+market.alhpa=0.9", "market.alpha"),
                                               ("market.alhpa=0.9", "market.alpha"),
                                               ("allocation.reding=head_count", "allocation.reading")])
def test_unknown_field_is_refused_in_one_line_with_the_nearest_name(tmp_path, override, nearest):
    result = sim("experiment=paper_28", override, *FAST, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"did you mean {nearest!r}?" in lines[0]
    assert not (tmp_path / "metrics.parquet").exists()


def test_checkpoint_table_puts_paper_numbers_beside_ours():
    rows = []
    for step in (0, 100):
        for stage in range(4):
            rows.append({"step": step, "scope": "stage", "stage": stage, "peers": 50, "mean_price": 1.0 + stage})
    table = checkpoint_table(pd.DataFrame(rows), [0, 100], "paper_table1")
    assert table.loc[(0, "Nodes"), "Layer 1"] == "50 (78)"
    assert table.loc[(100, "Avg. Price"), "Layer 4"] == f"4.00 ({PAPER_TABLE1[100][1][3]:.2f})"
    with pytest.raises(ValueError, match="step 500 was not recorded"):
        checkpoint_table(pd.DataFrame(rows), [500])


def test_figures_regenerate_from_a_run_directory(tmp_path):
    from p2pllm_abm.figures import STAGE_FIGURES, main

    assert sim("experiment=paper_28", *FAST, "run.figures=false", f"hydra.run.dir={tmp_path}").returncode == 0
    assert not any((tmp_path / name).exists() for name in STAGE_FIGURES)
    main([str(tmp_path)])
    assert all((tmp_path / name).stat().st_size > 0 for name in STAGE_FIGURES)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


def test_petals_spans_experiment_records_paths_per_request_class(tmp_path):
    result = sim("experiment=petals_spans", *FAST, "run.figures=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    peers = pd.read_parquet(tmp_path / "peers.parquet")
    assert (peers["stage_end"] - peers["stage_start"]).max() > 1
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    classes = metrics[(metrics["scope"] == "request_class") & (metrics["step"] == 20)]
    assert classes["path_requests"].sum() == 64 * 10 and (classes["path_time"].dropna() > 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["allocation"]["efficient"] is None and len(summary["final"]["path_time_per_class"]) == 4
