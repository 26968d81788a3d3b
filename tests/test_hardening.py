"""Bad input is refused in one line before a run; a run whose arithmetic leaves float64 stops at the
first non-finite state, naming the step, the peer and the field most likely to blame."""

import numpy as np
import pandas as pd
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.config import ConfigError
from tests.test_cli import FAST, sim

RUNAWAY = ["market.update_rule=observed", "market.eta=1e6", "run.record_interval=10", "report.table_steps=[0]"]


@pytest.mark.parametrize("override, field", [
    ("market.eta=1e308", "market.eta"),
    ("market.temperature=1e-308", "market.temperature"),
    ("market.demand=1e308", "market.demand"),
    ("network.initial_price=1e308", "network.initial_price"),
    ("network.cost_range=[0,1e-310]", "network.cost_range"),
    ("market.price_floor=1e300", "market.price_floor"),
    ("market.outside_option=-1e300", "market.outside_option"),
])
def test_scales_where_float64_cannot_stay_exact_are_refused(override, field):
    with pytest.raises(ConfigError, match=f"^{field} = .* is invalid: allowed .*float64"):
        load_config("paper_28", overrides=[override])


def test_a_run_stops_at_the_first_non_finite_state_whether_fused_or_stepped():
    cfg = load_config("paper_28", overrides=RUNAWAY)
    fused = P2PLLMModel(cfg)
    with pytest.raises(ConfigError, match=r"^market.eta = 1000000.0 is invalid: .* became inf at step (\d+)") as run:
        fused.run(2000)
    stepped = P2PLLMModel(cfg)
    with pytest.raises(ConfigError) as step:
        for _ in range(2000):
            stepped.step()
    assert str(run.value) == str(step.value)
    failed_at = int(str(run.value).split("at step ")[1].split(",")[0])
    assert stepped.steps == failed_at
    prices = fused.metrics_frame()["mean_price"].dropna()
    assert np.isfinite(prices).all() and fused.metrics_frame()["step"].max() < failed_at


def test_the_command_line_reports_a_runaway_in_one_line_and_keeps_the_records(tmp_path):
    result = sim("experiment=paper_28", *RUNAWAY, "run.steps=2000", "run.progress=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pllm-sim: market.eta = 1000000.0 is invalid")
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert np.isfinite(metrics["mean_price"].dropna()).all() and metrics["step"].max() > 0


def _profile_case(tmp_path, edit):
    import json

    from p2pllm_abm.costs import resolve_profile

    text = resolve_profile("llama-134m_4stages_cpu.json").read_text()
    path = tmp_path / "profile.json"
    if edit == "truncated":
        path.write_text(text[: len(text) // 2])
    else:
        profile = json.loads(text)
        edit(profile)
        path.write_text(json.dumps(profile))
    return path


@pytest.mark.parametrize("edit, key", [
    ("truncated", "not valid JSON (line"),
    (lambda p: p["stages"][2].pop("decode_ms"), "stages[2].decode_ms = '(missing)'"),
    (lambda p: p["stages"][1].update(prefill_ms="fast"), "stages[1].prefill_ms = 'fast'"),
    (lambda p: p["stages"][0].update(decode_ms=-1.0), "stages[0].decode_ms = -1.0"),
    (lambda p: p["stages"][3].update(decode_ms=0), "stages[3].decode_ms = 0"),
    (lambda p: p["stages"][0].update(prefill_ms=float("nan")), "stages[0].prefill_ms = nan"),
    (lambda p: p["stages"][0].update(decode_ms=float("inf")), "stages[0].decode_ms = inf"),
    (lambda p: p["metadata"].update(memory_bandwidth_gbs=0), "metadata.memory_bandwidth_gbs = 0"),
    (lambda p: p["stages"][0].update(decode_ms=True), "stages[0].decode_ms = True"),
    (lambda p: p.update(stages=[]), "stages = []"),
    (lambda p: p.pop("metadata"), "metadata = None"),
])
def test_a_bad_cost_profile_is_refused_naming_the_file_and_the_key(tmp_path, edit, key):
    path = _profile_case(tmp_path, edit)
    with pytest.raises(ConfigError, match="^network.cost_profile = ") as refused:
        load_config("grounded_costs", overrides=[f"network.cost_profile={path}"])
    assert str(path) in str(refused.value) and key in str(refused.value)


@pytest.mark.parametrize("overrides", [
    ["network.peers=100000000", "network.initial_distribution=null"],
    ["network.peers=1000000", "network.initial_distribution=null", "clients.routing=path"],
])
def test_a_run_that_cannot_fit_in_memory_is_refused_before_allocating(overrides):
    import time

    cfg = load_config("paper_table1", overrides=overrides)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^network.peers = .* allowed a run that fits in memory: .* GiB are available"):
        P2PLLMModel(cfg)
    assert time.perf_counter() - started < 5  # refused before the peers' arrays exist


def test_the_memory_estimate_grows_with_each_part_and_can_be_switched_off():
    from p2pllm_abm.resources import check_memory, estimate_memory

    base = load_config("paper_table1")
    parts = estimate_memory(base)
    assert sum(parts.values()) < 2**30  # the paper's run: well under 1 GiB
    bigger = estimate_memory(load_config("paper_table1", overrides=["clients.count=128", "run.record_interval=10"]))
    assert bigger["requests"] == 2 * parts["requests"] and bigger["snapshots"] > 4 * parts["snapshots"]
    path = estimate_memory(load_config("paper_table1", overrides=["clients.routing=path"]))
    assert path["requests"] == 64 * 128 * 128 * 40  # clients x widest boundary (78 -> 128)^2
    with pytest.raises(ConfigError, match="run.record_interval"):
        check_memory(load_config("paper_table1", overrides=["run.record_interval=1"]), available=700 * 2**20)
    check_memory(load_config("paper_table1", overrides=["run.memory_check=false"]), available=1)


def test_an_empty_table_is_refused_before_the_run_and_the_last_step_is_always_printed(tmp_path):
    with pytest.raises(ConfigError, match=r"^report.table_steps = \[\] is invalid"):
        load_config("paper_28", overrides=["report.table_steps=[]"])
    result = sim("experiment=paper_28", "run.steps=30", "run.record_interval=10", "report.table_steps=[100]",
                 "run.progress=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "\n30 " in result.stdout  # steps past run.steps are left out, the last one is printed


def test_an_unwritable_run_directory_is_refused_before_the_run(tmp_path):
    from p2pllm_abm.cli import run_experiment

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="^hydra.run.dir = .* is invalid: allowed a directory this process can write"):
        run_experiment(load_config("paper_28"), blocker / "run")
    result = sim("experiment=paper_28", *FAST, f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_segments_and_flushes_leave_the_records_unchanged(tmp_path):
    from p2pllm_abm.cli import flush_segment, run_experiment

    cfg = load_config("paper_28", overrides=["run.progress=false", "run.figures=false"])
    assert flush_segment(cfg.run) == 50 and flush_segment(cfg.run) % cfg.run.record_interval == 0
    run_experiment(cfg, tmp_path, report=False)
    direct = P2PLLMModel(cfg)
    direct.run(cfg.run.steps)
    assert pd.read_parquet(tmp_path / "metrics.parquet").equals(direct.metrics_frame())
    assert pd.read_parquet(tmp_path / "peers.parquet").equals(direct.peers_frame())
    assert not list(tmp_path.glob(".*.tmp"))  # every write was renamed into place


def test_a_failure_at_the_end_keeps_the_flushed_records(tmp_path, monkeypatch):
    import p2pllm_abm.cli as cli

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli, "write_run_outputs", unwritable)
    cfg = load_config("paper_28", overrides=["run.progress=false", "run.figures=false"])
    with pytest.raises(ConfigError, match="could not be written at the end of the run"):
        cli.run_experiment(cfg, tmp_path, report=False)
    flushed = pd.read_parquet(tmp_path / "metrics.parquet")
    assert flushed["step"].max() == cfg.run.steps  # the last segment's flush holds every record


def _table(**changes):
    from p2pllm_abm.network import PeerTable

    columns = dict(stage_start=np.array([0, 0, 1]), stage_end=np.array([1, 1, 2]), cost=np.array([1.0, 2.0, 3.0]),
                   price=np.array([1.0, 1.0, 1.0]), position=np.full((3, 2), 0.5), alive=np.ones(3, dtype=bool),
                   n_stages=2)
    return PeerTable(**{**columns, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"cost": np.array([1.0, np.nan, 3.0])}, r"PeerTable.cost\[1\] = nan is invalid"),
    ({"cost": np.array([1.0, -2.0, 3.0])}, r"PeerTable.cost\[1\] = -2.0 is invalid"),
    ({"cost": np.ones((3, 2))}, "PeerTable.cost has shape"),
    ({"price": np.array([1.0, 1.0, np.nan])}, r"PeerTable.price\[2\] = nan is invalid"),
    ({"latency_range": (20.0, 1.0)}, "PeerTable.latency_range = .* is invalid"),
])
def test_peer_table_refuses_values_no_model_could_use(changes, message):
    with pytest.raises(ValueError, match=message):
        _table(**changes)


def test_routing_refuses_bad_arguments_instead_of_answering_wrongly():
    from p2pllm_abm.pareto import pareto_paths
    from p2pllm_abm.routing import best_path

    peers = _table()
    assert best_path(peers, 0.5)[1]  # a path exists
    with pytest.raises(ValueError, match="alpha = 2 is invalid: allowed 0 <= alpha <= 1"):
        best_path(peers, 2)
    peers.cost = np.array([1.0, np.inf, 3.0])  # set after construction, as a user might
    with pytest.raises(ValueError, match=r"PeerTable.cost\[1\] = inf is invalid"):
        pareto_paths(peers)
    peers.cost = np.array([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match=r"PeerTable.cost\[1\] = nan"):
        best_path(peers, 0.5)
    model = P2PLLMModel(load_config("paper_28"))
    with pytest.raises(ValueError, match="alpha = 2 is invalid"):
        model.route(alpha=2)
    with pytest.raises(ValueError, match="client = .* is invalid"):
        model.route(client=np.array([np.nan, 0.1]))


@pytest.mark.serial  # run alone: a loaded machine could stretch its waits
def test_ctrl_c_mid_run_writes_what_was_recorded(tmp_path):
    import json
    import signal
    import subprocess
    import time

    from tests.test_cli import SIM

    # SIGINT back to its default in the run: a shell ignores it in background jobs (make test &), the
    # ignore is inherited, and Python then never raises KeyboardInterrupt (the run would not stop)
    run = subprocess.Popen([SIM, "experiment=paper_28", "run.steps=400000", "run.record_interval=100",
                            "report.table_steps=[0]", "run.progress=false", f"hydra.run.dir={tmp_path}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "metrics.parquet").exists():  # the first flush
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert 0 < summary["steps"] < 400000 and metrics["step"].max() <= summary["steps"]
    assert np.isfinite(metrics["mean_price"].dropna()).all()
    assert pd.read_parquet(tmp_path / "peers.parquet")["step"].max() == metrics["step"].max()


def test_ctrl_c_during_a_record_waits_for_the_record():
    """A record's rows go into the metrics and the peers' snapshots together (else an interrupted
    run's outputs disagree on their last step)."""
    import os
    import signal
    import threading

    from p2pllm_abm.runtime import deferred_interrupt

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist's workers ignore it
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the rest of the block")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert done == ["the rest of the block"]


def test_summary_json_is_strict_json_with_the_reason_for_every_missing_number(tmp_path):
    import json

    from p2pllm_abm.cli import run_experiment

    cfg = load_config("paper_28", overrides=["market.alpha=0.0", "clients.count=2", "clients.request_classes=8",
                                             "run.steps=20", "run.progress=false", "run.figures=false"])
    run_experiment(cfg, tmp_path, report=False)
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    reasons = summary["non_finite"]
    assert summary["final"]["nash_gap_per_stage"] == [None] * 4  # alpha = 0: no best response anywhere
    assert all("unbounded" in reasons[f"final.nash_gap_per_stage[{s}]"] for s in range(4))
    empty = [k for k, v in enumerate(summary["final"]["path_price_per_class"]) if v is None]
    assert empty and all("no data" in reasons[f"final.path_price_per_class[{k}]"] for k in empty)
    classes = pd.read_parquet(tmp_path / "metrics.parquet").query("scope == 'request_class'")
    assert classes["path_price"].isna().any() and not np.isnan(classes["path_price"].dropna().to_numpy(float)).any()
