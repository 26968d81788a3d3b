"""Calibration: the replay equals the model, the fit recovers parameters it did not see, the
allocation readings behave as their definitions say, and the command line refuses bad fields."""

import json

import numpy as np
import pytest

from analysis.__main__ import main as analysis_main
from analysis.calibration import side_by_side, write_calibration
from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.calibration import allocation_schedule, calibrate, replay_table
from p2pllm_abm.allocation import allocation_equilibrium
from p2pllm_abm.metrics import stage_rows

SMALL = ["network.peers=40", "network.initial_distribution=[16,10,7,7]", "clients.count=16", "run.record_interval=50"]


@pytest.mark.parametrize("overrides", [
    [],
    ["allocation.reading=head_count", "market.temperature=2.5", "network.initial_price=4.0", "market.eta=30.0"],
    ["market.update_rule=best_response", "market.marginal_cost=0.3"],
])
def test_replay_equals_the_model_table(overrides):
    cfg = load_config("paper_table1", overrides=[*SMALL, *overrides])
    steps = [0, 50, 100, 300]
    model = P2PLLMModel(cfg)
    model.run(300)
    rows = stage_rows(model.metrics_frame())
    replay = replay_table(cfg, allocation_schedule(cfg, 300), steps)
    for k, step in enumerate(steps):
        at = rows[rows["step"] == step].sort_values("stage")
        assert at["peers"].tolist() == replay.nodes[k].tolist()
        np.testing.assert_allclose(at["mean_price"], replay.prices[k], rtol=1e-12)


def test_head_count_reading_balances_numbers_and_compute_share_satisfies_eq_8():
    for reading in ("head_count", "compute_share"):
        cfg = load_config("paper_table1", overrides=[f"allocation.reading={reading}", "clients.count=0"])
        schedule = allocation_schedule(cfg, 1000)
        counts = np.bincount(schedule.stages[-1], minlength=4)
        check = allocation_equilibrium(schedule.cost, schedule.stages[-1], schedule.alive, 4, reading)
        assert check.efficient
        if reading == "head_count":
            assert counts.tolist() == [50, 50, 50, 50]
        else:
            assert counts.max() - counts.min() > 1  # capacities, not head counts, are balanced


def test_calibration_recovers_parameters_from_a_table_simulated_with_them(monkeypatch, tmp_path):
    truth = {"market.temperature": 2.2, "network.initial_price": 3.0, "market.eta": 20.0}
    overrides = [*SMALL, "run.steps=1000", "report.table_steps=[0,100,500,1000]"]
    cfg = load_config("paper_table1", overrides=[*overrides, "allocation.reading=head_count",
                                                 *(f"{k}={v}" for k, v in truth.items())])
    steps = [0, 100, 500, 1000]
    table = replay_table(cfg, allocation_schedule(cfg, 1000), steps)
    monkeypatch.setitem(__import__("p2pllm_abm.paper", fromlist=["REFERENCES"]).REFERENCES, "synthetic",
                        {s: (table.nodes[k].tolist(), table.prices[k].tolist()) for k, s in enumerate(steps)})
    result = calibrate("synthetic", list(truth), {"market.alpha": 0.5}, seeds=[0], experiment="paper_table1",
                       overrides=overrides)
    assert result["reading"] == "head_count"  # its node rows are the table's exactly
    assert result["readings"]["head_count"]["node_rmse"] == 0.0
    assert result["loss"] < 1e-10 < result["literal_loss"]
    for name, value in truth.items():
        assert result["parameters"][name]["value"] == pytest.approx(value, rel=1e-3)
        assert result["parameters"][name]["low"] <= result["parameters"][name]["value"] <= \
            result["parameters"][name]["high"]
    written = write_calibration(result, tmp_path)
    saved = json.loads(written[0].read_text())
    assert set(saved["parameters"]["market.temperature"]) == {"value", "low", "high"}
    assert written[1].stat().st_size > 0
    assert "|" in side_by_side(result).iloc[0, 0]


def test_calibrate_command_refuses_bad_fields(capsys):
    for argv, message in ((["--fit", "market.alhpa"], "--fit 'market.alhpa' is invalid"),
                          (["--fit", "market.temperature", "--fixed", "market.alpha"], "--fixed = 'market.alpha' is invalid"),
                          (["--fit", "market.temperature", "--table", "nope"], "table = 'nope' is invalid")):
        with pytest.raises(SystemExit) as stop:
            analysis_main(["calibrate", *argv, "--out", "unused"])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_calibration_refuses_steps_between_reallocations():
    cfg = load_config("paper_table1", overrides=SMALL)
    with pytest.raises(ValueError, match="multiples of allocation.period"):
        replay_table(cfg, allocation_schedule(cfg, 100), [0, 55])


def test_move_fraction_is_recovered_from_the_node_rows(monkeypatch):
    overrides = [*SMALL, "run.steps=500", "report.table_steps=[0,100,500]", "allocation.reading=head_count"]
    cfg = load_config("paper_table1", overrides=[*overrides, "allocation.move_fraction=0.05"])
    steps = [0, 100, 200, 500]
    table = replay_table(cfg, allocation_schedule(cfg, 500), steps)
    monkeypatch.setitem(__import__("p2pllm_abm.paper", fromlist=["REFERENCES"]).REFERENCES, "synthetic_nodes",
                        {s: (table.nodes[k].tolist(), table.prices[k].tolist()) for k, s in enumerate(steps)})
    result = calibrate("synthetic_nodes", ["allocation.move_fraction"], seeds=[0], experiment="paper_table1",
                       overrides=overrides, reading="head_count")
    fitted = result["parameters"]["allocation.move_fraction"]["value"]
    assert result["readings"]["head_count"]["node_rmse"] == 0.0
    truth = load_config("paper_table1", overrides=[*overrides, f"allocation.move_fraction={fitted}"])
    assert np.array_equal(replay_table(truth, allocation_schedule(truth, 500), steps).nodes, table.nodes)
    assert result["loss"] == 0.0  # the market fields were not fitted: the prices are the table's own
