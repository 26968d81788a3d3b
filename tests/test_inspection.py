"""The inspection game with strategic verifiers: the mixed equilibrium in closed form against repeated
play, the forced-error remedy, and lazy verifiers in the verification mechanism and the model."""

import numpy as np
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.behaviours import CODE
from p2pllm_abm.config import VerificationConfig
from p2pllm_abm.inspection import InspectionGame, mixed_equilibrium, simulate
from p2pllm_abm.verification import Hops, Verifier

GAMES = [InspectionGame(saving=0.5, fine=5.0, inspection_cost=0.3, reward=2.0, fn=0.05),
         InspectionGame(saving=0.2, fine=4.0, inspection_cost=0.5, reward=1.5),
         InspectionGame(saving=0.5, fine=5.0, inspection_cost=0.3, reward=2.0, fn=0.05, forced_error_rate=0.05,
                        jackpot=2.0, exposure_penalty=2.0)]


@pytest.mark.parametrize("game", GAMES)
def test_repeated_play_reaches_the_mixed_equilibrium_within_ten_percent(game):
    x, y = mixed_equilibrium(game)
    assert 0 < x < 1 and 0 < y < 1
    # each side indifferent at the other's rate
    assert game.saving == pytest.approx((1 - game.fn) * game.fine * y)
    assert x * (1 - game.fn) * game.reward + game.forced_error_rate * (game.jackpot + game.exposure_penalty) == \
        pytest.approx(game.inspection_cost)
    play = simulate(game, rounds=40_000, burn_in=4_000)
    assert play.cheat_rate == pytest.approx(x, rel=0.1) and play.inspection_rate == pytest.approx(y, rel=0.1)


def test_enough_forced_errors_make_inspecting_dominant_and_end_cheating():
    base = GAMES[0]
    phi = base.inspection_cost / (4.0 + 4.0)  # the remedy's threshold k / (J + P)
    for rate, inspects in ((phi * 0.5, False), (phi * 1.01, True)):
        game = base._replace(forced_error_rate=rate, jackpot=4.0, exposure_penalty=4.0)
        x, y = mixed_equilibrium(game)
        assert (y == 1.0) == inspects
    x, y = mixed_equilibrium(base._replace(forced_error_rate=phi * 1.01, jackpot=4.0, exposure_penalty=4.0))
    play = simulate(base._replace(forced_error_rate=phi * 1.01, jackpot=4.0, exposure_penalty=4.0), rounds=5_000,
                    burn_in=500)
    assert x == 0.0 and play.cheat_rate < 0.01 and play.inspection_rate > 0.99


def test_lazy_verifiers_cut_spot_check_detection_by_their_stake_share_times_their_skip_rate():
    """A cheated hop is caught with probability p (1 - FN)(1 - beta s): beta the lazy verifiers' stake
    share (validators are drawn by stake), s their skip probability."""
    n, requests, p, skip = 20, 40_000, 0.3, 0.6
    behaviour = np.full(n, CODE["honest"], dtype=np.int8)
    behaviour[0] = CODE["lazy"]
    behaviour[10:15] = CODE["lazy_verifier"]  # 5 of 20 equal stakes: beta = 0.25
    verifier = Verifier(VerificationConfig(mechanism="spot_check", warmup=0, probability=p), cheat_probability=1.0,
                        offline_probability=0.0, rng=np.random.default_rng(0), skip_probability=skip)
    hops = Hops(request=np.arange(requests), position=np.zeros(requests, int), peer=np.zeros(requests, int),
                stage=np.zeros(requests, int), cost=np.full(requests, 10.0))
    verdict = verifier.check(hops, behaviour, np.arange(n), np.full(n, 10**6), np.zeros(n, int), requests, 1)
    expected = p * (1 - verifier.fn) * (1 - 0.25 * skip)
    assert verdict.caught.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected / requests))
    audit = verdict.audit
    assert np.all(np.isin(behaviour[audit.validator[audit.skipped]], [CODE["lazy_verifier"]]))
    assert verdict.fee_ms.sum() > verdict.verification_ms.sum()  # skipped checks are paid, not re-executed


def test_forced_errors_expose_lazy_verifiers_and_never_slash_honest_ones():
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", "run.steps=100", "report.reference=null", "verification=spot_check",
        "adversary.behaviour=mix", "adversary.mix.lazy=1", "adversary.mix.lazy_verifier=1", "adversary.fraction=0.4",
        "verification.forced_error_rate=0.05", "verification.jackpot=1.0"]))
    model.run(100)
    block = model.security.summary()
    assert block["skipped_checks"] > 0 and block["forced_errors"] > 0 and block["exposed_verifiers"] > 0
    assert block["jackpots_paid"] > 0 and block["jackpots_refused"] == 0
    assert block["slashed_honest"] == 0 and block["wrongly_slashed"] == 0
    exposed = np.flatnonzero(model.security.exposed > 0)
    assert np.all(model.security.behaviours.peer[exposed] == CODE["lazy_verifier"])
    assert np.all(model.security.slashed_at[exposed] >= 0)
