"""The request phase: logit choice per stage, path routing with latency, realised path totals."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.dynamics import (Environment, Geometry, expected_requests, path_choices, path_totals, peer_noise,
                                 run_steps, sample_blocks, slot_gumbel, slots_at_most, stage_choices)
from p2pllm_abm.economics import MarketParams, choice_probabilities
from p2pllm_abm.equilibrium import (COUNTED_RANK_STAGES, StageBlocks, block_size, block_width, stage_blocks,
                                    traced_stage_blocks)
from p2pllm_abm.metrics import class_rows
from p2pllm_abm.network import PeerTable
from p2pllm_abm.routing import path_objectives
from tests.test_economics import params, random_market
from tests.strategies import span_networks
from tests.test_routing import all_paths


def environment(peers: PeerTable, client_alpha, client_position, market: MarketParams) -> Environment:
    stage, alive = peers.stage_start, peers.alive
    return Environment(
        jnp.asarray(peers.cost), jnp.asarray(stage), jnp.asarray(alive), jnp.asarray(client_alpha), 1.0, market,
        stage_blocks(stage, alive, peers.n_stages), {},
        Geometry(jnp.asarray(peers.position), jnp.asarray(client_position), peers.latency_range,
                 stage_blocks(peers.stage_end, alive, peers.n_stages + 1).index,
                 jnp.ones((len(client_alpha), 1))),
    )


def market_table(seed: int, n: int = 20, n_stages: int = 2, latency_range=(1.0, 20.0)) -> PeerTable:
    price, cost, stage, alive = (np.asarray(x) for x in random_market(seed, n=n, n_stages=n_stages))
    rng = np.random.default_rng(seed + 100)
    return PeerTable(stage, stage + 1, cost, price, rng.uniform(0, 1, (n, 2)), alive, n_stages, latency_range)


@pytest.mark.parametrize("routing", ["stage", "path"])
def test_choices_realise_boltzmann_probabilities(routing):
    """Per-stage routing's inverse-CDF draw and, without latency, path routing's argmin of weight +
    Gumbel(T) noise both pick peer i with probability P_i (chi-square test)."""
    peers = market_table(2, latency_range=(0.0, 0.0))
    peers.cost = peers.cost * 0.05  # keep probabilities away from 0 so that every cell is testable
    clients = 40_000
    env = environment(peers, np.full(clients, 0.4), np.zeros((clients, 2)), params(temperature=1.5))
    if routing == "stage":  # clients sharing an alpha share one row of probabilities
        env = env._replace(alpha_values=jnp.array([0.4]), alpha_group=jnp.ones((clients, 1)))
    price = jnp.asarray(peers.price)
    choose = stage_choices if routing == "stage" else path_choices
    chosen = choose(jax.random.key(0), env, price, 2)
    boltzmann = np.asarray(choice_probabilities(price, env.cost, env.stage, env.alive, 0.4, 1.5, 2))
    for s in range(2):
        counts = np.bincount(np.asarray(chosen[:, s]), minlength=len(price))  # a whole path: column s is stage s
        members = np.flatnonzero((peers.stage == s) & peers.alive)
        assert counts.sum() == counts[members].sum() == clients  # only live peers of stage s
        result = stats.chisquare(counts[members], clients * boltzmann[members])
        assert result.pvalue > 1e-3


def test_stage_choices_walk_away_with_the_outside_options_probability():
    """With an outside option, a stage is left unbought with probability P_0 = exp(-w_0/T) / (sum_j
    exp(-w_j/T) + exp(-w_0/T)), and the peers keep eq. 3's probabilities (chi-square test)."""
    peers = market_table(3)
    peers.cost = peers.cost * 0.05
    clients = 40_000
    env = environment(peers, np.full(clients, 0.4), np.zeros((clients, 2)), params(temperature=1.5))
    env = env._replace(params=env.params._replace(outside_weight=5.0))
    price = jnp.asarray(peers.price)
    chosen = np.asarray(stage_choices(jax.random.key(1), env, price, 2))
    boltzmann = np.asarray(choice_probabilities(price, env.cost, env.stage, env.alive, 0.4, 1.5, 2,
                                                outside=-5.0 / 1.5))
    for s in range(2):
        members = np.flatnonzero((peers.stage == s) & peers.alive)
        bought = chosen[:, s][chosen[:, s] >= 0]
        observed = np.append(np.bincount(bought, minlength=len(price))[members], np.sum(chosen[:, s] < 0))
        expected = np.append(boltzmann[members], 1.0 - boltzmann[members].sum())
        assert stats.chisquare(observed, clients * expected).pvalue > 1e-3


@settings(max_examples=8, deadline=None)  # every shape compiles
@given(clients=st.integers(1, 5), n_stages=st.integers(1, 4), width=st.integers(1, 40), extra=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1))
def test_slot_noise_does_not_depend_on_the_blocks_width(clients, n_stages, width, extra, seed):
    """A slot's noise is the same in blocks of any width (path routing's noise does not depend on
    the padding its history left)."""
    key, draw = jax.random.key(seed), jax.jit(slot_gumbel, static_argnums=(1, 2))
    narrow = np.asarray(draw(key, (clients, n_stages, width), jnp.float64))
    wide = np.asarray(draw(key, (clients, n_stages, width + extra), jnp.float64))
    np.testing.assert_array_equal(wide[..., :width], narrow)


def test_slot_noise_is_standard_gumbel_and_independent_across_slots():
    """Kolmogorov-Smirnov against the standard Gumbel law, and no correlation between neighbouring
    slots (which share a hash) or stages."""
    noise = np.asarray(slot_gumbel(jax.random.key(11), (400, 5, 101), jnp.float64))
    assert stats.kstest(noise.ravel(), stats.gumbel_r.cdf).pvalue > 1e-3
    for a, b in [(noise[..., 0::2][..., :50], noise[..., 1::2]), (noise[:, 0], noise[:, 1])]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02


@pytest.mark.parametrize("grouped", [False, True])
def test_expected_requests_sum_each_requesting_clients_eq3_probabilities(grouped):
    """Against choice_probabilities client by client; clients sharing an alpha share one computation."""
    peers = market_table(5, n=25, n_stages=3)
    rng = np.random.default_rng(5)
    client_alpha = rng.choice([0.2, 0.5, 0.9], size=30)
    env = environment(peers, client_alpha, rng.uniform(0, 1, (30, 2)), params(temperature=0.8))
    if grouped:
        values, group = np.unique(client_alpha, return_inverse=True)
        env = env._replace(alpha_values=jnp.asarray(values), alpha_group=jnp.asarray(np.eye(len(values))[group]))
    active = rng.random(30) < 0.7
    price = jnp.asarray(peers.price)
    expected = sum(np.asarray(choice_probabilities(price, env.cost, env.stage, env.alive, alpha, 0.8, 3))
                   for alpha in client_alpha[active])
    np.testing.assert_allclose(np.asarray(expected_requests(jnp.asarray(active), env, price)), expected, rtol=1e-12,
                               atol=1e-15)


@settings(max_examples=15)
@given(peers=span_networks(served=True), alpha=st.floats(0.0, 0.95), temperature=st.floats(0.1, 3.0),
       home=st.tuples(st.floats(0, 1), st.floats(0, 1)), seed=st.integers(0, 2**31 - 1))
def test_path_routing_minimises_noisy_weights_plus_latency(peers, alpha, temperature, home, seed):
    """Against brute force over every path: the chosen one minimises sum(w - T G) + (1 - alpha) sum(l)
    with the same Gumbel draws; its totals are routing.path_objectives."""
    home = np.array(home)
    env = environment(peers, np.array([alpha]), home[None, :], params(alpha=alpha, temperature=temperature))
    key = jax.random.split(jax.random.key(seed), 3)[2]
    price = jnp.asarray(peers.price)
    chosen = np.asarray(jax.jit(path_choices, static_argnums=3)(key, env, price, peers.n_stages)[0])  # one compile
    gumbel = np.asarray(jax.jit(peer_noise, static_argnums=2)(key, env, jnp.float64))[0]
    score = alpha * peers.price + (1 - alpha) * peers.cost - temperature * gumbel

    def value(path):
        _, time = path_objectives(peers, path, home)
        return np.sum(score[path]) + (1 - alpha) * (time - np.sum(peers.cost[path]))

    candidates = list(all_paths(peers))
    path = chosen[chosen >= 0].tolist()
    if not candidates:
        assert not path
        return
    assert path in candidates
    assert value(path) == pytest.approx(min(value(p) for p in candidates), rel=1e-9, abs=1e-9)
    routed, total_price, total_time = (np.asarray(x)[0]
                                       for x in jax.jit(path_totals)(jnp.asarray(chosen[None, :]), env, price))
    assert routed
    assert (total_price, total_time) == pytest.approx(path_objectives(peers, path, home), rel=1e-12)


def test_model_routes_spans_and_records_request_classes():
    config = load_config("paper_28", overrides=[
        "network.span_length_probs=[0.5,0.3,0.2]", "allocation.enabled=false", "clients.routing=path",
        "clients.alpha_distribution=uniform", "clients.alpha_params=[0.0,1.0]", "run.record_interval=20"])
    model = P2PLLMModel(config)
    model.run(40)
    assert np.any(model.peers.stage_end - model.peers.stage_start > 1)
    classes = class_rows(model.metrics_frame())
    last = classes[classes["step"] == 40]
    assert last["clients"].sum() == 64 and last["path_requests"].sum() == 64 * 20  # request_rate 1
    # cheap-minded clients (high alpha) pay less and wait longer than time-minded ones
    lowest, highest = last.iloc[0], last.iloc[-1]
    assert highest["path_price"] < lowest["path_price"] and highest["path_time"] > lowest["path_time"]
    again = P2PLLMModel(config)
    again.run(40)
    pd.testing.assert_frame_equal(again.metrics_frame(), model.metrics_frame())


@settings(max_examples=20)  # few sizes and stage counts: each new shape compiles the eager operations again
@given(n=st.sampled_from([1, 7, 40, 200]), n_stages=st.sampled_from([1, 3, 5, COUNTED_RANK_STAGES + 8]),
       live=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32 - 1), wider=st.sampled_from([0, 16]))
def test_blocks_built_inside_the_compiled_run_equal_the_hosts(n, n_stages, live, seed, wider):
    """traced_stage_blocks (inside run_steps) against stage_blocks (the host's, which steps use):
    the same index at any width that holds every stage, padded with -1; a width too small says so.
    block_width, traced, picks block_size's width. Stage counts on both sides of
    COUNTED_RANK_STAGES: ranks by running counts and by a sort."""
    rng = np.random.default_rng(seed)
    stage, alive = rng.integers(0, n_stages, n), rng.random(n) < live
    host = np.asarray(stage_blocks(stage, alive, n_stages).index)
    width = host.shape[1] + wider
    traced, fits = traced_stage_blocks(jnp.asarray(stage), jnp.asarray(alive), n_stages, width)
    assert bool(fits)
    np.testing.assert_array_equal(np.asarray(traced.index), np.pad(host, ((0, 0), (0, wider)), constant_values=-1))
    largest = int(np.bincount(stage[alive], minlength=n_stages).max())
    assert int(block_width(jnp.bincount(jnp.asarray(stage[alive]), length=n_stages))) == block_size(largest)
    if largest > 1:
        assert not bool(traced_stage_blocks(jnp.asarray(stage), jnp.asarray(alive), n_stages, largest - 1)[1])


@settings(max_examples=40)
@given(rows=st.integers(1, 3), n_stages=st.integers(1, 5), width=st.integers(1, 120), clients=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1), integer=st.booleans())
def test_the_block_search_counts_the_slots_a_comparison_counts(rows, n_stages, width, clients, seed, integer):
    """slots_at_most (the inverse-CDF draw's search, by blocks of about sqrt(width) slots) against
    comparing every slot: cumulative probabilities (float, or integer units as the draw sums them)
    with zero steps, flat padded tails, targets on a slot's value exactly and past the last slot;
    widths that leave the last block short."""
    rng = np.random.default_rng(seed)
    probs = np.where(rng.random((rows, n_stages, width)) < 0.3, 0.0, rng.random((rows, n_stages, width)))
    probs[np.arange(width) >= rng.integers(0, width + 1, (rows, n_stages))[..., None]] = 0.0  # padding
    cumulative = np.cumsum(probs, axis=-1)
    row = rng.integers(0, rows, clients)
    target = rng.random((clients, n_stages)) * cumulative[row][..., -1] * 1.1
    on_a_slot = cumulative[row[:, None], np.arange(n_stages)[None, :], rng.integers(0, width, (clients, n_stages))]
    target = np.where(rng.random((clients, n_stages)) < 0.3, on_a_slot, target)
    if integer:
        cumulative, target = (cumulative * 2.0**50).astype(np.int64), (target * 2.0**50).astype(np.int64)
    expected = np.sum(cumulative[row] <= target[..., None], axis=-1)
    counted = jax.jit(slots_at_most)(jnp.asarray(cumulative), jnp.asarray(row), jnp.asarray(target))  # one compile
    np.testing.assert_array_equal(np.asarray(counted), expected)


def test_an_environment_with_device_scalars_compiles_the_same_program():
    """The model passes its environment with Python numbers turned into device scalars (a jitted
    call would copy each, every call); the program run_steps compiles must not change with that
    (weak types kept), nor may any Python number be left."""
    model = P2PLLMModel(load_config("paper_table1", overrides=["clients.count=8", "allocation.period=10"]))
    python_numbers = model.engine.make_environment()
    on_device = model.environment
    assert not [leaf for leaf in jax.tree.leaves(on_device) if isinstance(leaf, (bool, int, float))]
    assert [leaf for leaf in jax.tree.leaves(python_numbers) if isinstance(leaf, float)]
    reallocation = model.fused_call(10).reallocation
    programs = [run_steps.lower(model.engine.state, env, 10, 0, reallocation, **model.engine.tick_options()).as_text()
                for env in (python_numbers, on_device)]
    assert programs[0] == programs[1]


@settings(max_examples=40, deadline=None)
@given(walk_away=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_the_inverse_cdf_draw_picks_the_slot_exact_sums_pick(walk_away, seed):
    """sample_blocks against the inverse CDF in exact rational arithmetic: the first slot whose
    cumulative probability exceeds the uniform (times the stage's total without walking away), -1
    past the total with walking away or for an empty stage. Uniforms within 1e-12 of a cumulative
    sum are left out: there the draw's unit of 2^-62 may decide either way. One shape (4 stages of
    40 slots, 12 clients: one compilation); stages hold 0 to 40 live peers, some with probability 0."""
    n_stages, width, clients = 4, 40, 12
    rng = np.random.default_rng(seed)
    live = rng.integers(0, width + 1, n_stages)
    probs = np.where(np.arange(width) < live[:, None], rng.random((n_stages, width)) ** 3, 0.0)
    probs = probs / max(probs.sum(axis=1).max(), 1e-300) * rng.uniform(0.2, 1.0)
    probs[rng.random(probs.shape) < 0.2] = 0.0
    index = np.where(np.arange(width) < live[:, None], np.arange(n_stages * width).reshape(n_stages, width), -1)
    uniform = rng.random((clients, n_stages))
    got = np.asarray(sample_blocks(jnp.asarray(probs[None]), jnp.zeros(clients, int), jnp.asarray(uniform),
                                   StageBlocks(jnp.asarray(index)), walk_away))
    for s in range(n_stages):
        sums = np.cumsum([Fraction(float(p)) for p in probs[s]])
        total = sums[-1]
        for c in range(clients):
            target = Fraction(float(uniform[c, s])) * (1 if walk_away else total)
            if any(abs(float(target - x)) < 1e-12 for x in sums):
                continue
            if total == 0 or (walk_away and target >= total):
                assert got[c, s] == -1
            else:
                assert got[c, s] == index[s, next(k for k, x in enumerate(sums) if x > target)]
