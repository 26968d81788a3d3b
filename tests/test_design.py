"""Mechanism design by gradients: the model's gradients against finite differences, its incentive
margin against the last-hop closed form, the optimiser against brute force, and the experiment."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pllm_abm.design import Design, Market, cheating_margin, constraints, cost, design_from, optimise

MARKET = Market(price=1.66, cost=1.0, horizon=319.0, steps=200.0, check_hops=4.0, fn=0.05, cost_of_capital=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_of_the_design_objective_match_finite_differences(seed):
    u = jax.random.normal(jax.random.key(seed), (7,))
    multipliers = jnp.array([0.3, 0.1, 0.0, 0.2])

    def lagrangian(u):
        design = design_from(u, MARKET)
        return cost(design, MARKET) + jnp.dot(multipliers, constraints(design, MARKET, 0.5))

    grad = np.asarray(jax.grad(lagrangian)(u))
    step = 1e-6
    for i in range(7):
        e = jnp.zeros(7).at[i].set(step)
        numeric = (float(lagrangian(u + e)) - float(lagrangian(u - e))) / (2 * step)
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_the_incentive_margin_is_the_last_hops_closed_form():
    """The last hop binds (nothing left to lose): margin p (1 - FN)(P + L + S)/c - 1, up to the smooth
    maximum's upward bias (at most temperature x log of the number of terms)."""
    for p, stake, penalty in ((0.1, 64.0, 0.5), (0.01, 150.0, 2.0), (0.3, 10.0, 0.0)):
        design = Design(p, 0.0, stake, 0.9, penalty, 0.0, 0.0)
        closed = 1 - p * (1 - MARKET.fn) * (MARKET.price * (1 + penalty) + 0.9 * stake) / MARKET.cost
        smooth = float(cheating_margin(design, MARKET))
        assert closed <= smooth + 1e-9 <= closed + 0.02 * np.log(9 * 20) + 1e-9


@pytest.mark.parametrize("margin", [0.0, 2.0])
def test_the_optimum_meets_the_constraints_and_beats_a_brute_force_grid(margin):
    found = optimise(MARKET, margin)
    assert found.feasible and np.all(found.constraints <= 1e-6)
    # the binding structure: S + L = stake, phi covering a check; a grid over p and the stake
    p, stake = (grid.ravel() for grid in np.meshgrid(np.linspace(0.002, 0.08, 157), np.geomspace(20, 2000, 120)))
    grid = Design(jnp.asarray(p), jnp.zeros_like(p), jnp.asarray(stake), jnp.full_like(p, 0.95),
                  jnp.asarray(0.05 * stake / MARKET.price * 0.999), jnp.full_like(p, 0.05), jnp.zeros_like(p))
    met = np.all(np.asarray(jax.jit(jax.vmap(lambda d: constraints(d, MARKET, margin)))(grid)) <= 0, axis=1)
    costs = np.asarray(jax.jit(jax.vmap(lambda d: cost(d, MARKET)))(grid))
    assert met.any() and found.cost <= costs[met].min() * 1.01


def test_the_verifiers_dilemma_closes_at_the_forced_error_threshold():
    """Skipping a check saves its m hops' compute; a skipped forced error costs the slash and the
    jackpot forgone: closed at phi (J + f sigma) = (1 + m_d) m c."""
    margin, jackpot, stake, fraction = 0.5, 2.0, 64.0, 1.0
    threshold = (1 + margin) * MARKET.check_hops * MARKET.cost / (jackpot + fraction * stake)
    for phi, closed in ((threshold * 0.99, False), (threshold * 1.01, True)):
        design = Design(0.1, 0.0, stake, fraction, 0.0, phi, jackpot)
        assert (float(constraints(design, MARKET, margin)[1]) <= 0) == closed
    assert float(constraints(Design(0.1, 16.0, 64.0, 1.0, 0.5, 0.0, 0.0), MARKET, 0.0)[1]) > 0  # the default: open


@pytest.mark.slow
def test_the_experiment_writes_the_design_and_its_checks(tmp_path):
    command = [sys.executable, "-m", "experiments.mechanism_design", "--out", str(tmp_path), "steps=60", "seeds=[0]",
               "behaviours=[lazy,lazy_verifier]", "frontier_margins=[0.0,1.0]", "starts=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "design.json").read_text())
    for block in ("designed", "default"):
        assert {"parameters", "verification_overhead", "max_deviation_gain"} <= set(record[block])
    assert record["designed"]["model_constraints"]["verifier_dilemma"] <= 1e-6
    for name in ("checks.parquet", "frontier.parquet", "frontier.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("setting, message", [("cost_of_capital=-1", "cost_of_capital = -1 is invalid"),
                                              ("margin=abc", "margin = 'abc' is invalid"),
                                              ("adversary_share=1.5", "adversary_share = 1.5 is invalid"),
                                              ("steps=0", "steps = 0 is invalid")])
def test_the_experiment_refuses_bad_settings_in_one_line(tmp_path, setting, message):
    from experiments.mechanism_design import main

    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["--out", str(tmp_path), setting])
