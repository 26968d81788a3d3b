"""The market-vs-Petals experiment on a tiny setting: its table and figures, and the herding it shows."""

from experiments.petals_baseline import gini, main
import pandas as pd


def test_gini_closed_forms():
    assert gini([1, 1, 1, 1]) == 0.0
    assert abs(gini([0, 0, 0, 1]) - 0.75) < 1e-12  # (n - 1) / n when one holds everything


def test_tiny_comparison_writes_its_table_and_figures(tmp_path):
    """Two seeds of the 28-peer network under load: every system and seed has a row, the figures are
    written, and Petals' deterministic routing piles the load on fewer peers than the market's
    logit choice (a larger coefficient of variation of peer utilisation)."""
    main(["experiment=paper_28", "steps=60", "burn_in=20", "seeds=[0,1]", f"out_dir={tmp_path}",
          "overrides=[network.step_ms=20,churn.join_rate=0.2,churn.leave_rate=0.005,failures.rate=0.01,"
          "run.record_interval=10]"])
    frame = pd.read_parquet(tmp_path / "comparison.parquet")
    assert sorted(frame["system"].unique()) == ["market", "market_load_aware", "petals"] and len(frame) == 6
    assert (tmp_path / "petals_comparison.png").stat().st_size > 0 and (tmp_path / "petals_p95_over_time.png").exists()
    imbalance = frame.groupby("system")["load_imbalance"].mean()
    assert imbalance["petals"] > imbalance["market"]
    assert ((frame["dropped_share"] >= 0) & (frame["dropped_share"] <= 1)).all()
