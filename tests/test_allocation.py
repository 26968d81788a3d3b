"""Layer reallocation (eq. 7-8): balance, the equilibrium it ends in, and move invariants."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.allocation import (TIE_TOLERANCE, candidate_shares, reallocate, share_gains, share_weight,
                                   stage_capacity)


def until_stable(cost, stage, rng, n_stages, hysteresis=0.0):
    alive = np.ones(len(cost), dtype=bool)
    all_moves = []
    for _ in range(10 * len(cost)):
        stage, moves = reallocate(cost, stage, alive, rng.permutation(len(cost)), hysteresis, n_stages)
        all_moves += moves
        if not moves:
            return stage, all_moves
    raise AssertionError("reallocation did not settle")


def test_equal_costs_from_paper_start_end_balanced():
    cost = np.full(28, 10.0)
    stage = np.repeat(np.arange(4), [10, 4, 10, 4])
    final, moves = until_stable(cost, stage, np.random.default_rng(0), 4)
    assert np.bincount(final, minlength=4).tolist() == [7, 7, 7, 7]
    assert len(moves) == 6  # exactly the surplus of the two crowded stages moves
    _, gain = share_gains(cost, final, np.ones(28, dtype=bool), 4)
    assert np.all(gain <= 0)  # eq. 8 holds for every peer


def test_model_with_equal_costs_ends_balanced_and_efficient():
    cfg = load_config("paper_28", overrides=["network.cost_range=[10.0,10.0]", "allocation.move_fraction=1.0",
                                             "clients.count=0"])
    model = P2PLLMModel(cfg)
    model.run(50)
    assert model.peers.stage_counts().tolist() == [7, 7, 7, 7]
    _, gain = share_gains(model.peers.cost, model.peers.stage, model.peers.alive, 4)
    assert np.all(gain <= 0)


costs = st.lists(st.floats(1.0, 50.0), min_size=2, max_size=30)


@given(costs=costs, n_stages=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_moves_raise_share_keep_stages_served_and_settle_in_eq8(costs, n_stages, seed):
    cost = np.array(costs)
    rng = np.random.default_rng(seed)
    n_stages = min(n_stages, len(cost))
    stage = np.concatenate([np.arange(n_stages), rng.integers(0, n_stages, len(cost) - n_stages)])
    alive = np.ones(len(cost), dtype=bool)
    capacity = stage_capacity(cost, stage, alive, n_stages)
    potential = np.sum(capacity**2)
    final, moves = until_stable(cost, stage, rng, n_stages)
    # replay: every move strictly raised the mover's eq.-7 share, and sum of squared capacities
    # falls with every move (which is why reallocation always settles)
    replay = stage.copy()
    for peer, origin, target in moves:
        assert replay[peer] == origin
        cap = stage_capacity(cost, replay, alive, n_stages)
        shares = candidate_shares(1 / cost[peer], origin, cap)
        assert shares[target] > shares[origin]
        replay[peer] = target
        new_potential = np.sum(stage_capacity(cost, replay, alive, n_stages) ** 2)
        assert new_potential < potential
        potential = new_potential
    np.testing.assert_array_equal(replay, final)
    assert np.all(np.bincount(final, minlength=n_stages) >= 1)  # nobody leaves a stage empty
    _, gain = share_gains(cost, final, alive, n_stages)
    assert np.all(gain <= 0)


def test_hysteresis_blocks_small_gains():
    cost = np.full(9, 10.0)
    stage = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])  # moving from 5 to 5: share 1/5 -> 1/5, no gain
    new, moves = reallocate(cost, stage, np.ones(9, dtype=bool), np.arange(9), 0.0, 2)
    assert moves == []
    stage = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])  # 1/6 -> 1/4: a gain of 50%
    _, moves = reallocate(cost, stage, np.ones(9, dtype=bool), np.arange(9), 0.6, 2)
    assert moves == []
    _, moves = reallocate(cost, stage, np.ones(9, dtype=bool), np.arange(9), 0.4, 2)
    assert moves == [(0, 0, 1)]  # after one move 1/5 -> 1/5: no further gain


def test_dead_peers_neither_move_nor_count():
    cost = np.array([1.0, 1.0, 1.0, 100.0])
    stage = np.array([0, 0, 0, 1])
    alive = np.array([True, True, False, True])
    best, gain = share_gains(cost, stage, alive, 2)
    assert gain[2] == 0 and best[2] == 0
    assert stage_capacity(cost, stage, alive, 2).tolist() == [2.0, 0.01]


def reference_reallocation(weight, stage, alive, candidates, hysteresis, n_stages):
    """Eq. 7-8's sequential moves as a plain Python loop over numpy arrays (the model's own loop
    before reallocation was compiled): the independent check of :func:`reallocation_scan`."""
    stage = stage.copy()
    per_stage = weight if weight.ndim == 2 else np.repeat(weight[:, None], n_stages, axis=1)
    current_weight = per_stage[np.arange(len(stage)), stage]
    capacity = np.bincount(stage[alive], weights=current_weight[alive], minlength=n_stages)
    moves = []
    for peer in candidates.tolist():
        current = int(stage[peer])
        joined = capacity + per_stage[peer]
        joined[current] = capacity[current]
        shares = per_stage[peer] / joined
        target = int(np.argmax(shares))
        if shares[target] > shares[current] * (1.0 + hysteresis) * (1.0 + TIE_TOLERANCE):
            capacity[current] -= per_stage[peer, current]
            capacity[target] += per_stage[peer, target]
            stage[peer] = target
            moves.append((peer, current, target))
    return stage, moves


@settings(max_examples=60)
@given(costs=st.lists(st.floats(0.5, 50.0), min_size=2, max_size=40), n_stages=st.integers(1, 6),
       hysteresis=st.sampled_from([0.0, 0.05, 0.3]), stage_dependent=st.booleans(),
       reading=st.sampled_from(["compute_share", "head_count"]), seed=st.integers(0, 2**32 - 1))
def test_compiled_reallocation_makes_the_reference_loops_moves(costs, n_stages, hysteresis, stage_dependent,
                                                               reading, seed):
    rng = np.random.default_rng(seed)
    cost = np.array(costs)
    if stage_dependent:  # c_i(s): a peer's weight changes with the stage it moves to
        cost = cost[:, None] * rng.uniform(0.5, 2.0, (len(cost), n_stages))
    stage = rng.integers(0, n_stages, len(costs))
    alive = rng.random(len(costs)) < 0.85
    candidates = rng.permutation(np.flatnonzero(alive))[: rng.integers(0, alive.sum() + 1)]
    expected = reference_reallocation(share_weight(cost, reading), stage, alive, candidates, hysteresis, n_stages)
    new_stage, moves = reallocate(cost, stage, alive, candidates, hysteresis, n_stages, reading)
    np.testing.assert_array_equal(new_stage, expected[0])
    assert moves == expected[1]
