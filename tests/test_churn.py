"""Peers joining, leaving, failing and coming back; switching costs (p2pllm_abm/churn.py, the model)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.agents import PeerAgent

FAST = ["run.record_interval=10", "report.table_steps=[0]"]


def check_consistent(model: P2PLLMModel) -> None:
    """The PeerTable and the Mesa agents agree: one PeerAgent per present row, pointing at it,
    with the row's unique id; peer ids unique; nobody alive who is not present."""
    peers = model.peers
    agents = list(model.agents_by_type[PeerAgent])
    assert sorted(agent.index for agent in agents) == np.flatnonzero(peers.present).tolist()
    assert all(model.peer_unique_ids[agent.index] == agent.unique_id for agent in agents)
    assert (model.peer_unique_ids[~peers.present] == -1).all()
    ids = peers.peer_id[peers.present]
    assert len(set(ids.tolist())) == len(ids) and (ids >= 0).all()
    assert not (peers.alive & ~peers.present).any()
    assert len(peers.price) == len(peers) == len(model.engine.state.price) == len(model.peer_unique_ids)


@settings(max_examples=5)
@given(seed=st.integers(0, 10**6), join=st.floats(0.0, 3.0), leave=st.floats(0.0, 0.2), headroom=st.sampled_from([0.0, 0.1]))
def test_churn_keeps_the_table_and_the_agents_consistent(seed, join, leave, headroom):
    """After every step of a run with joins, leaves and failures (the table growing when its spare
    rows run out), the table and the agents agree, and the events add up: present peers = start +
    joins - leaves - failures for good."""
    cfg = load_config("paper_28", overrides=[f"seed={seed}", f"churn.join_rate={join}", f"churn.leave_rate={leave}",
                                             f"churn.headroom={headroom}", "failures.rate=0.05",
                                             "failures.downtime=null", *FAST])
    model = P2PLLMModel(cfg)
    for _ in range(12):
        model.step()
        check_consistent(model)
    counts = model.churn_counts
    assert model.peers.present.sum() == 28 + counts["join"] - counts["leave"] - counts["fail"]
    events = model.events_frame()
    assert (events.groupby("event").size().reindex(["join", "leave", "fail"], fill_value=0).to_numpy()
            == [counts["join"], counts["leave"], counts["fail"]]).all()
    joined = events[events["event"] == "join"]["peer_id"]
    assert (joined >= 28).all() and joined.is_unique


def test_same_seed_same_run_with_churn_and_failures():
    overrides = ["churn.join_rate=2", "churn.leave_rate=0.05", "failures.rate=0.1", "network.step_ms=20", *FAST]
    runs = []
    for _ in range(2):
        model = P2PLLMModel(load_config("paper_28", overrides=overrides))
        model.run(30)
        runs.append((model.peers.price.copy(), model.metrics_frame(), model.events_frame()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1].equals(runs[1][1]) and runs[0][2].equals(runs[1][2])


def test_joiners_take_their_eq8_stage():
    """With head-count shares, eq. 8 sends a newcomer to the stage with the fewest live peers."""
    model = P2PLLMModel(load_config("paper_28", overrides=["allocation.reading=head_count", "churn.join_rate=1",
                                                           "allocation.period=1000", *FAST]))
    for _ in range(15):
        counts = model.peers.stage_counts()
        joins_before = model.churn_counts["join"]
        model.step()
        new = model.events_frame().iloc[len(model.events_frame()) - (model.churn_counts["join"] - joins_before):]
        if model.churn_counts["join"] == joins_before + 1:
            assert counts[int(new["stage"].iloc[0])] == counts.min()


def test_failed_peers_are_down_for_the_downtime():
    """A peer failing at step t is down during steps t+1 .. t+downtime and back at t+downtime+1."""
    model = P2PLLMModel(load_config("paper_28", overrides=["failures.rate=0.05", "failures.downtime=3",
                                                           "allocation.enabled=false", *FAST]))
    model.run(40)
    events = model.events_frame()
    fails = events[events["event"] == "fail"]
    backs = events[events["event"] == "recover"]
    assert len(fails) > 0
    for peer, step in zip(fails["peer_id"], fails["step"]):
        if step + 4 <= 40:
            assert ((backs["peer_id"] == peer) & (backs["step"] == step + 4)).any()


def test_moving_costs_reload_time_and_a_fee():
    """allocation.reload_steps: a peer that moved at step t serves again from step t + reload + 1;
    allocation.switch_fee accumulates per move."""
    model = P2PLLMModel(load_config("paper_28", overrides=["allocation.reload_steps=4", "allocation.switch_fee=0.5",
                                                           "allocation.move_fraction=0.5", *FAST]))
    model.run(50)
    events = model.events_frame()
    moves = events[events["event"] == "move"]
    assert len(moves) == model.moves > 0
    for peer, step in zip(moves["peer_id"], moves["step"]):
        if step + 5 <= 50:
            back = events[(events["event"] == "recover") & (events["peer_id"] == peer) & (events["step"] > step)]
            assert back["step"].min() == step + 5
    per_peer = moves.groupby("peer_id").size()
    np.testing.assert_allclose(model.switch_fees[per_peer.index.to_numpy()], 0.5 * per_peer.to_numpy())


def test_churn_with_the_ledger_registers_and_deregisters():
    """With the ledger on, newcomers register and bond their stake through a transaction, peers that
    leave are deregistered with their bond unbonding, and money is conserved at every step."""
    cfg = load_config("paper_table1_ledger", overrides=[
        "network.peers=28", "network.initial_distribution=null", "churn.join_rate=1", "churn.leave_rate=0.05",
        "run.steps=20", "ledger.check_every_step=true", *FAST])
    model = P2PLLMModel(cfg)
    model.run(20)
    registry, peers = model.ledger.registry, model.peers
    joined = np.flatnonzero(peers.present & (peers.peer_id >= 28))
    left = np.flatnonzero(~peers.present & (peers.peer_id >= 0))
    assert len(joined) and len(left)
    assert registry.registered[joined].all() and not registry.registered[left].any()
    events = model.events_frame()
    joined_at = events[events["event"] == "join"].set_index("peer_id")["step"]
    settled = joined[joined_at.loc[peers.peer_id[joined]].to_numpy() < 18]  # its bond's block is out
    assert (registry.bonded[settled] == cfg.ledger.initial_stake).all()
    assert model.ledger.summary()["conserved"]
    check_consistent(model)


@pytest.mark.parametrize("field,value", [("churn.leave_rate", 1.0), ("churn.join_rate", -1), ("failures.rate", 1.5),
                                         ("failures.downtime", 0), ("failures.max_retries", -1),
                                         ("network.step_ms", 0), ("allocation.rule", "random"),
                                         ("allocation.balance_quality", 2), ("clients.routing", "fastest")])
def test_bad_dynamics_settings_are_refused(field, value):
    from p2pllm_abm import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config("paper_28", overrides=[f"{field}={value}"])
    assert error.value.field == field


def test_settings_that_need_each_other_are_refused():
    from p2pllm_abm import ConfigError

    for overrides, field in ((["clients.load_aware=true"], "clients.load_aware"),
                             (["network.capacity=3"], "network.capacity"),
                             (["churn.join_rate=1", "experiment=paper_table1_ledger", "adversary.fraction=0.1"],
                              "churn.join_rate")):
        experiment = next((o.split("=")[1] for o in overrides if o.startswith("experiment=")), "paper_28")
        with pytest.raises(ConfigError) as error:
            load_config(experiment, overrides=[o for o in overrides if not o.startswith("experiment=")])
        assert error.value.field == field


def test_joins_rarely_recompile_the_jitted_step():
    """Spare rows, reused rows and block widths that only grow: 60 steps with about 120 joins and
    as many leaves compile the jitted tick at most a few times (once per shape), not per join."""
    from p2pllm_abm.dynamics import run_ticks

    model = P2PLLMModel(load_config("paper_28", overrides=["churn.join_rate=2", "churn.leave_rate=0.07",
                                                           "failures.rate=0.05", *FAST]))
    before = run_ticks._cache_size()
    model.run(60)
    compiles = run_ticks._cache_size() - before
    assert model.churn_counts["join"] >= 80 and compiles <= 4


@given(capacity=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8),
       weight=st.lists(st.floats(0.01, 5.0), min_size=0, max_size=30))
def test_newcomers_by_least_capacity_equal_eq8_one_by_one(capacity, weight):
    """The heap shortcut for stage-independent weights places every newcomer where eq. 8, applied
    one newcomer after another, does: at the stage of least capacity (w / (C + w) falls with C),
    the first on ties; and, where the shares do not round to a tie, where joining_stage does."""
    from p2pllm_abm.allocation import joining_stage
    from p2pllm_abm.allocation import least_capacity_stages

    capacity, weight = np.array(capacity), np.array(weight)
    expected, running = [], capacity.copy()
    for w in weight:
        stage = int(np.argmin(running))
        shares = w / (running + w)
        if (shares == shares.max()).sum() == 1:
            assert joining_stage(np.full(len(capacity), w), running) == stage
        expected.append(stage)
        running[stage] += w
    assert least_capacity_stages(capacity, weight).tolist() == expected


def test_run_with_churn_equals_stepping():
    """run() gives the results of calling step() (the environment JAX reads is a copy of the table,
    whose columns churn changes in place; run() checks the dispatched ticks in batches), and the
    same agent ids whether or not anyone looked at the agents in between."""
    overrides = ["churn.join_rate=2", "churn.leave_rate=0.05", "failures.rate=0.1", "network.step_ms=20", *FAST]
    stepped, ran = (P2PLLMModel(load_config("paper_28", overrides=overrides)) for _ in range(2))
    for _ in range(25):
        stepped.step()
        assert len(stepped.agents_by_type[PeerAgent]) == stepped.peers.present.sum()  # looked at every step
    ran.run(25)
    # agents are made when looked at, and a peer that came and went unseen still takes its id
    np.testing.assert_array_equal(stepped.peer_unique_ids, ran.peer_unique_ids)
    assert ({(a.unique_id, a.index) for a in stepped.agents_by_type[PeerAgent]}
            == {(a.unique_id, a.index) for a in ran.agents_by_type[PeerAgent]})
    np.testing.assert_array_equal(stepped.peers.price, ran.peers.price)
    np.testing.assert_array_equal(stepped.peers.revenue, ran.peers.revenue)
    assert stepped.events_frame().equals(ran.events_frame())
    assert stepped.metrics_frame().equals(ran.metrics_frame().iloc[: len(stepped.metrics_frame())])
