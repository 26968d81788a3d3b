"""Calibration: the replay equals the model, the fit recovers parameters it did not see, the
allocation readings behave as their definitions say, and the command line refuses bad fields."""

import json
import re

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


def write_csv(path, rows, columns=("iteration", "layer", "nodes", "avg_price")):
    path.write_text(",".join(columns) + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


def table_rows(reference):
    return [(step, s + 1, nodes[s], prices[s]) for step, (nodes, prices) in sorted(reference.items())
            for s in range(len(nodes))]


def test_a_table_file_reads_as_the_published_table(tmp_path):
    from p2pllm_abm.calibration import published_table, read_table
    from p2pllm_abm.paper import PAPER_TABLE1

    rows = table_rows(PAPER_TABLE1)
    shuffled = write_csv(tmp_path / "t.csv", rows[::-1])  # row order does not matter
    read, published = read_table(shuffled), published_table("paper_table1")
    assert read.steps == published.steps
    assert np.array_equal(read.nodes, published.nodes) and np.array_equal(read.prices, published.prices)
    only_prices = read_table(write_csv(tmp_path / "p.csv", [(r[0], r[1], r[3]) for r in rows],
                                       ("iteration", "layer", "avg_price")))
    assert np.isnan(only_prices.nodes).all() and np.array_equal(only_prices.prices, published.prices)


@pytest.mark.parametrize("rows, columns, message", [
    ([(0, 1, 5, "abc")], None, "line 2, column avg_price: 'abc' is invalid"),
    ([(0, 1, 5, 1.0), (0, 0, 5, 1.0)], None, "line 3, column layer: '0' is invalid: allowed an integer >= 1"),
    ([(0, 1, 5, 1.0), (0, 1, 6, 1.0)], None, "line 3, column layer: iteration 0 layer 1 appears twice"),
    ([(0, 1, 5, 1.0), (0, 2, 5, 1.0), (100, 1, 5, 1.0)], None, "iteration 100 has no row for layer 2"),
    ([(0, 1, -5, 1.0)], None, "line 2, column nodes: '-5' is invalid"),
    ([(0.5, 1, 5, 1.0)], None, "line 2, column iteration: '0.5' is invalid"),
    ([(0, 1, 5, 0.0)], None, "line 2, column avg_price: '0.0' is invalid: allowed a finite number > 0"),
    ([(0, 1, 5)], ("iteration", "layer", "peers"), "columns ['iteration', 'layer', 'peers'] are invalid"),
])
def test_a_malformed_table_file_is_refused_naming_line_and_column(tmp_path, rows, columns, message):
    from p2pllm_abm.calibration import read_table

    path = write_csv(tmp_path / "bad.csv", rows, columns or ("iteration", "layer", "nodes", "avg_price"))
    with pytest.raises(ValueError, match=re.escape(message)):
        read_table(path)


def test_calibrating_to_a_table_file_equals_calibrating_to_the_same_table_by_name(monkeypatch, tmp_path):
    overrides = [*SMALL, "run.steps=500", "report.table_steps=[0,100,500]", "allocation.reading=head_count"]
    cfg = load_config("paper_table1", overrides=[*overrides, "allocation.move_fraction=0.05"])
    steps = [0, 100, 200, 500]
    table = replay_table(cfg, allocation_schedule(cfg, 500), steps)
    reference = {s: (table.nodes[k].tolist(), table.prices[k].tolist()) for k, s in enumerate(steps)}
    monkeypatch.setitem(__import__("p2pllm_abm.paper", fromlist=["REFERENCES"]).REFERENCES, "by_name", reference)
    path = write_csv(tmp_path / "by_file.csv", table_rows(reference))
    by_name, by_file = (calibrate(name, ["allocation.move_fraction"], seeds=[0], experiment="paper_table1",
                                  overrides=overrides, reading="head_count") for name in ("by_name", str(path)))
    assert by_file["parameters"] == by_name["parameters"] and by_file["table"] == by_name["table"]
    with pytest.raises(ValueError, match="--experiment is missing"):
        calibrate(str(path), ["allocation.move_fraction"], seeds=[0])


def test_each_seed_is_fitted_on_its_own(monkeypatch):
    """A seed's fit (its move fraction from its node rows, then its price fields) is the same alone
    and within a larger seed set: seeds share only the allocation reading, given here."""
    overrides = [*SMALL, "run.steps=500", "report.table_steps=[0,100,500]"]
    cfg = load_config("paper_table1", overrides=[*overrides, "allocation.reading=head_count",
                                                 "allocation.move_fraction=0.05", "market.temperature=2.0"])
    steps = [0, 100, 200, 500]
    table = replay_table(cfg, allocation_schedule(cfg, 500), steps)
    monkeypatch.setitem(__import__("p2pllm_abm.paper", fromlist=["REFERENCES"]).REFERENCES, "synthetic_seeds",
                        {s: (table.nodes[k].tolist(), table.prices[k].tolist()) for k, s in enumerate(steps)})
    fit = ["market.temperature", "allocation.move_fraction"]
    alone, together = (calibrate("synthetic_seeds", fit, seeds=seeds, experiment="paper_table1", overrides=overrides,
                                 reading="head_count") for seeds in ([1], [0, 1, 2]))
    assert together["per_seed"][1] == alone["per_seed"][0]
    moves = together["readings"]["head_count"]["per_seed"]["allocation.move_fraction"]
    assert len(set(moves)) > 1  # the seeds' own move fractions differ, so sharing one would show
