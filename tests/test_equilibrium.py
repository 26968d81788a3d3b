"""Equilibrium certificates and solvers against closed forms and independent searches."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import lambertw

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.config import UPDATE_RULES
from p2pllm_abm.economics import MarketParams
from p2pllm_abm.metrics import stage_rows
from p2pllm_abm.equilibrium import (
    _bisect_decreasing,
    allocation_equilibrium,
    best_response,
    diagnose_gradient_ascent,
    nash_gap,
    solve_equilibrium,
    stable_eta,
)


def params(alpha=0.5, temperature=1.0, demand=1.0, eta=1.0, floor=0.0):
    return MarketParams(alpha, temperature, demand, eta, floor)


def heterogeneous(seed, n=24, n_stages=3, spread=4.0):
    rng = np.random.default_rng(seed)
    stage = np.concatenate([np.repeat(np.arange(n_stages), 2), rng.integers(0, n_stages, n - 2 * n_stages)])
    return rng.uniform(0.5, 4.0, n), rng.uniform(1.0, 1.0 + spread, n), stage, np.ones(n, dtype=bool)


def revenue_numpy(i, q, price, cost, stage, p):
    """R_i(q, p_-i) = D q P_i, written out directly."""
    prices = price.copy()
    prices[i] = q
    weights = p.alpha * prices + (1 - p.alpha) * cost
    members = stage == stage[i]
    logits = -weights[members] / p.temperature
    probs = np.exp(logits - logits.max())
    return p.demand * q * (probs / probs.sum())[np.flatnonzero(members) == i][0]


def exhaustive_gap(price, cost, stage, p):
    """Max over peers of (best revenue by grid + bounded refinement) - current revenue."""
    gaps = []
    for i in range(len(price)):
        grid = np.concatenate([np.linspace(0, 20 * p.temperature / p.alpha, 2001), [price[i]]])
        values = [revenue_numpy(i, q, price, cost, stage, p) for q in grid]
        k = int(np.argmax(values))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 2)]
        refined = minimize_scalar(lambda q: -revenue_numpy(i, q, price, cost, stage, p), bounds=(lo, hi),
                                  method="bounded", options={"xatol": 1e-12})
        best = max(values[k], -refined.fun)
        gaps.append(best - revenue_numpy(i, price[i], price, cost, stage, p))
    return max(gaps)


@pytest.mark.parametrize(("n", "alpha", "temperature"), [(2, 0.5, 1.0), (5, 0.4, 2.0), (10, 0.9, 0.5)])
@pytest.mark.parametrize("rule", UPDATE_RULES)
def test_symmetric_stage_closed_form(rule, n, alpha, temperature):
    """Equal costs: p* = T / (alpha (1 - 1/n)) for every solver, to 1e-10."""
    cost, stage, alive = np.full(n, 7.0), np.zeros(n, dtype=int), np.ones(n, dtype=bool)
    start = np.linspace(0.5, 3.0, n)
    result = solve_equilibrium(rule, start, cost, stage, alive, params(alpha, temperature), 1, max_iterations=20000)
    assert result.converged
    np.testing.assert_allclose(result.price, temperature / (alpha * (1 - 1 / n)), rtol=0, atol=1e-10)


def test_best_response_equals_lambert_w_oracle():
    price, cost, stage, alive = heterogeneous(0, spread=30.0)
    for alpha, temperature in [(0.5, 1.0), (0.2, 3.0), (0.9, 0.5)]:
        p = params(alpha, temperature)
        response = np.asarray(best_response(price, cost, stage, alive, p, 3))
        for i in range(len(price)):
            rivals = (stage == stage[i]) & (np.arange(len(price)) != i)
            log_rivals = np.log(np.sum(np.exp(-(alpha * price[rivals] + (1 - alpha) * cost[rivals]) / temperature)))
            x = -(1 - alpha) * cost[i] / temperature
            oracle = (1 + lambertw(np.exp(x - 1 - log_rivals)).real) * temperature / alpha
            assert response[i] == pytest.approx(oracle, rel=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_every_solver_reaches_a_certified_equilibrium_and_they_agree(seed):
    price, cost, stage, alive = heterogeneous(seed)
    p = params(0.6, 1.3)
    results = {rule: solve_equilibrium(rule, price, cost, stage, alive, p, 3, max_iterations=50000) for rule in UPDATE_RULES}
    reference = np.asarray(results["newton"].price)
    for rule, result in results.items():
        assert result.converged, rule
        np.testing.assert_allclose(result.price, reference, rtol=0, atol=1e-8, err_msg=rule)
        assert exhaustive_gap(np.asarray(result.price), cost, stage, p) <= 1e-9, rule
    certificate = nash_gap(reference, cost, stage, alive, p, 3)
    assert np.all(np.asarray(certificate.second_order_ok))


def test_perturbed_profile_gap_is_the_perturbations_revenue_loss():
    price, cost, stage, alive = heterogeneous(3)
    p = params()
    equilibrium = np.asarray(solve_equilibrium("newton", price, cost, stage, alive, p, 3).price)
    i, delta = 4, 0.3
    perturbed = equilibrium.copy()
    perturbed[i] += delta
    certificate = nash_gap(perturbed, cost, stage, alive, p, 3)
    loss = revenue_numpy(i, equilibrium[i], perturbed, cost, stage, p) - revenue_numpy(i, perturbed[i], perturbed, cost, stage, p)
    assert loss > 0
    assert float(certificate.gain[i]) == pytest.approx(loss, rel=1e-10)
    assert float(certificate.stage_gap[stage[i]]) == pytest.approx(loss, rel=1e-10)
    assert float(np.max(np.asarray(certificate.stage_gap)[np.arange(3) != stage[i]])) < 1e-12


def test_gradient_ascent_beyond_the_stable_eta_is_reported_not_silently_wrong():
    price, cost, stage, alive = heterogeneous(1)
    base = params()
    equilibrium = solve_equilibrium("newton", price, cost, stage, alive, base, 3)
    bound = stable_eta(equilibrium.price, cost, stage, alive, base, 3)
    assert 0 < bound < np.inf
    inside = diagnose_gradient_ascent(price, cost, stage, alive, base._replace(eta=0.8 * bound), 3, max_iterations=20000)
    outside = diagnose_gradient_ascent(price, cost, stage, alive, base._replace(eta=1.25 * bound), 3, max_iterations=4000)
    assert inside.status == "converged" and inside.first_iteration_below_tol > 0
    assert outside.status == "oscillating" and "beyond the stable range" in outside.message
    assert np.all(np.isfinite(np.asarray(outside.gap_history)))


def test_lone_peer_has_no_best_response_and_is_reported_diverging():
    cost, stage, alive = np.ones(4), np.array([0, 0, 0, 1]), np.ones(4, dtype=bool)
    certificate = nash_gap(np.ones(4), cost, stage, alive, params(), 2)
    assert np.isinf(float(certificate.stage_gap[1])) and np.isfinite(float(certificate.stage_gap[0]))
    diagnosis = diagnose_gradient_ascent(np.ones(4), cost, stage, alive, params(), 2, max_iterations=50)
    assert diagnosis.status == "diverging" and "no best response" in diagnosis.message
    with pytest.raises(ValueError, match="alpha = 0.0 is invalid"):
        solve_equilibrium("newton", np.ones(4), cost, stage, alive, params(alpha=0.0), 2)


def test_allocation_equilibrium_finds_violators_and_balance():
    cost = np.full(6, 2.0)
    check = allocation_equilibrium(cost, np.array([0, 0, 0, 0, 1, 1]), np.ones(6, dtype=bool), 2)
    assert not check.efficient
    assert check.violators.tolist() == [0, 1, 2, 3] and check.target_stage.tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(check.share_gain, 1 / 3 - 1 / 4)
    assert check.capacity_ratio == pytest.approx(2.0)
    balanced = allocation_equilibrium(cost, np.array([0, 0, 0, 1, 1, 1]), np.ones(6, dtype=bool), 2)
    assert balanced.efficient and balanced.capacity_ratio == 1.0 and len(balanced.violators) == 0


def test_revenue_is_quasi_concave_with_the_root_as_global_maximum():
    price, cost, stage, alive = heterogeneous(5)
    p = params(0.7, 1.1)
    response = np.asarray(best_response(price, cost, stage, alive, p, 3))
    grid = np.linspace(0, 30, 3001)
    for i in range(6):
        curve = np.array([revenue_numpy(i, q, price, cost, stage, p) for q in grid])
        peak = int(np.argmax(curve))
        assert np.all(np.diff(curve[: peak + 1]) >= -1e-15) and np.all(np.diff(curve[peak:]) <= 1e-15)
        assert abs(grid[peak] - response[i]) <= grid[1]


@pytest.mark.parametrize("rule", ["best_response", "newton"])
def test_model_records_certified_gaps(rule):
    model = P2PLLMModel(load_config("paper_28", overrides=[f"market.update_rule={rule}", "run.record_interval=10",
                                                           "network.cost_range=[1.0,5.0]"]))
    model.run(40)
    metrics = stage_rows(model.metrics_frame())
    final = metrics[metrics["step"] == 40]
    assert len(final) == 4 and np.all(final["nash_gap"] <= 1e-12)
    assert "nash_gap_stage_0" in model.datacollector.get_model_vars_dataframe()
    assert np.isfinite(metrics["nash_gap"]).all()


def test_model_gap_decreases_under_gradient_ascent():
    model = P2PLLMModel(load_config("paper_28", overrides=["run.record_interval=50", "network.cost_range=[1.0,5.0]",
                                                           "allocation.enabled=false"]))
    model.run(500)
    gaps = model.metrics_frame().groupby("step")["nash_gap"].max()
    assert gaps.iloc[-1] < 1e-3 * gaps.iloc[0]


def mixture_revenue_numpy(i, q, price, cost, stage, alphas, weights, temperature):
    prices = price.copy()
    prices[i] = q
    members = np.flatnonzero(stage == stage[i])
    total = 0.0
    for alpha, weight in zip(alphas, weights):
        logits = -(alpha * prices[members] + (1 - alpha) * cost[members]) / temperature
        probs = np.exp(logits - logits.max())
        total += weight * (probs / probs.sum())[members == i][0]
    return q * total


def test_mixture_with_one_class_equals_the_closed_form_best_response():
    from p2pllm_abm.equilibrium import mixture_best_response

    price, cost, stage, alive = heterogeneous(2)
    response, _ = mixture_best_response(price, cost, stage, alive, np.array([0.6]), np.array([1.0]), 1.3, 1.0, 0.0, 3)
    np.testing.assert_allclose(response, best_response(price, cost, stage, alive, params(0.6, 1.3), 3), rtol=1e-12)


def test_mixture_best_response_beats_an_exhaustive_search():
    from p2pllm_abm.equilibrium import mixture_best_response, mixture_nash_gap

    price, cost, stage, alive = heterogeneous(4, spread=10.0)
    alphas, weights, temperature = np.array([0.15, 0.85]), np.array([0.3, 0.7]), 1.0
    response, best = map(np.asarray, mixture_best_response(price, cost, stage, alive, alphas, weights,
                                                           temperature, 1.0, 0.0, 3))
    for i in range(len(price)):
        grid = np.linspace(0, 40, 8001)
        values = [mixture_revenue_numpy(i, q, price, cost, stage, alphas, weights, temperature) for q in grid]
        k = int(np.argmax(values))
        refined = minimize_scalar(lambda q: -mixture_revenue_numpy(i, q, price, cost, stage, alphas, weights, temperature),
                                  bounds=(grid[max(k - 1, 0)], grid[k + 1]), method="bounded", options={"xatol": 1e-12})
        assert best[i] >= max(values[k], -refined.fun) - 1e-12
        assert best[i] == pytest.approx(mixture_revenue_numpy(i, response[i], price, cost, stage, alphas, weights,
                                                              temperature), rel=1e-12)
    gain, stage_gap = mixture_nash_gap(price, cost, stage, alive, alphas, weights, temperature, 1.0, 0.0, 3)
    assert np.all(np.asarray(gain) >= 0) and float(np.max(stage_gap)) > 0
    with pytest.raises(ValueError, match="class_weight"):
        mixture_nash_gap(price, cost, stage, alive, alphas, np.array([0.5, 0.6]), temperature, 1.0, 0.0, 3)


def fixed_bisection(f, low: np.ndarray, high: np.ndarray, halvings: int = 200) -> np.ndarray:
    """The bisection with every one of its halvings, in NumPy (the reference for the early stop)."""
    for _ in range(halvings):
        mid = 0.5 * (low + high)
        above = f(mid) > 0
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return 0.5 * (low + high)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), spread=st.floats(1e-3, 1e6))
def test_the_bisection_that_stops_early_returns_what_every_halving_returns(seed, n, spread):
    """_bisect_decreasing stops once a round of halvings changes no bracket; the result must be bit
    for bit the one all 200 halvings give, for brackets from tiny to huge (and NaN ones, which never
    settle and run all 200)."""
    rng = np.random.default_rng(seed)
    root = rng.uniform(0.0, spread, n)
    low, high = root - rng.uniform(0.0, spread, n), root + rng.uniform(0.0, spread, n)
    high[rng.random(n) < 0.1] = np.nan

    def decreasing(m):  # exact in NumPy and XLA alike, so the two compare the same signs
        return root - m

    got = _bisect_decreasing(lambda m: jnp.asarray(root) - m, jnp.asarray(low), jnp.asarray(high))
    np.testing.assert_array_equal(np.asarray(got), fixed_bisection(decreasing, low, high))
