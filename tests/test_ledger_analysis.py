"""The ledger's outputs through the CLI and the analysis commands."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main as analysis_main
from analysis.collect import collect

SIM = str(Path(sys.executable).parent / "p2pllm-sim")


def test_cli_run_reports_the_ledger_and_its_figure(tmp_path, capsys):
    out = tmp_path / "run"
    result = subprocess.run([SIM, "experiment=paper_table1_ledger", "run.steps=100", "report.table_steps=[0,100]",
                             f"hydra.run.dir={out}", "run.progress=false"], capture_output=True, text=True, check=True)
    assert "Ledger (python, payments=channels, sharding=stage, registry=live): conserved=True" in result.stdout
    assert (out / "ledger.parquet").is_file()
    analysis_main(["ledger-figures", str(out)])
    assert (out / "ledger_money_run.png").is_file() and (out / "ledger_money_run.pdf").is_file()


def test_sweep_figures_from_a_small_ledger_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run([SIM, "-m", "sweep=ledger", "network.stages=2,4", "ledger.payments=escrow,channels",
                    "ledger.sharding=stage", "network.peers=32", "run.steps=30", "report.table_steps=[0]",
                    "run.record_interval=10", f"hydra.sweep.dir={sweep}", "run.progress=false",
                    "run.figures=false"], capture_output=True, text=True, check=True)
    runs = collect(sweep).complete_runs
    assert len(runs) == 4 and runs["ledger_conserved"].all()
    escrow = runs[runs["ledger.payments"] == "escrow"]
    channels = runs[runs["ledger.payments"] == "channels"]
    assert escrow["ledger_onchain_tx_per_request"].min() > channels["ledger_onchain_tx_per_request"].max()
    analysis_main(["ledger-figures", str(sweep), "--out", str(tmp_path / "figures")])
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {
        "ledger_shards.png", "ledger_shards.pdf", "ledger_payments.png", "ledger_payments.pdf"}


def test_ledger_figures_refuse_a_run_without_a_ledger(tmp_path, capsys):
    out = tmp_path / "plain"
    subprocess.run([SIM, "experiment=paper_28", "run.steps=10", "report.table_steps=[0]", f"hydra.run.dir={out}",
                    "run.progress=false", "run.figures=false"], check=True, capture_output=True)
    with pytest.raises(SystemExit) as exit_:
        analysis_main(["ledger-figures", str(out)])
    assert exit_.value.code == 2
    assert "is not a ledger run" in capsys.readouterr().err
    assert pd.read_parquet(out / "metrics.parquet")["scope"].isin(["stage", "request_class"]).all()
