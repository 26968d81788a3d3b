"""python -m analysis sensitivity: SALib designs over runs, indices that say what moves the outcomes."""

import numpy as np
import pandas as pd
import pytest
from SALib.sample import morris as morris_design

from analysis.__main__ import main
from analysis.sensitivity import MORRIS_LEVELS, OUTCOMES, parse_ranges
from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.config import ConfigError, with_parameters
from p2pllm_abm.metrics import class_rows, stage_rows

EXPERIMENT = ["--experiment", "paper_28", "--override", "run.record_interval=20", "--steps", "40", "--jobs", "1"]


def test_an_inert_setting_has_no_effect_and_alpha_moves_the_price(tmp_path, capsys):
    """With one seed for every run, a setting the market never reads (Petals' per-hop overhead, under
    per-stage routing) gives identical runs: its Morris effects are exactly 0, while alpha's on the
    mean price are not; the design written is SALib's, and every row's outcomes are that run's."""
    main(["sensitivity", *EXPERIMENT, "--method", "morris", "--samples", "3", "--out", str(tmp_path),
          "--vary", "market.alpha=0.3:0.7", "clients.hop_overhead_ms=1:50"])
    indices = pd.read_csv(tmp_path / "sensitivity.csv")
    mu_star = indices[indices["index"] == "mu_star"].set_index(["parameter", "outcome"])["value"]
    assert (mu_star.loc["clients.hop_overhead_ms"] == 0.0).all()
    assert mu_star.loc[("market.alpha", "mean_price")] > 0
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    problem = {"num_vars": 2, "names": ["market.alpha", "clients.hop_overhead_ms"], "bounds": [[0.3, 0.7], [1, 50]]}
    design = morris_design.sample(problem, 3, num_levels=MORRIS_LEVELS, seed=0)
    np.testing.assert_array_equal(samples[problem["names"]].to_numpy(), design)
    cfg = load_config("paper_28", overrides=["run.record_interval=20"])
    row = samples.iloc[4]
    alone = P2PLLMModel(with_parameters(cfg, {"market.alpha": row["market.alpha"], "clients.hop_overhead_ms": 1.0}))
    alone.run(40)  # that run on its own, not in an ensemble
    metrics = alone.metrics_frame()
    again = {name: read(stage_rows(metrics), class_rows(metrics), 40) for name, read in OUTCOMES.items()}
    assert again == pytest.approx({name: row[name] for name in OUTCOMES}, nan_ok=True)
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    assert "mu_star" in capsys.readouterr().out


def test_sobol_indices_of_a_setting_that_does_nothing_are_zero_and_reruns_agree(tmp_path):
    for name in ("a", "b"):
        main(["sensitivity", *EXPERIMENT, "--method", "sobol", "--samples", "4", "--out", str(tmp_path / name),
              "--vary", "market.eta=5:40", "clients.hop_overhead_ms=1:50"])
    table = pd.read_csv(tmp_path / "a" / "sensitivity.csv")
    pd.testing.assert_frame_equal(table, pd.read_csv(tmp_path / "b" / "sensitivity.csv"))  # the intervals too
    indices = table.set_index(["parameter", "index", "outcome"])["value"]
    assert (indices.loc["clients.hop_overhead_ms"] == 0.0).all()
    assert len(pd.read_parquet(tmp_path / "a" / "samples.parquet")) == 4 * (2 + 2)  # Saltelli: N (D + 2)
    assert indices.loc[("market.eta", "ST", "mean_price")] > 0


@pytest.mark.parametrize("spec, allowed", [
    ("market.alpha=0.8:0.2", "low < high"),
    ("market.alpha=a:b", "two numbers"),
    ("network.peers=10:20", "a float field"),
    ("market.alpha=0.2:1.5", "market.alpha"),  # out of the field's own range
    ("market.alhpa=0.2:0.5", "did you mean 'market.alpha'"),
])
def test_bad_ranges_are_refused_naming_them(spec, allowed):
    with pytest.raises(ConfigError, match=allowed):
        parse_ranges([spec], load_config("paper_28"))
