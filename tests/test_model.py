"""The Mesa model: phases, determinism, fused vs stepwise runs, collectors and closed forms."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.recorder import Recorder
from p2pllm_abm.agents import ClientAgent, PeerAgent
from p2pllm_abm.metrics import (CLASS_METRICS, PEER_COLUMNS, STAGE_METRICS, nullable, stage_medians, stage_rows,
                                write_run_outputs)


def small(*overrides, experiment="paper_28"):
    return load_config(experiment, overrides=["run.record_interval=10", *overrides])


def test_ten_step_smoke_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = P2PLLMModel(small())
        for _ in range(10):
            model.step()
    assert model.steps == 10
    assert np.all(np.isfinite(model.peers.price))


def test_agents_are_handles_into_the_table():
    model = P2PLLMModel(small("clients.alpha_distribution=uniform", "clients.alpha_params=[0.2,0.9]"))
    peers = model.agents_by_type[PeerAgent]
    clients = model.agents_by_type[ClientAgent]
    assert len(peers) == 28 and len(clients) == model.config.clients.count
    model.run(20)
    for agent in peers:
        i = agent.index
        assert (agent.stage, agent.cost, agent.price) == (model.peers.stage[i], model.peers.cost[i], model.peers.price[i])
    alphas = np.array([c.alpha for c in clients])
    assert np.all((alphas >= 0.2) & (alphas <= 0.9)) and alphas.std() > 0


def test_same_seed_same_outputs_bit_for_bit(tmp_path):
    outputs = []
    for name in ("a", "b"):
        model = P2PLLMModel(small("seed=5"))
        model.run(60)
        write_run_outputs(model, tmp_path / name, wall_time_s=1.0)
        outputs.append(tmp_path / name)
    for file in ("metrics.parquet", "peers.parquet"):
        assert (outputs[0] / file).read_bytes() == (outputs[1] / file).read_bytes()
    other = P2PLLMModel(small("seed=6"))
    other.run(60)
    assert not other.metrics_frame().equals(pd.read_parquet(outputs[0] / "metrics.parquet"))


def test_fused_run_equals_step_by_step():
    fused, stepped = P2PLLMModel(small("seed=2")), P2PLLMModel(small("seed=2"))
    fused.run(47)
    for _ in range(47):
        stepped.step()
    for column in ("price", "revenue", "requests", "expected_requests", "stage_start"):
        np.testing.assert_array_equal(getattr(fused.peers, column), getattr(stepped.peers, column))
    # the stepwise model did not record the last (non-multiple) step; everything before agrees
    recorded = stepped.metrics_frame()
    pd.testing.assert_frame_equal(fused.metrics_frame().iloc[: len(recorded)], recorded)


def stepped_and_fused(cfg, steps: int) -> tuple[P2PLLMModel, P2PLLMModel]:
    fused, stepped = P2PLLMModel(cfg), P2PLLMModel(cfg)
    fused.run(steps)
    for _ in range(steps):
        stepped.step()
    return fused, stepped


@pytest.mark.parametrize("overrides", [
    [],  # Table 1: 64 clients, reallocation every 10 steps
    ["market.update_rule=newton", "allocation.hysteresis=0.05"],  # a rule that reads the stage blocks
    ["market.update_rule=best_response", "network.step_ms=20", "clients.load_aware=true"],  # queues
    ["clients.alpha_distribution=uniform", "clients.alpha_params=[0.1,0.9]", "allocation.reading=head_count"],
    ["allocation.enabled=false"],
])
def test_the_compiled_run_equals_stepping_bit_for_bit(overrides):
    """model.run compiles every step between two records into one call (ticks and eq. 7-8
    reallocation, dynamics.run_steps) and takes each record's host part while the next call runs;
    model.step runs the phases one by one and records in place. Every output agrees."""
    fused, stepped = stepped_and_fused(small(*overrides, "run.record_interval=25", experiment="paper_table1"), 100)
    assert fused.fusable
    pd.testing.assert_frame_equal(fused.metrics_frame(), stepped.metrics_frame())
    for frame in ("get_model_vars_dataframe", "get_agent_vars_dataframe"):
        pd.testing.assert_frame_equal(getattr(fused.datacollector, frame)(), getattr(stepped.datacollector, frame)())
    pd.testing.assert_frame_equal(fused.peers_frame(), stepped.peers_frame())
    pd.testing.assert_frame_equal(fused.events_frame(), stepped.events_frame())
    for column in ("price", "revenue", "requests", "expected_requests", "stage_start", "stage_end", "cost"):
        np.testing.assert_array_equal(getattr(fused.peers, column), getattr(stepped.peers, column))
    assert fused.moves == stepped.moves and (fused.moves > 0) == fused.config.allocation.enabled
    assert fused.rng.bit_generator.state == stepped.rng.bit_generator.state  # no candidate drawn ahead is left over


@pytest.mark.parametrize("record_interval", [20, 15])
def test_the_compiled_run_returns_to_python_where_a_stage_outgrows_the_stage_blocks(record_interval):
    """8 fast peers (c = 1) in stage 1 and 32 slow ones (c = 50) in stage 2: with hysteresis 0.2,
    eq. 7-8 send three fast peers to stage 2 (the fourth would gain 8%) and no slow one, past the 32
    peers its blocks hold, which a compiled loop cannot widen in place; the run returns to the host
    there, widens them (to 48) and goes on, as stepping does. The next call's candidates, drawn
    while a call runs, are drawn again: with records every 20 steps the call that stops had events
    left (the generator goes back to its first), with 15 its one event was its last (the generator
    goes back to the next call's first)."""
    cfg = small("network.stages=2", "network.peers=40", "network.initial_distribution=[8,32]", "report.reference=null",
                "allocation.move_fraction=1.0", "allocation.hysteresis=0.2", f"run.record_interval={record_interval}",
                "report.table_steps=[0]", experiment="paper_table1")
    models = []
    for _ in range(2):
        model = P2PLLMModel(cfg)
        model.peers.cost[:] = np.where(model.peers.stage == 0, 1.0, 50.0)
        model.peers.stage_cost[:] = model.peers.cost[:, None]
        model.engine.invalidate()  # rebuilt from the edited table
        models.append(model)
    fused, stepped = models
    start = fused.environment.blocks.index.shape[1]
    fused.run(40)
    for _ in range(40):
        stepped.step()
    assert (start, fused.environment.blocks.index.shape[1]) == (32, 48)
    assert fused.peers.stage_counts().tolist() == [5, 35]
    recorded = stepped.metrics_frame()  # stepping does not record step 40 when it is no multiple
    pd.testing.assert_frame_equal(fused.metrics_frame().iloc[: len(recorded)], recorded)
    pd.testing.assert_frame_equal(fused.events_frame(), stepped.events_frame())
    assert fused.rng.bit_generator.state == stepped.rng.bit_generator.state  # the same candidates drawn


def test_an_interrupted_compiled_run_leaves_the_generator_where_its_steps_left_it(monkeypatch):
    """The compiled run draws a call's candidates before the previous call's results are read; a
    run interrupted then (here: Ctrl-C while the record of step 50 is taken, the call for steps
    51-75 already drawn and dispatched) must not keep those draws: the generator is where stepping
    to the steps done leaves it, and the run goes on as an uninterrupted one."""
    cfg = small("run.record_interval=25", experiment="paper_table1")
    fused, stepped, whole = P2PLLMModel(cfg), P2PLLMModel(cfg), P2PLLMModel(cfg)
    finish = Recorder.finish

    def interrupted(recorder, state):
        if recorder.model.steps == 50:
            raise KeyboardInterrupt
        finish(recorder, state)

    monkeypatch.setattr(Recorder, "finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fused.run(100)
    monkeypatch.setattr(Recorder, "finish", finish)
    for _ in range(fused.steps):
        stepped.step()
    assert fused.steps == 50
    assert fused.rng.bit_generator.state == stepped.rng.bit_generator.state
    fused.run(50)
    whole.run(100)
    np.testing.assert_array_equal(fused.peers.price, whole.peers.price)
    assert fused.rng.bit_generator.state == whole.rng.bit_generator.state


@pytest.mark.parametrize("overrides", [["ledger.enabled=true"], ["churn.leave_rate=0.01", "churn.join_rate=2"],
                                       ["clients.routing=path"], ["allocation.reload_steps=2"]])
def test_runs_that_need_the_host_between_steps_are_not_compiled_whole(overrides):
    assert not P2PLLMModel(small(*overrides)).fusable


def test_metrics_invariants():
    model = P2PLLMModel(small(experiment="paper_table1"))
    model.run(100)
    everything = model.metrics_frame()
    assert list(everything.columns) == ["step", "scope", "stage", "request_class", *STAGE_METRICS, *CLASS_METRICS]
    metrics = stage_rows(everything)
    assert len(metrics) == 4 * 11 and sorted(metrics["step"].unique()) == list(range(0, 101, 10))
    per_step = metrics.groupby("step")
    assert (per_step["peers"].sum() == 200).all()
    np.testing.assert_allclose(per_step["compute_share"].sum(), 1.0)
    # every request visits every stage once: in total, realised and expected requests agree exactly
    final = metrics[metrics["step"] == 100]
    assert final["requests"].sum() > 0
    assert final["requests"].sum() == pytest.approx(final["expected_requests"].sum(), rel=1e-12)


def test_realised_requests_match_boltzmann_expectation_per_peer():
    """Gumbel-noise routing realises the logit probabilities: per-peer counts over 400 steps of
    64 clients pass a chi-square test against the cumulative expected counts."""
    model = P2PLLMModel(small("allocation.enabled=false", "market.alpha=0.9", "seed=1"))
    model.run(400)
    realised, expected = model.peers.requests, model.peers.expected_requests
    cells = expected > 5
    statistic = np.sum((realised[cells] - expected[cells]) ** 2 / expected[cells])
    dof = cells.sum() - model.peers.n_stages
    assert dof > 5
    assert statistic < dof + 4 * np.sqrt(2 * dof)


def test_monopolist_price_rises_by_eta_times_demand_each_step():
    """A peer alone in its stage is chosen with probability 1: dR/dp = D, so p_t = p_0 + t eta D."""
    model = P2PLLMModel(small("network.peers=5", "network.initial_distribution=[1,2,1,1]",
                              "allocation.enabled=false", "market.eta=0.5", "market.demand=2.0"))
    model.run(30)
    monopolists = model.peers.stage_counts()[model.peers.stage] == 1
    np.testing.assert_allclose(model.peers.price[monopolists], 1.0 + 30 * 0.5 * 2.0, rtol=1e-12)


def test_symmetric_stage_converges_to_logit_bertrand_price():
    """Equal costs, n peers per stage: gradient ascent settles at p* = T / (alpha (1 - 1/n))."""
    model = P2PLLMModel(small("network.cost_range=[10.0,10.0]", "network.peers=20",
                              "network.initial_distribution=[5,5,5,5]", "market.temperature=2.0",
                              "market.alpha=0.4", "clients.count=0"))
    model.run(3000)
    np.testing.assert_allclose(model.peers.price, 2.0 / (0.4 * (1 - 1 / 5)), rtol=1e-9)


def test_datacollector_exposes_stage_and_agent_reporters():
    model = P2PLLMModel(small())
    model.run(30)
    model_vars = model.datacollector.get_model_vars_dataframe()
    assert model_vars["step"].tolist() == [0, 10, 20, 30]
    metrics = stage_rows(model.metrics_frame())
    for metric in STAGE_METRICS:
        for s in range(4):
            column = model_vars[f"{metric}_stage_{s}"].to_numpy()
            expected = metrics[metrics["stage"] == s][metric].astype("Float64")  # null where undefined
            np.testing.assert_array_equal(pd.array(column, dtype="Float64").to_numpy(float, na_value=np.nan),
                                          expected.to_numpy(float, na_value=np.nan))
    agent_vars = model.datacollector.get_agent_vars_dataframe()
    assert list(agent_vars.columns) == list(PEER_COLUMNS)
    last = agent_vars.xs(30, level="Step")
    for agent in model.agents_by_type[PeerAgent]:  # the column-wise collector agrees with the handles
        row = last.loc[agent.unique_id]
        assert (row["stage"], row["cost"], row["price"], row["revenue"]) == (agent.stage, agent.cost, agent.price, agent.revenue)
    peers = model.peers_frame()
    assert {"step", "peer_id", "stage_start", "stage_end", "cost", "price", "alive", "x", "y"} <= set(peers.columns)
    assert len(peers) == 4 * 28


def test_route_returns_one_peer_per_stage():
    model = P2PLLMModel(small())
    length, path = model.route(alpha=0.5)
    assert [model.peers.stage[p] for p in path] == [0, 1, 2, 3]
    assert np.isfinite(length)


def test_run_rejects_negative_steps():
    with pytest.raises(ValueError, match="steps"):
        P2PLLMModel(small()).run(-1)


def test_span_lengths_follow_the_configured_distribution():
    """Lengths are drawn from span_length_probs renormalised over what fits before the last stage;
    a span's cost is its length times a per-stage draw from cost_range."""
    config = small("network.peers=4000", "network.stages=4", "network.initial_distribution=[1000,1000,1000,1000]",
                   "network.span_length_probs=[0.5,0.3,0.2]", "network.cost_range=[2.0,2.0]",
                   "allocation.enabled=false", "clients.routing=path", "clients.count=0")
    peers = P2PLLMModel(config).peers
    length = peers.stage_end - peers.stage_start
    assert peers.stage_end.max() == 4
    np.testing.assert_array_equal(peers.cost, 2.0 * length)
    for start, probs in ((0, [0.5, 0.3, 0.2]), (1, [0.5, 0.3, 0.2]), (2, [0.625, 0.375, 0.0]), (3, [1.0, 0, 0])):
        observed = np.bincount(length[peers.stage_start == start], minlength=4)[1:] / 1000
        np.testing.assert_allclose(observed, probs, atol=0.05)


@settings(max_examples=50)
@given(values=st.lists(st.floats(-1e6, 1e6), max_size=40), n_stages=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_stage_medians_equal_a_pandas_groupby(values, n_stages, seed):
    """The record's per-stage median (one sort) against a pandas groupby, empty stages NaN."""
    values = np.array(values, dtype=float)
    stage = np.random.default_rng(seed).integers(0, n_stages, len(values))
    expected = pd.Series(values).groupby(stage).median().reindex(range(n_stages)).to_numpy()
    np.testing.assert_allclose(stage_medians(values, stage, n_stages), expected, rtol=1e-15, equal_nan=True)


@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8))
def test_nullable_columns_equal_pandas_own(values):
    """metrics.nullable builds what pd.array(values, dtype="Float64") builds: NaN null, inf kept."""
    expected = pd.array(np.asarray(values, dtype=float), dtype="Float64")
    pd.testing.assert_extension_array_equal(nullable(values), expected)


def test_a_run_freezes_the_long_lived_objects_only_while_it_runs():
    """model.run leaves the objects that exist when it starts out of the garbage collector's scans,
    and hands them back when it ends (nested blocks: when the outermost one ends), so that garbage
    among them is collected later."""
    import gc

    from p2pllm_abm.runtime import long_lived_objects_frozen

    before = gc.get_freeze_count()
    with long_lived_objects_frozen():
        assert gc.get_freeze_count() > 0
        with long_lived_objects_frozen():
            pass
        # the inner block does not unfreeze (unfreezing empties the count; frozen objects that are
        # freed leave it, so it may shrink a little)
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0 <= before
    model = P2PLLMModel(small())
    model.run(20)
    assert gc.get_freeze_count() == 0


def test_records_keep_no_device_array_alive():
    """A record's columns are NumPy copies: a view of a JAX array would keep the device buffer and
    its wrappers alive for as long as the record."""
    import jax

    model = P2PLLMModel(small(experiment="paper_table1"))
    model.run(30)
    for _, stage, request_class in model.recorder.records:
        for name, column in {**stage, **request_class}.items():
            base = column
            while getattr(base, "base", None) is not None:
                base = base.base
            assert not isinstance(base, (memoryview, jax.Array)), name
