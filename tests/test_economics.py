"""Market math against closed forms and an independent autodiff of the full softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pllm_abm.economics import (
    MarketParams,
    choice_probabilities,
    expected_revenue,
    node_weights,
    price_step,
    revenue_gradient,
)


def random_market(seed, n=40, n_stages=4):
    rng = np.random.default_rng(seed)
    stage = rng.integers(0, n_stages, size=n)
    stage[:n_stages] = np.arange(n_stages)  # every stage served
    price = rng.uniform(0.5, 8.0, size=n)
    cost = rng.uniform(1.0, 50.0, size=n) / 10
    alive = rng.random(n) > 0.1
    alive[:n_stages] = True
    return jnp.asarray(price), jnp.asarray(cost), jnp.asarray(stage), jnp.asarray(alive)


def params(alpha=0.5, temperature=1.0, demand=1.0, eta=1.0, floor=0.0):
    return MarketParams(alpha, temperature, demand, eta, floor)


@pytest.mark.parametrize("seed", range(3))
def test_gradient_equals_paper_closed_form_at_unit_temperature(seed):
    price, cost, stage, alive = random_market(seed)
    p = params(alpha=0.5, temperature=1.0)
    probs = choice_probabilities(price, cost, stage, alive, 0.5, 1.0, 4)
    paper = probs * (1 + 0.5 * price * (probs - 1))  # dR/dp = P(1 + alpha p (P - 1))
    got = revenue_gradient(price, cost, stage, alive, p, 4)
    np.testing.assert_allclose(got, jnp.where(alive, paper, 0.0), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("alpha", "temperature", "demand"), [(0.2, 0.5, 1.0), (0.8, 3.0, 2.5), (1.0, 2.0, 1.0)])
def test_gradient_equals_temperature_generalised_closed_form(alpha, temperature, demand):
    price, cost, stage, alive = random_market(7)
    p = params(alpha=alpha, temperature=temperature, demand=demand)
    probs = choice_probabilities(price, cost, stage, alive, alpha, temperature, 4)
    closed = demand * probs * (1 - (alpha / temperature) * price * (1 - probs))
    got = revenue_gradient(price, cost, stage, alive, p, 4)
    np.testing.assert_allclose(got, jnp.where(alive, closed, 0.0), rtol=0, atol=1e-10)


def test_gradient_equals_autodiff_of_full_softmax_revenue():
    """Independent check: differentiate R_i through the whole stage softmax, one peer at a time."""
    price, cost, stage, alive = random_market(3, n=24)
    p = params(alpha=0.3, temperature=1.7, demand=1.5)

    def own(i):
        def revenue_i(q):
            prices = price.at[i].set(q)
            return expected_revenue(prices, cost, stage, alive, p, 4)[i]
        return jax.grad(revenue_i)(price[i])

    independent = jnp.stack([own(i) for i in range(len(price))])
    got = revenue_gradient(price, cost, stage, alive, p, 4)
    np.testing.assert_allclose(got, jnp.where(alive, independent, 0.0), rtol=0, atol=1e-12)


def test_probabilities_sum_to_one_per_stage_and_ignore_dead_peers():
    price, cost, stage, alive = random_market(11)
    probs = np.asarray(choice_probabilities(price, cost, stage, alive, 0.5, 1.0, 4))
    assert np.all(probs[~np.asarray(alive)] == 0.0)
    np.testing.assert_allclose(np.bincount(np.asarray(stage), weights=probs, minlength=4), 1.0, atol=1e-14)
    # removing the dead peers from the table changes nothing for the live ones
    keep = np.asarray(alive)
    reduced = choice_probabilities(price[keep], cost[keep], stage[keep], alive[keep], 0.5, 1.0, 4)
    np.testing.assert_allclose(probs[keep], reduced, atol=1e-15)


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e6])
def test_no_overflow_at_extreme_weight_over_temperature(scale):
    """Weights of order 1e4 * T (and beyond) neither overflow nor underflow to NaN."""
    price = jnp.array([1.0, 1.0 + 1e-3, 3.0, 1.0, 2.0]) * scale
    cost = jnp.ones(5)
    stage = jnp.array([0, 0, 0, 1, 1])
    alive = jnp.ones(5, dtype=bool)
    p = params(alpha=1.0, temperature=1.0)
    probs = np.asarray(choice_probabilities(price, cost, stage, alive, 1.0, 1.0, 2))
    grad = np.asarray(revenue_gradient(price, cost, stage, alive, p, 2))
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(np.bincount(np.asarray(stage), weights=probs), 1.0, atol=1e-14)
    assert probs[0] == probs[:3].max() and probs[3] == pytest.approx(1.0)
    # closed form at the extremes: the cheap peer of stage 1 is a near-monopolist, dR/dp ~ 1 - p(1 - P)
    closed = probs * (1 - price * (1 - probs))
    np.testing.assert_allclose(grad, closed, rtol=0, atol=1e-9 * scale)


def test_single_peer_stage_is_a_monopolist_with_unit_gradient():
    price, cost = jnp.array([3.0, 2.0, 4.0]), jnp.array([1.0, 2.0, 3.0])
    stage, alive = jnp.array([0, 1, 1]), jnp.ones(3, dtype=bool)
    grad = revenue_gradient(price, cost, stage, alive, params(demand=2.0), 2)
    assert grad[0] == pytest.approx(2.0, abs=1e-15)  # R = D p, dR/dp = D


def test_price_step_is_eq5_with_floor_and_frozen_dead_peers():
    price, cost, stage, alive = random_market(5)
    p = params(eta=0.7)
    grad = revenue_gradient(price, cost, stage, alive, p, 4)
    stepped = price_step(price, cost, stage, alive, p, 4)
    expected = jnp.where(alive, jnp.maximum(price + 0.7 * grad, 0.0), price)
    np.testing.assert_array_equal(stepped, expected)
    huge = price_step(price, cost, stage, alive, params(eta=1e6, floor=0.25), 4)
    assert float(jnp.min(jnp.where(alive, huge, 1.0))) >= 0.25
    np.testing.assert_array_equal(huge[~alive], price[~alive])


def test_node_weights_eq1():
    assert node_weights(4.0, 10.0, 0.25) == pytest.approx(0.25 * 4 + 0.75 * 10)


def test_rival_mass_is_exact_when_one_peer_dominates_beyond_float_range():
    """Leave-one-out sums do not cancel: logits 2000 apart still give the exact rest of the stage."""
    from p2pllm_abm.economics import log_rival_mass

    logits = jnp.array([0.0, -2000.0, -2001.0, 5.0, -jnp.inf])
    stage = jnp.array([0, 0, 0, 1, 0])
    got = np.asarray(log_rival_mass(logits, stage, 2))
    assert got[0] == pytest.approx(np.logaddexp(-2000.0, -2001.0), rel=1e-15)
    assert got[1] == pytest.approx(np.logaddexp(0.0, -2001.0), abs=1e-15)
    assert got[3] == -np.inf  # alone in stage 1
    for (a, b) in ((jnp.array([1.0, 1.0]), jnp.array([0, 0])),):  # ties: each sees the other
        np.testing.assert_allclose(log_rival_mass(a, b, 1), [1.0, 1.0], atol=1e-15)
