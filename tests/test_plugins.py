"""Registries and plug-ins: every choice by name is a registry entry; a plug-in module named in
``run.plugins`` registers its own, and runs with them through the CLI and through ``P2PLLMModel``
exactly as with a built-in."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.equilibrium import solve_equilibrium
from p2pllm_abm.registries import (REGISTRIES, Behaviour, Mechanism, Parameter, PluginError, PriceRule, Registry,
                                   RegistryError, load_plugins)
from p2pllm_abm.verification import Draws, Hops, Verifier
from tests.test_cli import sim
from tests.test_economics import params, random_market

EXAMPLE = "p2pllm_abm.examples.plugin"
TESTS = Path(__file__).parent
SMALL = ["run.steps=12", "run.record_interval=4", "run.progress=false", "run.figures=false"]


def plugin_env() -> dict[str, str]:
    """The CLI's environment with tests/plugins importable (the alias plug-in lives there)."""
    return {"PYTHONPATH": os.pathsep.join([str(TESTS / "plugins"), os.environ.get("PYTHONPATH", "")])}


# -- registries ----------------------------------------------------------------------------------

def test_every_builtin_is_registered():
    assert set(REGISTRIES["price_rules"]) >= {"gradient", "best_response", "sequential_best_response",
                                               "fixed_point", "newton", "observed"}
    assert set(REGISTRIES["routings"]) >= {"stage", "path", "petals"}
    assert set(REGISTRIES["allocation_rules"]) >= {"market", "petals"}
    assert set(REGISTRIES["mechanisms"]) >= {"none", "spot_check", "redundancy", "optimistic", "dispute_game"}
    assert REGISTRIES["behaviours"].names()[:8] == ("honest", "lazy", "malicious", "overclaim", "stale_channel",
                                                    "colluding", "sybil", "offline")


def test_a_name_twice_or_a_wrong_kind_is_refused_in_one_line():
    registry = Registry("price rule", PriceRule, "market.update_rule")
    rule = PriceRule(update=lambda *args: args[0])
    registry.register("mine", rule)
    for call in (lambda: registry.register("mine", rule),  # twice
                 lambda: registry.register("other", Mechanism(check=print, detection=print)),  # wrong kind
                 lambda: registry.register("not a name", rule)):
        with pytest.raises(RegistryError) as error:
            call()
        assert "\n" not in str(error.value) and "price rule" in str(error.value)
    with pytest.raises(RegistryError, match=r"market.update_rule = 'nope' is invalid: allowed one of \('mine',\)"):
        registry.get("nope")


def test_register_works_as_a_decorator():
    registry = Registry("behaviour", Behaviour, "adversary.behaviour")

    @registry.register("quiet")
    def quiet():
        return Behaviour(doc="never cheats")

    assert registry.get("quiet").doc == "never cheats" and callable(quiet)


def test_a_price_rule_takes_exactly_one_of_update_and_learn():
    with pytest.raises(RegistryError):
        PriceRule()
    with pytest.raises(RegistryError):
        PriceRule(update=print, learn=print)


def test_parameter_ranges_say_what_is_allowed():
    weight = Parameter("weight", 0.5, 0.0, 1.0, low_open=True)
    assert weight.allows(1.0) and weight.allows(1e-9)
    assert not any(weight.allows(v) for v in (0.0, 1.5, float("nan"), float("inf"), True, "0.5"))
    assert weight.allowed() == "a finite number 0 < weight <= 1"


def test_registry_errors_pickle():
    for error in (RegistryError("x = 1 is invalid"), PluginError("mod", "why")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)


# -- the example plug-in's mathematics ------------------------------------------------------------

def test_partial_best_response_converges_to_the_nash_equilibrium():
    """Its fixed points are eq. 6's equilibria: iterated, it lands on Newton's certified prices."""
    load_plugins([EXAMPLE])
    price, cost, stage, alive = random_market(3, n=12, n_stages=3)
    market = params()
    newton = solve_equilibrium("newton", price, cost, stage, alive, market, 3)
    partial = solve_equilibrium("partial_best_response", price, cost, stage, alive, market, 3, max_iterations=5000,
                                options={"weight": 0.4})
    assert newton.converged and partial.converged
    assert np.allclose(np.asarray(partial.price), np.asarray(newton.price), rtol=1e-9, atol=1e-9)


def test_hop_sampling_catches_a_cheated_hop_with_probability_p_times_one_minus_fn():
    load_plugins([EXAMPLE])
    config = load_config("paper_table1_ledger", ["run.plugins=[p2pllm_abm.examples.plugin]",
                                                 "verification.mechanism=hop_sampling",
                                                 "verification.probability=0.3"]).verification
    verifier = Verifier(config, 1.0, 0.0, np.random.default_rng(0))
    n = 200_000
    hops = Hops(request=np.arange(n), position=np.zeros(n, np.int64), peer=np.zeros(n, np.int64),
                stage=np.zeros(n, np.int64), cost=np.full(n, 2.0))
    cheated = np.ones(n, bool)
    mismatch = cheated & (verifier.rng.random(n) >= verifier.fn)
    draws = Draws(hops, np.array([1]), np.array([0]), np.array([1.0]), np.array([0]), n, 1, cheated,
                  np.zeros(n, bool), mismatch, np.zeros(n, bool), cheated)
    checked = verifier.mechanism.check(verifier, draws)
    expected = verifier.mechanism.detection(config, verifier.fn)
    assert expected == pytest.approx(0.3 * (1 - verifier.fn))
    assert checked.caught.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected / n))
    assert np.array_equal(checked.bad, ~checked.caught)  # one hop per request: saved iff caught
    assert checked.checking.sum() == pytest.approx(2.0 * 0.3 * n, rel=0.01)


# -- runs with plug-ins ---------------------------------------------------------------------------

def test_the_example_plugin_runs_in_python():
    config = load_config("paper_table1_ledger", [*SMALL, f"run.plugins=[{EXAMPLE}]",
                                                 "market.update_rule=partial_best_response",
                                                 "+market.rule_params.weight=0.3", "verification.mechanism=hop_sampling",
                                                 "verification.probability=0.5", "adversary.behaviour=timid",
                                                 "adversary.fraction=0.3", "adversary.cheat_probability=1.0"])
    model = P2PLLMModel(config)
    assert model.environment.options == {"weight": 0.3}
    model.run(12)
    summary = model.security.summary()
    assert summary["mechanism"] == "hop_sampling" and summary["adversarial_peers"] == 60
    assert 0 < summary["cheats"] and 0 < summary["caught"] <= summary["cheats"] and summary["slashed_honest"] == 0
    assert set(model.peers_frame()["behaviour"].unique()) == {"honest", "timid"}


def test_the_example_plugin_runs_through_the_cli(tmp_path):
    result = sim("experiment=paper_table1_ledger", *SMALL, f"run.plugins=[{EXAMPLE}]",
                 "market.update_rule=partial_best_response", "+market.rule_params.weight=0.3",
                 "verification.mechanism=hop_sampling", "adversary.behaviour=timid", "adversary.fraction=0.3",
                 f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["market"]["rule_params"] == {"weight": 0.3}
    assert summary["security"]["mechanism"] == "hop_sampling" and summary["security"]["adversarial_peers"] == 60


@pytest.mark.parametrize("overrides, field", [
    (["run.plugins=[no_such_module_here]"], "run.plugins"),
    (["market.update_rule=partial_best_response"], "market.update_rule"),  # the plug-in not loaded
    ([f"run.plugins=[{EXAMPLE}]", "market.update_rule=partial_best_response", "+market.rule_params.weight=2"],
     "market.rule_params.weight"),
    ([f"run.plugins=[{EXAMPLE}]", "market.update_rule=partial_best_response", "+market.rule_params.speed=1"],
     "market.rule_params.speed"),
])
def test_bad_plugin_input_is_refused_in_one_line(overrides, field):
    result = sim("experiment=paper_28", *SMALL, *overrides)
    assert result.returncode == 2
    assert result.stderr.startswith(f"p2pllm-sim: {field} = ") and result.stderr.count("\n") == 1, result.stderr


def read_outputs(directory: Path) -> dict[str, object]:
    frames = {path.name: pd.read_parquet(path) for path in sorted(directory.glob("*.parquet"))}
    summary = json.loads((directory / "summary.json").read_text())
    for key in ("config", "wall_time_s", "steps_per_s", "peak_memory_mb"):
        summary.pop(key)
    return {**frames, "summary.json": summary}


def test_a_builtin_registered_under_a_new_name_gives_exactly_its_outputs(tmp_path):
    """One run with a price rule, a routing, a mechanism and a behaviour each registered again under a
    new name (tests/plugins/alias_plugin.py) against the run with the built-ins."""
    builtin = ["market.update_rule=gradient", "clients.routing=path", "verification.mechanism=spot_check",
               "adversary.behaviour=lazy"]
    aliased = ["market.update_rule=my_gradient", "clients.routing=my_path", "verification.mechanism=my_spot_check",
               "adversary.behaviour=my_lazy"]
    common = ["experiment=paper_table1_ledger", *SMALL, "adversary.fraction=0.2"]
    ours = sim(*common, *builtin, f"hydra.run.dir={tmp_path / 'builtin'}")
    theirs = sim(*common, "run.plugins=[alias_plugin]", *aliased, f"hydra.run.dir={tmp_path / 'alias'}",
                 extra_env=plugin_env())
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    expected, got = read_outputs(tmp_path / "builtin"), read_outputs(tmp_path / "alias")
    assert sorted(expected) == sorted(got)
    names = {"my_lazy": "lazy", "my_spot_check": "spot_check"}  # the names a run echoes besides its config
    for name, value in got.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value.replace(names), expected[name], check_exact=True)
        else:
            text = json.dumps(value)
            for alias, builtin in names.items():
                text = text.replace(f'"{alias}"', f'"{builtin}"')
            assert json.loads(text) == expected[name]


def test_a_sweep_over_plugin_names(tmp_path):
    """Each multirun job (a joblib worker process) imports run.plugins before it validates."""
    result = sim("-m", "experiment=paper_28", *SMALL, f"run.plugins=[{EXAMPLE}]",
                 "market.update_rule=gradient,partial_best_response", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "2 jobs, 2 done" in result.stdout
    rules = sorted(json.loads(path.read_text())["config"]["market"]["update_rule"]
                   for path in tmp_path.glob("*/summary.json"))
    assert rules == ["gradient", "partial_best_response"]


def test_an_installed_package_registers_through_its_entry_point(tmp_path):
    """A package that names a module in the entry-point group p2pllm_abm.plugins is loaded without
    run.plugins (here a distribution made by hand on PYTHONPATH)."""
    (tmp_path / "entry_rules.py").write_text(
        "from p2pllm_abm.registries import price_rules\n"
        "price_rules.register('entry_gradient', price_rules.get('gradient'))\n")
    info = tmp_path / "entry_rules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: entry-rules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[p2pllm_abm.plugins]\nentry_rules = entry_rules\n")
    script = ("from p2pllm_abm import load_config\n"
              "print(load_config('paper_28', ['market.update_rule=entry_gradient']).market.update_rule)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "entry_gradient"
