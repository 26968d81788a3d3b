"""Welfare against closed forms, a Monte Carlo of the logit choice, the planner's first-order
conditions and the inverse elasticity rule."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.economics import MarketParams, choice_probabilities, outside_logit
from p2pllm_abm.equilibrium import solve_equilibrium
from p2pllm_abm.metrics import summary
from p2pllm_abm.welfare import WELFARE_METRICS, planner_price, social_welfare, welfare


def market(seed, n=12, n_stages=3):
    rng = np.random.default_rng(seed)
    return rng.uniform(1.0, 5.0, n), np.arange(n) % n_stages, np.ones(n, dtype=bool)


def test_symmetric_stage_has_closed_form_surplus_and_concentration():
    n, alpha, temperature, demand = 5, 0.4, 1.5, 2.0
    price, cost = np.full(n, 3.0), np.full(n, 2.0)
    params = MarketParams(alpha, temperature, demand, 1.0, 0.0)
    got = welfare(price, cost, np.zeros(n, dtype=int), np.ones(n, dtype=bool), params, 1)
    weight = alpha * 3.0 + (1 - alpha) * 2.0
    assert float(got.consumer_surplus[0]) == pytest.approx(demand * temperature / alpha * (np.log(n) - weight / temperature))
    assert float(got.hhi[0]) == pytest.approx(10000 / n)
    assert float(got.revenue[0]) == pytest.approx(demand * 3.0)
    assert float(got.compute_time_bought[0]) == pytest.approx(demand * 2.0)
    # equal costs: the planner's allocation is the market's, so nothing is lost
    assert float(got.deadweight_loss[0]) == pytest.approx(0.0, abs=1e-12)


def test_consumer_surplus_is_the_expected_best_utility_of_the_logit_choice():
    cost, stage, alive = market(0, n=4, n_stages=1)
    price = np.array([2.0, 3.0, 1.5, 4.0])
    params = MarketParams(0.6, 0.8, 1.0, 1.0, 0.0, 0.0, 5.0)
    draws = 400_000
    rng = np.random.default_rng(1)
    utility = -(0.6 * price + 0.4 * cost) / 0.6  # price units
    options = np.append(utility, -5.0 / 0.6)  # the outside option
    best = np.max(options + (0.8 / 0.6) * rng.gumbel(size=(draws, 5)), axis=1)
    monte_carlo = best.mean() - (0.8 / 0.6) * np.euler_gamma + 5.0 / 0.6  # measured from the outside option
    got = float(welfare(price, cost, stage, alive, params, 1).consumer_surplus[0])
    assert got == pytest.approx(monte_carlo, abs=4 * best.std() / np.sqrt(draws))


@pytest.mark.parametrize("kappa, outside", [(0.0, 6.0), (0.5, 8.0), (0.3, np.inf)])
def test_planner_prices_satisfy_the_first_order_conditions_and_beat_any_prices(kappa, outside):
    cost, stage, alive = market(2)
    params = MarketParams(0.5, 1.2, 1.0, 1.0, 0.0, kappa, outside)
    total = jax.grad(lambda p: jnp.sum(social_welfare(p, cost, stage, alive, params, 3)))
    np.testing.assert_allclose(total(planner_price(cost, params)), 0.0, atol=1e-12)
    planner = np.asarray(social_welfare(planner_price(cost, params), cost, stage, alive, params, 3))
    rng = np.random.default_rng(3)
    for _ in range(50):
        other = np.asarray(social_welfare(rng.uniform(0.0, 10.0, 12), cost, stage, alive, params, 3))
        assert np.all(other <= planner + 1e-12)


@given(st.integers(0, 10_000), st.floats(0.1, 0.95), st.floats(0.3, 3.0))
def test_deadweight_loss_and_price_of_anarchy_at_equilibrium(seed, alpha, temperature):
    cost, stage, alive = market(seed)
    params = MarketParams(alpha, temperature, 1.0, 1.0, 0.0, 0.0, 8.0)
    run = solve_equilibrium("newton", np.full(12, 2.0), cost, stage, alive, params, 3)
    assert run.converged
    got = welfare(run.price, cost, stage, alive, params, 3)
    assert np.all(np.asarray(got.deadweight_loss) >= 0)
    assert np.all(np.asarray(got.price_of_anarchy) >= 1.0 - 1e-12)
    np.testing.assert_allclose(got.social_welfare, np.asarray(got.consumer_surplus) + np.asarray(got.producer_surplus),
                               rtol=1e-12)


@pytest.mark.parametrize("kappa", [0.0, 0.6])
def test_equilibrium_obeys_the_inverse_elasticity_rule(kappa):
    """At an equilibrium, e_i = -(alpha/T) p_i (1 - P_i) = -p_i / (p_i - kappa c_i), so the Lerner
    index is -1/e_i (and e_i = -1 in the paper's revenue game)."""
    cost, stage, alive = market(4)
    params = MarketParams(0.5, 1.1, 1.0, 1.0, 0.0, kappa)
    price = np.asarray(solve_equilibrium("newton", np.full(12, 2.0), cost, stage, alive, params, 3,
                                         tol=1e-14, price_tol=1e-13).price)
    got = welfare(price, cost, stage, alive, params, 3)
    probs = np.asarray(choice_probabilities(price, cost, stage, alive, 0.5, 1.1, 3, outside_logit(params)))
    elasticity = -(0.5 / 1.1) * price * (1 - probs)  # per peer, from the definition
    lerner = (price - kappa * cost) / price
    np.testing.assert_allclose(lerner, -1 / elasticity, rtol=1e-9)  # the inverse elasticity rule
    share = probs / np.bincount(stage, weights=probs)[stage]
    np.testing.assert_allclose(got.elasticity, np.bincount(stage, weights=share * elasticity), rtol=1e-12)
    np.testing.assert_allclose(got.lerner, np.bincount(stage, weights=share * lerner), rtol=1e-12)
    if kappa == 0:
        np.testing.assert_allclose(got.elasticity, -1.0, rtol=1e-9)
        np.testing.assert_allclose(got.lerner, 1.0, rtol=1e-12)


def test_runs_record_welfare_and_summarise_it(tmp_path):
    model = P2PLLMModel(load_config("paper_28", overrides=["run.steps=40"]))
    model.run(40)
    rows = model.metrics_frame()
    rows = rows[rows["scope"] == "stage"]
    for name in WELFARE_METRICS:
        assert rows[name].notna().all()
    block = summary(model, 1.0)["welfare"]
    json.dumps(block)
    assert block["total"]["price_of_anarchy"] is None  # no outside option: no natural zero
    assert block["total"]["deadweight_loss"] == pytest.approx(sum(block["per_stage"]["deadweight_loss"]))
    zero = P2PLLMModel(load_config("paper_28", overrides=["market.alpha=0.0"]))
    assert zero.metrics_frame()["consumer_surplus"].isna().all()
    assert "alpha = 0" in summary(zero, 1.0)["welfare"]["note"]


def test_welfare_experiment_writes_its_table_and_figure(tmp_path):
    from experiments.welfare import main

    main(["seeds=[0]", "temperatures=[1.0,2.0]", "alphas=[0.5]", "steps=200", f"out_dir={tmp_path}"])
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "welfare.parquet")
    assert len(frame) == 2 * 2  # T x outside option
    assert (frame["deadweight_loss"] >= 0).all()
    assert frame.loc[frame["outside_option"] != "none", "price_of_anarchy"].ge(1.0).all()
    assert "paper's setting" in (tmp_path / "welfare.md").read_text()
    assert (tmp_path / "welfare_vs_T_alpha.png").stat().st_size > 0
