"""Golden outputs: every configuration below, run in-process, writes exactly the files it wrote when
its references were made (``tests/golden/<name>/``), bit for bit. The references were made on the
code before the architecture redesign; every refactor keeps them equal, including the order in
which random numbers are drawn. A deliberate change of numbers regenerates them in a commit of its
own that says why:

    .venv/bin/python tests/test_golden.py --write [NAME ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

GOLDEN = Path(__file__).parent / "golden"
COMMON = ["run.progress=false", "run.figures=false", "run.compilation_cache=null", "run.record_interval=25"]
#: name -> (experiment, overrides): the paper's Table 1, every price rule, routing and allocation rule,
#: the ledger, every verification mechanism with the behaviours it meets, churn and failures, an ensemble
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "table1": ("paper_table1", ["run.steps=150"]),
    "newton": ("paper_table1", ["run.steps=60", "market.update_rule=newton"]),
    "best_response": ("paper_table1", ["run.steps=40", "market.update_rule=best_response"]),
    "sequential_best_response": ("paper_28", ["run.steps=40", "market.update_rule=sequential_best_response"]),
    "fixed_point": ("paper_28", ["run.steps=40", "market.update_rule=fixed_point", "market.damping=0.3"]),
    "observed": ("paper_table1", ["run.steps=150", "market.update_rule=observed", "market.eta=20"]),
    "outside_marginal": ("paper_table1", ["run.steps=60", "market.outside_option=30", "market.marginal_cost=0.2"]),
    "ledger": ("paper_table1_ledger", ["run.steps=50"]),
    "spot_check": ("paper_table1_ledger", ["run.steps=50", "verification=spot_check", "adversary.fraction=0.2"]),
    "redundancy_colluding": ("paper_table1_ledger", ["run.steps=40", "verification=redundancy",
                                                     "adversary.fraction=0.3", "adversary.behaviour=colluding"]),
    "dispute_mix": ("paper_table1_ledger", ["run.steps=40", "verification=dispute_game", "adversary.fraction=0.3",
                                            "adversary.behaviour=mix", "adversary.mix.lazy=1",
                                            "adversary.mix.malicious=1", "adversary.mix.sybil=1",
                                            "adversary.mix.offline=1", "adversary.mix.overclaim=1",
                                            "adversary.mix.stale_channel=1"]),
    "optimistic": ("paper_table1_ledger", ["run.steps=40", "verification=optimistic", "adversary.fraction=0.2"]),
    "spans": ("petals_spans", ["run.steps=60"]),
    "petals_rules": ("paper_table1", ["run.steps=60", "allocation.rule=petals", "clients.routing=petals"]),
    "churn_failures_load": ("paper_table1", ["run.steps=60", "churn.join_rate=0.5", "churn.leave_rate=0.01",
                                             "failures.rate=0.02", "network.step_ms=100", "clients.load_aware=true",
                                             "allocation.reload_steps=2"]),
    "ensemble": ("paper_table1", ["run.steps=50", "run.replicates=3"]),
}
#: summary.json fields that measure the machine, not the model
MACHINE_FIELDS = ("wall_time_s", "steps_per_s", "peak_memory_mb")


def run_outputs(name: str, outdir: Path) -> dict[str, object]:
    """Run configuration ``name`` into ``outdir``; return its frames and its summary without the
    machine's measurements."""
    from p2pllm_abm.cli import run_experiment
    from p2pllm_abm.config import load_config

    experiment, overrides = CONFIGS[name]
    run_experiment(load_config(experiment, [*COMMON, *overrides]), outdir, report=False)
    outputs: dict[str, object] = {path.name: pd.read_parquet(path) for path in sorted(outdir.glob("*.parquet"))}
    summary = json.loads((outdir / "summary.json").read_text())
    outputs["summary.json"] = _without_machine(summary)
    return outputs


def _without_machine(record):
    if isinstance(record, dict):
        return {key: _without_machine(value) for key, value in record.items() if key not in MACHINE_FIELDS}
    if isinstance(record, list):
        return [_without_machine(value) for value in record]
    return record


def _without_configs(record, configs: list):
    """``record`` without its ``config`` blocks (at any depth), which go into ``configs`` in order."""
    if isinstance(record, dict):
        if "config" in record:
            configs.append(record["config"])
        return {key: _without_configs(value, configs) for key, value in record.items() if key != "config"}
    if isinstance(record, list):
        return [_without_configs(value, configs) for value in record]
    return record


def _contains(config: dict, reference: dict) -> bool:
    """Whether ``config`` holds every field of ``reference`` with its value (fields added to the
    schema since, with their defaults, change no result)."""
    return all(key in config and (_contains(config[key], value) if isinstance(value, dict) and value
                                  and isinstance(config[key], dict) else config[key] == value)
               for key, value in reference.items())


def write_references(names: list[str], scratch: Path) -> None:
    for name in names:
        target = GOLDEN / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.iterdir():
            old.unlink()
        for file, value in run_outputs(name, scratch / name).items():
            if isinstance(value, pd.DataFrame):
                value.to_parquet(target / file)
            else:
                (target / file).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target}")


#: the configurations every ``make test`` runs (the paper's Table 1, newton, observed, outside option +
#: marginal cost, the ledger, spot checks with adversaries, spans, an ensemble); the others run in
#: ``make test-slow`` (CI runs both)
CORE = ("table1", "newton", "observed", "outside_marginal", "ledger", "spot_check", "spans", "ensemble")


@pytest.mark.parametrize("name", [name if name in CORE else pytest.param(name, marks=pytest.mark.slow)
                                  for name in sorted(CONFIGS)])
def test_outputs_equal_the_references(name, tmp_path):
    reference = GOLDEN / name
    outputs = run_outputs(name, tmp_path)
    assert sorted(outputs) == sorted(path.name for path in reference.iterdir())
    for file, value in outputs.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, pd.read_parquet(reference / file), check_exact=True)
        else:
            expected = json.loads((reference / file).read_text())
            configs, expected_configs = [], []
            assert _without_configs(value, configs) == _without_configs(expected, expected_configs), \
                f"{name}/{file} differs"
            assert len(configs) == len(expected_configs)
            assert all(_contains(*pair) for pair in zip(configs, expected_configs)), f"{name}: a config field changed"


def test_a_changed_output_is_caught(tmp_path):
    """The comparison is exact: one value changed in its last bit fails it."""
    reference = pd.read_parquet(GOLDEN / "table1" / "metrics.parquet")
    changed = reference.copy()
    row = reference["mean_price"].dropna().index[-1]
    assert reference.loc[row, "mean_price"] != 0
    changed.loc[row, "mean_price"] = reference.loc[row, "mean_price"] * (1 + 2**-52)
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(changed, reference, check_exact=True)


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:2] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write [NAME ...]")
    with tempfile.TemporaryDirectory() as scratch:
        write_references(sys.argv[2:] or sorted(CONFIGS), Path(scratch))
