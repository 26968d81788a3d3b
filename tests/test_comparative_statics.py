"""Comparative statics by the implicit function theorem, the model variants (marginal cost, outside
option) and the solver diagnostics, against closed forms, finite differences and direct searches."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.dynamics import Environment, stage_choices
from p2pllm_abm.economics import MarketParams, choice_probabilities, outside_logit, revenue_gradient
from p2pllm_abm.equilibrium import (
    best_response,
    diagnose_gradient_ascent,
    gradient_jacobian_eigenvalues,
    mixture_equilibria,
    nash_gap,
    sensitivities,
    solve_equilibrium,
    stable_eta,
    stage_blocks,
)

VARIANTS = [(0.0, np.inf), (0.6, np.inf), (0.0, 6.0), (0.4, 9.0)]  # (kappa, outside weight)


def market(seed, n=12, n_stages=3, low=1.0, high=5.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, n), np.arange(n) % n_stages, np.ones(n, dtype=bool)


def equilibrium(cost, stage, alive, params, n_stages):
    run = solve_equilibrium("newton", np.full(len(cost), 2.0), cost, stage, alive, params, n_stages,
                            tol=1e-14, price_tol=1e-13)
    assert run.converged, run.message
    return np.asarray(run.price)


@pytest.mark.parametrize("kappa, outside", VARIANTS)
def test_sensitivities_match_finite_differences(kappa, outside):
    cost, stage, alive = market(0)
    params = MarketParams(0.5, 1.3, 1.0, 1.0, 0.0, kappa, outside)
    price = equilibrium(cost, stage, alive, params, 3)
    got = sensitivities(price, cost, stage, alive, params, 3)
    h = 1e-4

    def central(shift):
        return (equilibrium(*shift(+h)) - equilibrium(*shift(-h))) / (2 * h)

    d_t = central(lambda e: (cost, stage, alive, params._replace(temperature=1.3 + e), 3))
    d_a = central(lambda e: (cost, stage, alive, params._replace(alpha=0.5 + e), 3))
    np.testing.assert_allclose(got.d_temperature, d_t, rtol=1e-6)
    np.testing.assert_allclose(got.d_alpha, d_a, rtol=1e-6)
    d_c = np.column_stack([central(lambda e, j=j: (cost + e * (np.arange(12) == j), stage, alive, params, 3))
                           for j in range(12)])
    dense = got.cost_matrix(12)
    assert np.max(np.abs(dense - d_c)) <= 1e-6 * np.max(np.abs(d_c))
    np.testing.assert_allclose(got.own_pass_through, np.diag(d_c), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got.common_pass_through, d_c.sum(axis=1), rtol=1e-6, atol=1e-9)
    assert np.all(dense[stage[:, None] != stage[None, :]] == 0)  # stages are separate games


def test_symmetric_sensitivities_have_closed_forms():
    """n identical peers: p* = kappa c + T / (alpha (1 - 1/n)), so dp/dT = 1 / (alpha (1 - 1/n)),
    dp/dalpha = -T / (alpha^2 (1 - 1/n)), and a common cost shift passes through at kappa."""
    n, alpha, temperature, kappa = 5, 0.4, 1.7, 0.3
    cost, stage, alive = np.full(n, 2.0), np.zeros(n, dtype=int), np.ones(n, dtype=bool)
    params = MarketParams(alpha, temperature, 1.0, 1.0, 0.0, kappa)
    price = equilibrium(cost, stage, alive, params, 1)
    np.testing.assert_allclose(price, kappa * 2.0 + temperature / (alpha * (1 - 1 / n)), rtol=1e-12)
    got = sensitivities(price, cost, stage, alive, params, 1)
    np.testing.assert_allclose(got.d_temperature, 1 / (alpha * (1 - 1 / n)), rtol=1e-10)
    np.testing.assert_allclose(got.d_alpha, -temperature / (alpha ** 2 * (1 - 1 / n)), rtol=1e-10)
    np.testing.assert_allclose(got.common_pass_through, kappa, rtol=1e-10)


def test_sensitivities_refuse_a_profile_that_is_not_an_equilibrium():
    cost, stage, alive = market(1)
    with pytest.raises(ValueError, match="not an interior equilibrium"):
        sensitivities(np.full(12, 2.0), cost, stage, alive, MarketParams(0.5, 1.0, 1.0, 1.0, 0.0), 3)


@pytest.mark.parametrize("kappa, outside", VARIANTS)
def test_best_response_maximises_profit_by_direct_search(kappa, outside):
    cost, stage, alive = market(2)
    params = MarketParams(0.5, 1.1, 1.0, 1.0, 0.0, kappa, outside)
    price = np.random.default_rng(3).uniform(1.0, 6.0, 12)
    response = np.asarray(best_response(price, cost, stage, alive, params, 3))
    for i in range(12):
        def profit(q, i=i):
            trial = price.copy()
            trial[i] = q
            probs = choice_probabilities(trial, cost, stage, alive, params.alpha, params.temperature, 3,
                                         outside_logit(params))
            return -(q - kappa * cost[i]) * float(probs[i])
        direct = minimize_scalar(profit, bounds=(0.0, 60.0), method="bounded", options={"xatol": 1e-10})
        assert response[i] == pytest.approx(direct.x, rel=1e-6)
        # eq. 5's gradient (jax.grad, rivals fixed) vanishes at peer i's own best response
        trial = price.copy()
        trial[i] = response[i]
        assert float(revenue_gradient(jnp.asarray(trial), cost, stage, alive, params, 3)[i]) == pytest.approx(
            0.0, abs=1e-9)


def test_outside_option_bounds_a_lone_peer_and_its_realised_share_matches():
    cost, stage, alive = np.array([2.0]), np.array([0]), np.array([True])
    paper = MarketParams(0.5, 1.0, 1.0, 1.0, 0.0)
    assert not np.isfinite(float(best_response(np.array([1.0]), cost, stage, alive, paper, 1)[0]))
    params = paper._replace(outside_weight=4.0)
    price = float(best_response(np.array([1.0]), cost, stage, alive, params, 1)[0])
    assert np.isfinite(price)
    gap = nash_gap(np.array([price]), cost, stage, alive, params, 1)
    assert float(gap.stage_gap[0]) <= 1e-12
    # realised logit choices with the outside option: the walk-away share is 1 - P
    probs = float(choice_probabilities(np.array([price]), cost, stage, alive, 0.5, 1.0, 1, outside_logit(params))[0])
    clients = 20000
    env = Environment(cost=jnp.asarray(cost), stage=jnp.asarray(stage), alive=jnp.asarray(alive),
                      client_alpha=jnp.full(clients, 0.5), request_rate=1.0, params=params, blocks=stage_blocks(stage, alive, 1),
                      options={}, geometry=None)
    import jax
    chosen = stage_choices(jax.random.key(0), env, jnp.array([price]), 1)
    bought = float(np.mean(np.asarray(chosen)[:, 0] == 0))
    assert bought == pytest.approx(probs, abs=4 * np.sqrt(probs * (1 - probs) / clients))


def test_a_far_outside_option_leaves_the_run_unchanged_bit_for_bit():
    base = load_config("paper_28", overrides=["run.steps=60"])
    far = load_config("paper_28", overrides=["run.steps=60", "market.outside_option=1e6"])
    runs = []
    for cfg in (base, far):
        model = P2PLLMModel(cfg)
        model.run(60)
        runs.append((model.metrics_frame(), model.peers_frame()))
    (metrics, peers), (far_metrics, far_peers) = runs
    assert peers.equals(far_peers)
    zeroed = ["consumer_surplus", "social_welfare", "planner_welfare", "deadweight_loss"]  # measured from w_0
    assert metrics.drop(columns=zeroed).equals(far_metrics.drop(columns=zeroed))
    stages = metrics["scope"] == "stage"
    np.testing.assert_allclose(far_metrics.loc[stages, "consumer_surplus"] - metrics.loc[stages, "consumer_surplus"],
                               1e6 / 0.5, rtol=1e-12)  # D w_0 / alpha


def test_stable_eta_is_positive_when_choice_probabilities_underflow():
    """Costs U(1, 50) at T = 0.5: many P_i are ~1e-20 or smaller; the bound stays the true edge."""
    cost, stage, alive = market(4, n=40, n_stages=4, low=1.0, high=50.0)
    params = MarketParams(0.5, 0.5, 1.0, 1.0, 0.0)
    price = equilibrium(cost, stage, alive, params, 4)
    probs = np.asarray(choice_probabilities(price, cost, stage, alive, 0.5, 0.5, 4))
    assert probs.min() < 1e-15
    bound = stable_eta(price, cost, stage, alive, params, 4)
    assert 0 < bound < np.inf
    start = price * (1 + 1e-3)
    assert diagnose_gradient_ascent(start, cost, stage, alive, params._replace(eta=0.9 * bound), 4,
                                    max_iterations=3000).status == "converged"
    assert diagnose_gradient_ascent(start, cost, stage, alive, params._replace(eta=1.1 * bound), 4,
                                    max_iterations=3000).status == "oscillating"


def test_stable_eta_equals_the_spectral_bound_of_the_full_jacobian():
    cost, stage, alive = market(5, n=40, n_stages=4)
    for params in (MarketParams(0.5, 1.0, 1.0, 1.0, 0.0), MarketParams(0.5, 1.0, 2.0, 1.0, 0.0, 0.5, 7.0)):
        price = equilibrium(cost, stage, alive, params, 4)
        eigenvalues = gradient_jacobian_eigenvalues(price, cost, stage, alive, params, 4)
        assert all(np.all(e.real < 0) for e in eigenvalues)
        direct = min(float(np.min(-2 * e.real / np.abs(e) ** 2)) for e in eigenvalues)
        assert stable_eta(price, cost, stage, alive, params, 4) == pytest.approx(direct, rel=1e-9)


def test_an_unstable_fixed_point_is_detected_and_the_advice_works():
    """A stage leader with P ~ 0.89 > 1 - damping/2 makes the damped fixed point cycle."""
    cost, stage, alive = np.array([1.0, 8.0, 8.0, 8.0]), np.zeros(4, dtype=int), np.ones(4, dtype=bool)
    params = MarketParams(0.2, 0.5, 1.0, 1.0, 0.0)
    run = solve_equilibrium("fixed_point", np.ones(4), cost, stage, alive, params, 1, max_iterations=200)
    assert not run.converged and run.status == "unstable"
    assert "exceeds 1 - damping/2" in run.message
    advised = float(run.message.rsplit("damping < ", 1)[1])
    slower = solve_equilibrium("fixed_point", np.ones(4), cost, stage, alive, params, 1, max_iterations=2000,
                               damping=0.95 * advised)
    assert slower.converged and slower.status == "converged"
    newton = solve_equilibrium("newton", np.ones(4), cost, stage, alive, params, 1)
    np.testing.assert_allclose(slower.price, newton.price, rtol=1e-9)


def test_mixture_search_finds_the_unique_equilibrium_of_one_class():
    cost, stage, alive = market(6, n=8, n_stages=2)
    found = mixture_equilibria(cost, stage, alive, [0.5], [1.0], 1.0, n_stages=2, starts=3, samples=8)
    assert found.per_stage.tolist() == [1, 1] and found.converged_starts == 3
    assert found.unique_guaranteed  # one logit class: the best-response map is a contraction
    exact = equilibrium(cost, stage, alive, MarketParams(0.5, 1.0, 1.0, 1.0, 0.0), 2)
    np.testing.assert_allclose(found.prices[0], exact, rtol=1e-7)


def test_mixture_search_reports_certified_equilibria_of_two_classes():
    cost, stage, alive = market(0, n=8, n_stages=2)
    found = mixture_equilibria(cost, stage, alive, [0.2, 0.9], [0.5, 0.5], 1.0, n_stages=2, starts=4, samples=8)
    assert found.converged_starts >= 1 and len(found.prices) >= 1
    from p2pllm_abm.equilibrium import mixture_nash_gap
    for price in found.prices:
        gain, _ = mixture_nash_gap(price, cost, stage, alive, [0.2, 0.9], [0.5, 0.5], 1.0, 1.0, 0.0, 2)
        assert float(np.max(gain)) <= 1e-9
