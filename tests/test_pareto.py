"""Exact Pareto paths against brute-force enumeration; supported points against an exact rational
check; the hand-built unsupported example of the README."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm.network import PeerTable
from p2pllm_abm.pareto import pareto_paths, path_counts, sample_path_objectives, weighted_sum_sweep
from p2pllm_abm.routing import path_objectives
from tests.strategies import span_networks
from tests.test_routing import all_paths


clients = st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1)).map(np.array))


def brute_force_front(points):
    """Objective pairs no other pair dominates, by comparing every pair."""
    unique = set(points)
    return sorted(p for p in unique
                  if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in unique))


@settings(max_examples=150)
@given(peers=span_networks(), client=clients)
def test_pareto_set_equals_brute_force(peers, client):
    points = [path_objectives(peers, p, client) for p in all_paths(peers)]
    front = pareto_paths(peers, client)
    assert sorted(zip(front.price.tolist(), front.time.tolist())) == brute_force_front(points)
    for path, price, time in zip(front.paths, front.price, front.time):
        assert path.tolist() in list(all_paths(peers))
        assert path_objectives(peers, path, client) == (price, time)
    unpruned = pareto_paths(peers, client, prune=False)
    assert np.array_equal(unpruned.price, front.price) and np.array_equal(unpruned.time, front.time)


@settings(max_examples=100)
@given(peers=span_networks(served=True), client=clients, alpha=st.floats(1e-6, 1 - 1e-6))
def test_every_weighted_sum_optimum_is_pareto(peers, client, alpha):
    """In exact arithmetic a weighted-sum optimum (0 < alpha < 1) is Pareto-optimal. In floats a
    tiny price can vanish in the weighted sum (alpha * 5e-324 == 0), so a point outside the set
    is allowed only when a Pareto point that dominates it ties with it in the weighted sum."""
    front = pareto_paths(peers, client)
    chosen = weighted_sum_sweep(peers, [alpha], client).iloc[0]
    pareto = set(zip(front.price.tolist(), front.time.tolist()))
    if (chosen.price, chosen.time) not in pareto:
        value = alpha * chosen.price + (1 - alpha) * chosen.time
        assert any(p <= chosen.price and t <= chosen.time
                   and alpha * p + (1 - alpha) * t == pytest.approx(value, rel=1e-12, abs=1e-300) for p, t in pareto)


def exactly_supported(point, points) -> bool:
    """Whether ``point`` minimises alpha * price + (1 - alpha) * time over ``points`` for some
    alpha in [0, 1], in exact rational arithmetic: the best alpha for it is 0, 1 or one at which
    it ties with another point."""
    p = [Fraction(x) for x in point]
    others = [[Fraction(x) for x in q] for q in points]
    candidates = {Fraction(0), Fraction(1)}
    for q in others:
        denominator = (p[1] - q[1]) + (q[0] - p[0])
        if denominator != 0:
            alpha = (p[1] - q[1]) / denominator
            if 0 <= alpha <= 1:
                candidates.add(alpha)

    def value(x, alpha):
        return alpha * x[0] + (1 - alpha) * x[1]

    return any(all(value(p, a) <= value(q, a) for q in others) for a in candidates)


@settings(max_examples=150)
@given(peers=span_networks(served=True, integer=True))
def test_supported_points_are_the_lower_convex_hull(peers):
    points = [path_objectives(peers, p) for p in all_paths(peers)]
    front = pareto_paths(peers)
    for price, time, supported in zip(front.price, front.time, front.supported):
        assert supported == exactly_supported((price, time), points)


@settings(max_examples=100)
@given(peers=span_networks(served=True, integer=True), fraction=st.floats(0, 1))
def test_alpha_interval_selects_its_point(peers, fraction):
    front = pareto_paths(peers)
    for k in np.flatnonzero(front.supported):
        alpha = front.alpha_low[k] + fraction * (front.alpha_high[k] - front.alpha_low[k])
        best = min(alpha * p + (1 - alpha) * t for p, t in zip(front.price, front.time))
        assert alpha * front.price[k] + (1 - alpha) * front.time[k] == pytest.approx(best, abs=1e-9)


def unsupported_example() -> PeerTable:
    """The README's example: two stages, no latency; stage 0 offers (price, cost) = (0, 5),
    (3, 3) and (5, 0), stage 1 one free peer. The middle path is Pareto-optimal but lies above the
    segment joining the other two (3 + 3 > 5), so no alpha selects it."""
    return PeerTable(
        stage_start=np.array([0, 0, 0, 1]), stage_end=np.array([1, 1, 1, 2]),
        cost=np.array([5.0, 3.0, 0.0, 0.0]), price=np.array([0.0, 3.0, 5.0, 0.0]),
        position=np.zeros((4, 2)), alive=np.ones(4, dtype=bool), n_stages=2, latency_range=(0.0, 0.0),
    )


def test_hand_built_unsupported_pareto_path():
    front = pareto_paths(unsupported_example())
    assert front.price.tolist() == [0.0, 3.0, 5.0] and front.time.tolist() == [5.0, 3.0, 0.0]
    assert front.supported.tolist() == [True, False, True]
    assert front.alpha_low.tolist()[::2] == [0.5, 0.0] and front.alpha_high.tolist()[::2] == [1.0, 0.5]
    assert np.isnan(front.alpha_low[1])
    sweep = weighted_sum_sweep(unsupported_example(), np.linspace(0, 1, 101))
    assert (3.0, 3.0) not in set(zip(sweep.price, sweep.time))
    assert front.paths[1].tolist() == [1, 3]


def test_collinear_point_is_supported_at_one_alpha():
    peers = unsupported_example()
    peers.cost[1] = 2.0  # (3, 2) lies on the segment from (0, 5) to (5, 0)
    front = pareto_paths(peers)
    assert front.supported.tolist() == [True, True, True]
    assert front.alpha_low[1] == front.alpha_high[1] == 0.5


def test_hypervolume_closed_form():
    front = pareto_paths(unsupported_example())
    # staircase below (10, 10): widths 3, 2, 5 at heights 10-5, 10-3, 10-0
    assert front.hypervolume((10.0, 10.0)) == 3 * 5 + 2 * 7 + 5 * 10
    assert front.hypervolume((4.0, 4.0)) == 1 * 1  # only (3, 3) lies inside
    assert front.hypervolume() > 0


def test_no_path_gives_an_empty_frontier():
    peers = unsupported_example()
    peers.alive[3] = False
    front = pareto_paths(peers)
    assert len(front) == 0 and front.hypervolume() == 0.0


@given(peers=span_networks())
def test_path_counts_and_enumeration(peers):
    expected = list(all_paths(peers))
    _, total = path_counts(peers)
    assert total == len(expected)
    table = sample_path_objectives(peers, max_paths=10_000)
    assert sorted(zip(table.price, table.time)) == sorted(path_objectives(peers, p) for p in expected)


def test_sampled_paths_are_valid_paths():
    stage = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(1)
    peers = PeerTable(stage, stage + 1, rng.uniform(1, 5, 12), rng.uniform(1, 5, 12), rng.uniform(0, 1, (12, 2)),
                      np.ones(12, dtype=bool), 3)
    table = sample_path_objectives(peers, max_paths=20, rng=np.random.default_rng(0))
    assert len(table) == 20 and table.sampled.all()
    every = {path_objectives(peers, p) for p in all_paths(peers)}
    assert set(zip(table.price, table.time)) <= every
