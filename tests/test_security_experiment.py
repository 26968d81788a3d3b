"""The security experiment end to end, at a tiny size (the default takes minutes)."""

import json

import pandas as pd

from experiments.security import main


def test_security_experiment_writes_tables_and_figures(tmp_path):
    main(["steps=40", "referee_steps=20", "sampling_rates=[0.05,0.5]", "adversary_shares=[0.0,0.3]",
          "slash_fractions=[1.0]", "mechanisms=[none,spot_check]", "target_shares=[0.3]", "deterrence.sampling_rates=[0.01,0.3]",
          "collusion.shares=[0.2,0.4]", "collusion.replicas=[2,3]", "collusion.hops=500", "strategic=[patient]",
          "dilemma.forced_error_rates=[0.0,0.2]", f"out_dir={tmp_path}"])
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert set(runs["part"]) == {"a", "b", "c", "t", "s", "v"} and len(runs) == 4 + 4 + 1 + 4 + 2 + 2
    dilemma = runs[runs["part"] == "v"].set_index("forced_error_rate")
    assert dilemma.loc[0.0, "forced_errors"] == 0 and dilemma.loc[0.2, "forced_errors"] > 0
    assert (runs[runs["part"].isin(["s", "v"])]["slashed_honest"] == 0).all()
    honest_only = runs[(runs["part"] == "a") & (runs["adversary_share"] == 0.0)]
    assert (honest_only["cheating_peers"] == 0).all() and (honest_only["verification_compute_share"] > 0).all()
    threshold = json.loads((tmp_path / "deterrence.json").read_text())
    assert threshold["p_star"] > 0
    report = (tmp_path / "security.md").read_text()
    for section in ("(a)", "(b)", "(s)", "(v)", "(c)", "(d)", "(e)", "false mismatches"):
        assert section in report
    target = runs[runs["part"] == "t"].iloc[0]
    assert target["slashed_honest"] == 0
    for name in ("security_vs_sampling_slash1", "security_mechanisms", "security_over_time",
                 "security_false_slashing", "security_deterrence", "security_collusion"):
        assert (tmp_path / f"{name}.png").is_file() and (tmp_path / f"{name}.pdf").is_file()


def test_figure_titles_say_what_the_bands_show():
    from experiments.security_figures import spread_note

    assert spread_note(pd.DataFrame({"seed": [0, 0, 0]})) == "one seed (0): no band; seeds=[...] adds one"
    assert spread_note(pd.DataFrame({"seed": [2, 0, 2]})) == "band: range over seeds [0, 2]"
