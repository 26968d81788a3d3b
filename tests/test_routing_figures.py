"""Figures 1 and 2 regenerate from a run directory or a fresh network."""

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.routing_figures import network_from_run
from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.metrics import write_run_outputs
from p2pllm_abm.pareto import pareto_paths

OVERRIDES = ["run.steps=60", "run.record_interval=20", "run.progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model = P2PLLMModel(load_config("paper_28", overrides=OVERRIDES))
    model.run(60)
    out = tmp_path_factory.mktemp("run")
    write_run_outputs(model, out, wall_time_s=1.0)
    return out, model


def test_network_is_read_back_from_run_outputs(run_dir):
    out, model = run_dir
    peers = network_from_run(out)
    for column in ("stage_start", "stage_end", "cost", "price", "position", "alive"):
        np.testing.assert_array_equal(getattr(peers, column), getattr(model.peers, column))
    assert (peers.n_stages, peers.latency_range) == (model.peers.n_stages, model.peers.latency_range)
    first = network_from_run(out, step=0)
    assert np.all(first.price == 1.0)
    with pytest.raises(ValueError, match="step = 7 was not recorded"):
        network_from_run(out, step=7)
    with pytest.raises(FileNotFoundError, match="run_dir"):
        network_from_run(out / "missing")


def test_pareto_figure_from_a_run_directory(run_dir, tmp_path):
    out, model = run_dir
    main(["pareto-figure", "--run-dir", str(out), "--out", str(tmp_path), "--client", "0.2", "0.7"])
    label = f"{out.name}_steplast"  # the files carry the run: figures of two runs never overwrite each other
    for name in (f"figure2_pareto_{label}.png", f"figure2_pareto_{label}.pdf", f"pareto_frontier_{label}.csv",
                 f"weighted_sum_sweep_{label}.csv"):
        assert (tmp_path / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / f"pareto_frontier_{label}.csv")
    front = pareto_paths(model.peers, np.array([0.2, 0.7]))
    np.testing.assert_array_equal(table["price"], front.price)
    np.testing.assert_array_equal(table["time"], front.time)
    assert table["supported"].tolist() == front.supported.tolist()


def test_network_figure_from_a_fresh_network(tmp_path):
    main(["network-figure", "--experiment", "paper_28", "--override", "seed=4", "--steps", "20",
          "--alpha", "0.3", "--out", str(tmp_path)])
    main(["network-figure", "--experiment", "paper_28", "--override", "seed=5", "--steps", "20",
          "--alpha", "0.3", "--out", str(tmp_path)])
    for seed in (4, 5):  # two networks, two figures
        assert (tmp_path / f"figure1_network_paper_28_seed-{seed}_20steps.png").stat().st_size > 0
        assert (tmp_path / f"figure1_network_paper_28_seed-{seed}_20steps.pdf").stat().st_size > 0


@pytest.mark.parametrize("argv", [["network-figure", "--alpha", "1.5"], ["pareto-figure", "--alphas", "0.5", "-1"],
                                  ["pareto-figure", "--steps", "-3"]])
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert "allowed" in capsys.readouterr().err
