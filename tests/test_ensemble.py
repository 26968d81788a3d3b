"""Ensembles (p2pllm_abm.ensemble): each member equals its single run; outputs and collection."""

import jax
import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from analysis.collect import collect, first_member
from analysis.routing_figures import network_from_run
from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.cli import experiment_objective, run_experiment
from p2pllm_abm.config import ConfigError
from p2pllm_abm.dynamics import run_ensemble_steps, run_steps
from p2pllm_abm.ensemble import Ensemble, member_labels, stack, unstack
from p2pllm_abm.equilibrium import block_size
from p2pllm_abm.figures import main as redraw
from p2pllm_abm.sweep import run_job

#: members agree with their single runs to this relative tolerance: XLA may contract a batched
#: multiply-add (cumulative revenue += price x served) differently, which moves its last bit
RTOL = 1e-12


def assert_member_equals_single_run(member: P2PLLMModel, labels: dict, config) -> None:
    overrides = {name: value for name, value in labels.items() if name != "replicate"}
    single = P2PLLMModel(config, **overrides, seed=config.seed + labels["replicate"])
    single.run(member.steps)
    pd.testing.assert_frame_equal(member.metrics_frame(), single.metrics_frame(), rtol=RTOL, atol=0)
    pd.testing.assert_frame_equal(member.peers_frame(), single.peers_frame(), rtol=RTOL, atol=0)
    pd.testing.assert_frame_equal(member.events_frame(), single.events_frame(), check_exact=True)
    np.testing.assert_array_equal(member.peers.stage, single.peers.stage)


def test_members_with_different_block_widths_equal_their_single_runs():
    """Two initial distributions whose widest stages need blocks 16 and 32 wide: the ensemble pads
    the first member's blocks to 32; eq. 7-8 reallocation runs every 10 steps."""
    config = load_config("paper_table1", ["network.peers=60", "network.initial_distribution=[15,15,15,15]",
                                          "seed=4", "run.progress=false"])
    ensemble = Ensemble(config, replicates=2, ensemble={"initial_distribution": [[16, 16, 14, 14], [20, 14, 13, 13]]})
    own_widths = [block_size(int(np.bincount(model.peers.stage).max())) for model in ensemble.models]
    assert ensemble.fused and own_widths == [16, 16, 32, 32]
    ensemble.run(60)
    assert all(model.moves > 0 for model in ensemble.models)
    for labels, member in zip(ensemble.labels, ensemble.models):
        assert_member_equals_single_run(member, labels, config)


def test_members_that_are_done_keep_their_state_while_the_others_step():
    """One compiled call where member 0 does 4 steps from step 2 and member 1 does 9 from step 0
    (reallocation every 3 steps: events on different iterations): each member ends where
    run_steps takes it alone, its sample buffers and reallocation turns included."""
    config = load_config("paper_table1", ["network.peers=40", "network.initial_distribution=[10,10,10,10]",
                                          "clients.count=8", "allocation.period=3", "run.record_interval=100",
                                          "run.progress=false"])
    ensemble = Ensemble(config, replicates=2)
    ensemble.models[0].run(2)
    ensemble._share_block_width()
    models, steps = ensemble.models, [4, 9]
    calls = [model.fused_call(n) for model, n in zip(models, steps)]
    state, done, after = run_ensemble_steps(
        stack([model.engine.state for model in models]), stack([model.environment for model in models]),
        np.asarray(steps), np.asarray([model.steps for model in models]), stack([call.reallocation for call in calls]),
        **models[0].engine.tick_options())
    assert done.tolist() == steps
    for model, call, member, turns in zip(models, calls, unstack(state), after):
        alone, alone_done, alone_after, *_ = run_steps(model.engine.state, model.environment, call.steps, model.steps,
                                                       call.reallocation, **model.engine.tick_options())
        assert int(alone_done) == call.steps
        np.testing.assert_array_equal(turns, alone_after)
        for name, mine, theirs in zip(member._fields, member, alone):
            if name == "key":
                mine, theirs = jax.random.key_data(mine), jax.random.key_data(theirs)
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=RTOL, atol=0, err_msg=name)


def test_a_parameter_grid_times_replicates_equals_its_single_runs():
    config = load_config("paper_table1", ["network.peers=40", "network.initial_distribution=[10,10,10,10]",
                                          "run.record_interval=20", "run.progress=false"])
    ensemble = Ensemble(config, replicates=2, ensemble={"alpha": [0.3, 0.7], "market.eta": [2.0]})
    assert ensemble.labels[1:3] == [{"market.alpha": 0.3, "market.eta": 2.0, "replicate": 1},
                                    {"market.alpha": 0.7, "market.eta": 2.0, "replicate": 0}]
    ensemble.run(40)
    ensemble.metrics_frame()
    for labels, member in zip(ensemble.labels, ensemble.models):
        assert member.config.market.alpha == labels["market.alpha"]
        assert_member_equals_single_run(member, labels, config)
    ensemble.run(20)  # the frame is built as records come: read once before these, once after
    frame = ensemble.metrics_frame()
    members = [model.metrics_frame() for model in ensemble.models]
    expected = pd.concat([pd.concat([pd.DataFrame([labels] * len(rows)), rows], axis=1)
                          for labels, rows in zip(ensemble.labels, members)], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    assert list(frame.columns[:3]) == ["market.alpha", "market.eta", "replicate"]


def test_members_with_host_phases_run_one_after_another_with_the_same_outputs():
    config = load_config("paper_table1", ["network.peers=40", "network.initial_distribution=[10,10,10,10]",
                                          "churn.leave_rate=0.02", "churn.join_rate=1.0", "run.record_interval=10",
                                          "run.progress=false"])
    ensemble = Ensemble(config, replicates=2)
    assert not ensemble.fused
    ensemble.run(30)
    for labels, member in zip(ensemble.labels, ensemble.models):
        assert_member_equals_single_run(member, labels, config)


def test_parameters_that_change_the_compiled_shapes_are_refused():
    config = load_config("paper_table1", ["run.progress=false"])
    with pytest.raises(ConfigError, match=r"run.ensemble = \{'network.peers': 100, .*\} is invalid: allowed parameters"):
        Ensemble(config, ensemble={"peers": [200, 100], "initial_distribution": [None]})
    with pytest.raises(ConfigError, match="run.replicates = 0 is invalid"):
        Ensemble(config, replicates=0)


@pytest.mark.parametrize("ensemble, allowed", [
    ("{alpah:[0.3]}", "did you mean 'alpha'"), ("{alpha:[]}", "a non-empty list"), ("{alpha:[1.5]}", "0 <= alpha <= 1"),
    ("{seed:[1,2]}", "not seed"), ("3", "a dict of parameter -> list of values")])
def test_bad_ensembles_are_refused_naming_the_field(ensemble, allowed):
    with pytest.raises(ConfigError, match=allowed):
        load_config("paper_table1", [f"run.ensemble={ensemble}"])


def test_an_ensemble_job_is_collected_like_its_separate_runs(tmp_path):
    """One job with run.replicates=2 and run.ensemble over alpha against four single-run jobs (the
    Hydra multirun's): the same rows, figures and steps."""
    overrides = ["experiment=paper_28", "run.steps=40", "run.record_interval=20", "report.table_steps=[0,20,40]",
                 "run.progress=false", "run.figures=false"]

    def job(directory, extra):
        (directory / ".hydra").mkdir(parents=True)
        (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(extra))
        config = OmegaConf.structured(load_config("paper_28", [*overrides[1:], *extra]))
        run_job(config, directory, experiment_objective, multirun=True)

    job(tmp_path / "ensemble" / "job", ["run.replicates=2", "run.ensemble={alpha:[0.3,0.7]}"])
    for alpha, seed in [(a, s) for a in (0.3, 0.7) for s in (0, 1)]:
        job(tmp_path / "singles" / f"a{alpha}_s{seed}", [f"market.alpha={alpha}", f"seed={seed}"])
    ensemble, singles = collect(tmp_path / "ensemble"), collect(tmp_path / "singles")
    assert ensemble.swept == ["market.alpha", "replicate"] and not ensemble.problems
    assert list(ensemble.runs["replicate"]) == [0, 1, 0, 1] and list(ensemble.runs["seed"]) == [0, 1, 0, 1]
    figures = ["market.alpha", "seed", "final_mean_price", "final_nash_gap", "converged_step", "allocation_efficient"]
    pd.testing.assert_frame_equal(ensemble.runs[figures], singles.runs[figures].sort_values(["market.alpha", "seed"])
                                  .reset_index(drop=True), rtol=RTOL)
    assert (ensemble.runs["status"] == "complete").all()
    steps = ensemble.steps.sort_values(["market.alpha", "replicate", "step", "stage"], kind="stable")
    assert len(steps) == 4 * 3 * 4  # members x records x stages
    job_dir = tmp_path / "ensemble" / "job"
    single_dir = tmp_path / "singles" / "a0.3_s0"
    pd.testing.assert_frame_equal(first_member(pd.read_parquet(job_dir / "peers.parquet")).reset_index(drop=True),
                                  pd.read_parquet(single_dir / "peers.parquet"), rtol=RTOL)
    with pytest.raises(ValueError, match="holds an ensemble job \\(4 members\\)"):
        network_from_run(job_dir)
    redraw([str(job_dir)])  # python -m p2pllm_abm.figures: the members' means, one line style per alpha
    assert (job_dir / "mean_price_per_stage.png").stat().st_size > 10_000


def test_member_labels_put_replicates_innermost():
    config = load_config("paper_table1", ["run.replicates=2", "run.ensemble={alpha:[0.2,0.4]}"])
    assert member_labels(config) == [{"market.alpha": 0.2, "replicate": 0}, {"market.alpha": 0.2, "replicate": 1},
                                     {"market.alpha": 0.4, "replicate": 0}, {"market.alpha": 0.4, "replicate": 1}]


def test_an_ensemble_of_ledger_runs_writes_each_members_journal(tmp_path):
    config = load_config("paper_28", ["ledger.enabled=true", "run.steps=20", "run.record_interval=10",
                                      "report.table_steps=[0,10,20]", "run.replicates=2", "run.progress=false",
                                      "run.figures=false"])
    ensemble = run_experiment(config, tmp_path, report=False)
    journal = pd.read_parquet(tmp_path / "ledger.parquet")
    for labels, member in zip(ensemble.labels, ensemble.models):
        mine = journal[journal["replicate"] == labels["replicate"]].drop(columns="replicate").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, member.ledger.ledger.journal_frame(), check_exact=True)
