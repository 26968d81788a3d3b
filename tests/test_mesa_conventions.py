"""The Mesa way of building and batch-running the model: keyword parameters named after the
config's fields, Mesa's ``seed=`` / ``rng=``, and ``mesa.batch_run`` reading the DataCollector."""

from __future__ import annotations

import mesa
import numpy as np
import pandas as pd
import pytest

from p2pllm_abm import P2PLLMModel
from p2pllm_abm.config import Config, ConfigError, parameter_names, with_parameters

SMALL = {"peers": 40, "stages": 2, "count": 8}  # clients.count


def test_keywords_set_the_fields_they_name():
    """``alpha=`` is ``market.alpha``, ``peers=`` ``network.peers``, ...; a dotted name sets any field;
    the run equals one built from the same Config."""
    model = P2PLLMModel(alpha=0.3, eta=2.0, temperature=1.5, update_rule="best_response", seed=4,
                        **{"churn.join_rate": 0.5}, **SMALL)
    cfg = model.config
    assert (cfg.market.alpha, cfg.market.eta, cfg.market.temperature, cfg.market.update_rule) == (
        0.3, 2.0, 1.5, "best_response")
    assert (cfg.network.peers, cfg.network.stages, cfg.clients.count, cfg.seed, cfg.churn.join_rate) == (
        40, 2, 8, 4, 0.5)
    assert cfg.run.record_interval == 1  # built the Mesa way: a record every step, as batch_run reads
    same = P2PLLMModel(with_parameters(Config(), {"market.alpha": 0.3, "market.eta": 2.0, "market.temperature": 1.5,
                                                  "market.update_rule": "best_response", "seed": 4,
                                                  "churn.join_rate": 0.5, "network.peers": 40, "network.stages": 2,
                                                  "clients.count": 8, "run.record_interval": 1}))
    for one in (model, same):
        one.run(6)
    np.testing.assert_array_equal(model.peers.price, same.peers.price)


def test_every_unique_field_name_is_a_keyword():
    names = parameter_names()
    assert names["alpha"] == "market.alpha" and names["peers"] == "network.peers" and names["seed"] == "seed"
    assert "enabled" not in names  # allocation.enabled and ledger.enabled: dotted names only
    assert all(name == dotted.rpartition(".")[2] for name, dotted in names.items())


def test_rng_is_seed_and_a_missing_seed_draws_one():
    by_rng, by_seed = P2PLLMModel(rng=7, **SMALL), P2PLLMModel(seed=7, **SMALL)
    assert by_rng.config.seed == by_seed.config.seed == 7
    np.testing.assert_array_equal(by_rng.peers.cost, by_seed.peers.cost)
    drawn = [P2PLLMModel(**SMALL).config.seed for _ in range(3)]
    assert len(set(drawn)) == 3  # fresh entropy each time, as Mesa models do
    again = P2PLLMModel(seed=drawn[0], **SMALL)  # and the drawn seed repeats the run
    np.testing.assert_array_equal(again.peers.cost, P2PLLMModel(seed=drawn[0], **SMALL).peers.cost)


@pytest.mark.parametrize(("parameters", "field", "says"), [
    ({"alhpa": 0.3}, "alhpa", "did you mean 'alpha'"),
    ({"enabled": True}, "enabled", "['allocation.enabled', 'ledger.enabled']"),
    ({"alpha": 1.5}, "market.alpha", "0 <= alpha <= 1"),
    ({"peers": "many"}, "network.peers", "a value of the field's type"),
    ({"rng": 1.5}, "rng", "an int seed"),
    ({"rng": 1, "seed": 2}, "rng", "not both"),
])
def test_bad_keywords_name_the_field(parameters, field, says):
    with pytest.raises(ConfigError) as error:
        P2PLLMModel(**parameters)
    assert error.value.field == field and says in str(error.value)


def test_numpy_values_are_accepted():
    model = P2PLLMModel(alpha=np.linspace(0.2, 0.4, 3)[1], peers=np.int64(40), stages=2, seed=0)
    assert model.config.market.alpha == pytest.approx(0.3) and model.config.network.peers == 40


def test_batch_run_gives_each_run_its_own_records():
    """Each batch_run row holds its run's record at that step: the same numbers as a model run on its
    own with the same keywords; seeds give distinct replicates."""
    parameters = {"alpha": [0.3, 0.6], "seed": range(2), **SMALL}
    rows = pd.DataFrame(mesa.batch_run(P2PLLMModel, parameters=parameters, max_steps=12, data_collection_period=4,
                                       number_processes=1, display_progress=False))
    assert sorted(rows["Step"].unique()) == [0, 4, 8, 12]
    assert (rows["Step"] == rows["step"]).all() and (rows["seed"] == rows["seed"].astype(int)).all()
    for (alpha, seed), run in rows.groupby(["alpha", "seed"]):
        alone = P2PLLMModel(alpha=alpha, seed=seed, **SMALL)
        for _ in range(13):
            alone.step()
        expected = alone.datacollector.get_model_vars_dataframe().set_index("step")
        got = run.drop_duplicates("Step").set_index("Step")
        np.testing.assert_array_equal(got["mean_price_stage_0"], expected.loc[got.index, "mean_price_stage_0"])
    finals = rows[rows["Step"] == 12].drop_duplicates("RunId")["mean_price_stage_0"]
    assert finals.nunique() == 4


def test_batch_run_iterations_without_a_seed_differ_and_with_one_repeat():
    common = dict(max_steps=3, number_processes=1, display_progress=False, iterations=2)
    unseeded = pd.DataFrame(mesa.batch_run(P2PLLMModel, parameters=SMALL, **common))
    seeded = pd.DataFrame(mesa.batch_run(P2PLLMModel, parameters={**SMALL, "seed": 5}, **common))
    assert unseeded.groupby("iteration")["seed"].first().nunique() == 2
    assert seeded.groupby("iteration")["mean_price_stage_0"].first().nunique() == 1


def test_sparse_records_read_by_step():
    """With ``record_interval=5`` the collector keeps step k's record at index k (None between), so
    batch_run's lookup by step finds the right record, and the frame holds the recorded steps."""
    model = P2PLLMModel(record_interval=5, seed=1, **SMALL)
    for _ in range(10):
        model.step()
    steps = model.datacollector.model_vars["step"]
    assert steps[0] == 0 and steps[5] == 5 and steps[10] == 10 and steps[3] is None
    frame = model.datacollector.get_model_vars_dataframe()
    assert frame["step"].tolist() == [0, 5, 10] and frame.index.tolist() == [0, 5, 10]


def test_keywords_next_to_a_config_override_it():
    from p2pllm_abm import load_config

    cfg = load_config("paper_28", overrides=["seed=3"])
    model = P2PLLMModel(cfg, alpha=0.2)
    assert model.config.market.alpha == 0.2
    assert (model.config.seed, model.config.run.record_interval) == (3, cfg.run.record_interval)  # kept


def test_step_records_hold_only_the_records():
    """A long run recorded every 50 steps keeps one entry per record (not one per step), yet reads
    by step: negative steps count from the last, slices work."""
    model = P2PLLMModel(record_interval=50, seed=2, **SMALL)
    model.run(500)
    steps = model.datacollector.model_vars["step"]
    assert len(steps.by_step) == 11 and len(steps) == 501
    assert steps[500] == 500 and steps[-1] == 500 and steps[250] == 250 and steps[251] is None
    assert steps[48:52] == [None, None, 50, None]
    with pytest.raises(IndexError):
        steps[501]


def test_agent_records_read_as_mesas_tuples_and_frame():
    """The collector keeps each record's peer columns (PeerRecords), not Mesa's tuples: read as a
    sequence they are Mesa's ``(step, agent_id, *values)`` tuples of that step, and the agent-variables
    frame equals the one Mesa builds from those tuples (its dtypes included), with peers that left."""
    model = P2PLLMModel(record_interval=5, seed=4, join_rate=0.5, leave_rate=0.05, **SMALL)
    model.run(15)
    assert model.churn_counts["leave"] > 0 and model.churn_counts["join"] > 0
    collector = model.datacollector
    records = collector._agent_records
    assert sorted(records) == [0, 5, 10, 15]
    last = records[15]
    assert len(last) == int(model.peers.present.sum())
    assert [last[k] for k in range(len(last))] == list(last) and last[-1] == list(last)[-1] and last[1:3] == list(last)[1:3]
    first = next(iter(last))
    peer = model.peers.present.nonzero()[0][0]
    assert first[:2] == (15, int(model.peer_unique_ids[peer])) and first[2] == int(model.peers.peer_id[peer])
    rows = [row for step in records for row in records[step]]
    expected = pd.DataFrame.from_records(rows, columns=["Step", "AgentID", *collector.agent_reporters],
                                         index=["Step", "AgentID"])
    pd.testing.assert_frame_equal(collector.get_agent_vars_dataframe(), expected, check_exact=True)
