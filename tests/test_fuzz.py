"""Fuzzing the configuration: every draw of boundary values is either refused before the run in one
line (``ConfigError``; on the command line exit code 2) or runs to finite outputs.

``FUZZ_EXAMPLES=N`` sets the number of draws (default 120), ``FUZZ_RANDOM=1`` draws afresh instead of
the derandomized examples; the counts are printed (``pytest -s``)."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.config import ConfigError
from p2pllm_abm.metrics import summary
from p2pllm_abm.welfare import WELFARE_METRICS

BASE = ["run.steps=30", "run.record_interval=10", "report.table_steps=[0]", "clients.count=8"]
FIELDS = ["network.peers", "network.stages", "network.initial_distribution", "network.cost_range",
          "network.latency_range", "network.initial_price", "network.span_length_probs", "market.alpha",
          "market.eta", "market.temperature", "market.demand", "market.damping", "market.price_floor",
          "market.marginal_cost", "market.outside_option", "market.exploration", "market.baseline_rate",
          "market.update_rule", "allocation.period", "allocation.move_fraction", "allocation.hysteresis",
          "allocation.reading", "clients.count", "clients.request_rate", "clients.request_classes",
          "clients.alpha_params", "run.steps", "run.record_interval", "report.table_steps", "seed",
          "ledger.enabled", "ledger.unit", "ledger.client_endowment", "ledger.min_stake", "ledger.block_capacity",
          "ledger.price_tick", "adversary.fraction", "verification.probability", "market.alhpa", "+market.alhpa",
          "+foo"]
VALUES = [0, -1, 1, 2, 3, 0.5, 1e-308, -1e-308, 1e308, -1e308, math.nan, math.inf, -math.inf, 2**63, 10**30,
          [], [1.0], [1.0, 2.0, 3.0], [0, 1e-310], "x", None, True, False, "observed", "head_count"]
COUNTS = {"tried": 0, "refused": 0, "ran finite": 0}


def render(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def finite_run(model: P2PLLMModel) -> None:
    """Prices, revenues and welfare finite; a Nash gap inf only where eq. 6 has no best response."""
    assert np.isfinite(model.peers.price).all() and np.isfinite(model.peers.revenue).all()
    rows = model.metrics_frame()
    stages = rows[rows["scope"] == "stage"]
    for column in ("mean_price", "revenue", "expected_revenue", *WELFARE_METRICS):
        values = stages[column].dropna().to_numpy(dtype=float)
        assert np.isfinite(values).all(), column
    unbounded = stages[~np.isfinite(stages["nash_gap"].to_numpy(dtype=float))]
    lone = unbounded["peers"] <= 1
    assert model.config.market.alpha == 0 or lone.all(), "an infinite Nash gap where a best response exists"
    json.dumps(summary(model, 1.0)["final"]["mean_price_per_stage"], allow_nan=False)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")), deadline=None,
          derandomize=not os.environ.get("FUZZ_RANDOM"))
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(VALUES)), min_size=1, max_size=2))
def test_every_config_draw_is_refused_in_one_line_or_runs_finite(draws):
    overrides = [f"{field}={render(value)}" for field, value in draws]
    COUNTS["tried"] += 1
    try:
        cfg = load_config("paper_28", overrides=[*BASE, *overrides])
        model = P2PLLMModel(cfg)
        model.run(cfg.run.steps)
    except ConfigError as error:
        assert "\n" not in str(error) and " is invalid: allowed " in str(error)
        COUNTS["refused"] += 1
        return
    finite_run(model)
    COUNTS["ran finite"] += 1


def test_fuzz_counts_add_up():
    """Runs after the fuzz test (file order): everything tried was refused or ran finite."""
    print(f"\nconfig fuzz: {COUNTS}")
    assert COUNTS["tried"] == COUNTS["refused"] + COUNTS["ran finite"] > 0


@pytest.mark.parametrize("override", ["market.alpha=nan", "network.peers=1e308", "seed=-1", "+foo=1", "experiment=paper28",
                                      "market.alpha=[1", "verification=spotcheck",
                                      "report.table_steps=[]", "market.temperature=inf"])
def test_the_command_line_refuses_the_same_draws_with_exit_code_2(tmp_path, override):
    from tests.test_cli import sim

    result = sim("experiment=paper_28", *BASE, override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
