"""The "observed" price rule: peers learn from their own realised revenue at perturbed prices."""

import jax.numpy as jnp
import numpy as np
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.config import ConfigError
from p2pllm_abm.dynamics import posted_prices
from p2pllm_abm.equilibrium import solve_equilibrium

LEARNING = ["allocation.enabled=false", "network.cost_range=[1.0,5.0]", "clients.count=512",
            "market.update_rule=observed", "market.eta=0.1", "market.exploration=0.3", "market.baseline_rate=0.2",
            "run.record_interval=100", "report.table_steps=[0]"]


def test_observed_rule_learns_the_equilibrium_without_choice_probabilities():
    model = P2PLLMModel(load_config("paper_28", overrides=LEARNING))
    env = model.environment
    target = solve_equilibrium("newton", np.full(28, 2.0), env.cost, env.stage, env.alive, model.market_params, 4)
    start = float(np.mean(np.abs(model.peers.price - np.asarray(target.price)) / np.asarray(target.price)))
    model.run(3000)
    distance = np.abs(model.peers.price - np.asarray(target.price)) / np.asarray(target.price)
    assert start > 0.4 and np.mean(distance) < 0.08
    rows = model.metrics_frame()
    assert rows[(rows["scope"] == "stage") & (rows["step"] == 3000)]["relative_nash_gap"].max() < 0.05


def test_requests_see_each_peer_price_moved_by_plus_or_minus_delta():
    model = P2PLLMModel(load_config("paper_28", overrides=LEARNING))
    state = model.engine.state._replace(price=jnp.full(28, 3.0))
    posted = np.asarray(posted_prices(state, model.environment, "observed"))
    np.testing.assert_allclose(np.abs(posted - 3.0), 0.3, rtol=1e-12)
    assert 0 < np.sum(posted > 3.0) < 28
    assert np.array_equal(np.asarray(posted_prices(state, model.environment, "gradient")), np.full(28, 3.0))


@pytest.mark.parametrize("overrides, field", [
    (["clients.count=0"], "clients.count"),
    (["ledger.enabled=true"], "ledger.enabled"),
    (["market.exploration=0"], "market.exploration"),
    (["market.baseline_rate=1.5"], "market.baseline_rate"),
])
def test_observed_rule_refuses_what_it_cannot_learn_from(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config("paper_28", overrides=[*LEARNING, *overrides])


def test_learning_experiment_writes_its_table_and_figure(tmp_path):
    from experiments.learning import main

    main(["seeds=[0]", "steps=300", "etas=[0.1]", f"out_dir={tmp_path}"])
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "learning.parquet")
    assert set(frame["rule"]) == {"gradient", "observed"}
    last = frame[frame["step"] == 300].set_index("rule")["distance"]
    assert last["gradient"] < 1e-3 < last["observed"]  # eq. 5 is nearly there; the learner is still noisy
    assert (tmp_path / "learning_vs_eq5.png").stat().st_size > 0
