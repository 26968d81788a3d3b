"""Deterrence for the configured protocol: the closed form against a Monte-Carlo hop process and the
one-hop threshold, the best response against brute force, the patient cheater's warm-up, and the
threshold against the full simulation (cheaters earn more at p*/2 and less at 2p*)."""

import numpy as np
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.behaviours import CODE
from p2pllm_abm.config import VerificationConfig
from p2pllm_abm.deterrence import Protocol, best_response_rate, best_response_rates, cheater_profit, deviation_gain, \
    honest_profit, sampling_threshold
from p2pllm_abm.verification import Hops, Verifier, minimal_sampling_rate

PROTOCOL = Protocol(price=2.0, cost=0.8, slash=10.0, sla_penalty=1.0, detection=0.01, warmup_detection=0.95,
                    warmup=16.0, horizon=300.0, exits=True)


def simulated_profit(q: float, p: Protocol, q_warmup: float, cheaters: int, rng: np.random.Generator):
    """Mean and standard error of a cheater's profit, hop by hop: cheat with its rate, caught with the
    phase's detection (refund, SLA penalty, slash, and out when ``exits``)."""
    hops = int(p.horizon)
    warm = np.arange(hops) < p.warmup
    rate, detect = np.where(warm, q_warmup, q), np.where(warm, p.warmup_detection, p.detection)
    cheat = rng.random((cheaters, hops)) < rate
    caught = cheat & (rng.random((cheaters, hops)) < detect)
    alive = np.ones((cheaters, hops), dtype=bool)
    if p.exits:  # hops after the first catch are not served
        alive = np.cumsum(caught, axis=1) - caught == 0
    value = np.where(cheat, p.price, p.price - p.cost) - caught * (p.price + p.sla_penalty + p.slash)
    profit = (value * alive).sum(axis=1)
    return profit.mean(), profit.std() / np.sqrt(cheaters)


@pytest.mark.parametrize("q, q_warmup, exits", [(0.3, 0.0, True), (1.0, 0.0, True), (0.5, 0.5, True),
                                                (0.7, 0.0, False)])
def test_expected_profit_matches_a_hop_by_hop_simulation(q, q_warmup, exits):
    p = PROTOCOL._replace(exits=exits)
    mean, error = simulated_profit(q, p, q_warmup, 40_000, np.random.default_rng(1))
    assert float(cheater_profit(q, p, q_warmup)) == pytest.approx(mean, abs=4 * error)
    assert float(cheater_profit(0.0, p)) == pytest.approx(float(honest_profit(p)))


def test_one_hop_without_exit_or_penalty_gives_the_papers_threshold():
    """With one hop, no warm-up, no SLA penalty and no exit the gain is q (c - d (price + S)), so the
    threshold is the one-hop p* = c / ((1 - FN)(price + S)) at any rate q."""
    fn = 0.05
    one_hop = PROTOCOL._replace(horizon=1.0, warmup=0.0, sla_penalty=0.0, exits=False)
    at = lambda p: one_hop._replace(detection=p * (1 - fn))
    expected = minimal_sampling_rate(one_hop.cost, one_hop.price, one_hop.slash, fn)
    for q in (0.2, 1.0, None):
        assert sampling_threshold(at, q) == pytest.approx(expected, abs=1e-8)


def test_the_gain_changes_sign_at_the_threshold_and_the_best_response_is_stricter():
    at = lambda p: PROTOCOL._replace(detection=p * 0.95)
    for q in (0.25, 1.0):
        threshold = sampling_threshold(at, q)
        assert float(deviation_gain(q, at(threshold * 0.999))) > 0 > float(deviation_gain(q, at(threshold * 1.001)))
        assert sampling_threshold(at) >= threshold - 1e-9
    assert sampling_threshold(lambda p: PROTOCOL._replace(cost=0.0, detection=p)) == 0.0  # nothing to save
    # no stake at risk, half the cheats missed, little to lose by leaving: even p = 1 does not deter
    assert sampling_threshold(lambda p: PROTOCOL._replace(slash=0.0, sla_penalty=0.0, detection=p * 0.5, warmup=0.0,
                                                          horizon=5.0, cost=1.9)) is None
    # a patient cheater whose whole run is the warm-up never cheats
    assert sampling_threshold(lambda p: PROTOCOL._replace(detection=p, horizon=10.0)) == 0.0


@pytest.mark.parametrize("detection, horizon", [(0.001, 300.0), (0.004, 300.0), (0.02, 50.0), (0.05, 2000.0)])
def test_best_response_rate_against_brute_force(detection, horizon):
    p = PROTOCOL._replace(detection=detection, horizon=horizon)
    grid = np.linspace(0.0, 1.0, 20_001)
    gains = np.array([float(deviation_gain(q, p)) for q in grid[::50]])  # coarse scan, then a fine one
    k = int(np.argmax(gains)) * 50
    fine = grid[max(k - 100, 0): k + 101]
    fine_gains = np.array([float(deviation_gain(q, p)) for q in fine])
    rate, gain = best_response_rate(p)
    best = max(float(fine_gains.max()), 0.0)
    assert gain == pytest.approx(best, rel=1e-6, abs=1e-9)
    if best > 0:
        assert rate == pytest.approx(fine[int(np.argmax(fine_gains))], abs=1e-3)


def test_the_best_response_is_the_best_rate_of_a_hop_by_hop_simulation():
    """Brute force without the closed form: simulate cheaters hop by hop at rates 0, 0.05, ..., 1; the
    simulated profit at the best response rate is within noise of the best simulated one (an interior
    best response here)."""
    p = PROTOCOL._replace(detection=0.01, warmup=0.0, cost=1.5)
    rate, _ = best_response_rate(p)
    assert 0.3 < rate < 0.8
    rng = np.random.default_rng(3)
    simulated = {q: simulated_profit(q, p, 0.0, 20_000, rng) for q in [*np.linspace(0, 1, 21), rate]}
    best_q = max(simulated, key=lambda q: simulated[q][0])
    (at_rate, error_rate), (best, error_best) = simulated[rate], simulated[best_q]
    assert at_rate >= best - 4 * np.hypot(error_rate, error_best)
    assert at_rate > simulated[0.0][0] and at_rate > simulated[1.0][0]


def test_best_response_rates_of_many_peers_at_once_equal_each_ones():
    cases = [(0.001, 300.0), (0.004, 300.0), (0.02, 50.0), (0.05, 2000.0), (0.0005, 20.0)]
    protocols = [PROTOCOL._replace(detection=d, warmup_detection=d, warmup=0.0, horizon=h) for d, h in cases]
    batch = Protocol(*(np.array([getattr(p, name) for p in protocols]) for name in Protocol._fields))
    rates, gains = best_response_rates(batch)
    one_by_one = [best_response_rate(p) for p in protocols]
    assert rates == pytest.approx([r for r, _ in one_by_one], abs=1e-12)
    assert gains == pytest.approx([g for _, g in one_by_one], abs=1e-9)
    assert any(0 < r < 1 for r in rates)  # an interior best response among them


def test_a_patient_peer_serves_its_warm_up_honestly():
    config = VerificationConfig(mechanism="spot_check", warmup=16, probability=0.0)
    verifier = Verifier(config, cheat_probability=1.0, offline_probability=0.0, rng=np.random.default_rng(0))
    behaviour, owner = np.array([CODE["patient"], CODE["lazy"]], dtype=np.int8), np.arange(2)
    cheated = []
    for _ in range(6):  # five hops of each peer per step
        hops = Hops(request=np.arange(10), position=np.zeros(10, int), peer=np.repeat([0, 1], 5),
                    stage=np.zeros(10, int), cost=np.full(10, 5.0))
        verdict = verifier.check(hops, behaviour, owner, np.full(2, 10**6), np.zeros(2, int), 10, 1)
        cheated.append(verdict.cheated.reshape(2, 5).all(axis=1))
    cheated = np.array(cheated)
    assert not cheated[:4, 0].any() and cheated[4:, 0].all()  # 0, 5, 10, 15 hops served: still warming up
    assert cheated[:, 1].all()  # the lazy peer cheats from its first hop


def run_patient(probability: float, seed: int) -> dict:
    steps = 200
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", f"run.steps={steps}", "report.reference=null", "verification=spot_check",
        f"verification.probability={probability}", "adversary.behaviour=patient", "adversary.fraction=0.2",
        "adversary.cheat_probability=1.0", "network.cost_range=[20,20]", "verification.compute_price=0.05",
        f"seed={seed}"]))
    model.run(steps)
    return model.security.summary()


@pytest.mark.slow
def test_the_threshold_separates_profitable_from_deterred_cheating_in_the_simulation():
    """A patient cheater at half the run's threshold earns more than its matched honest peers, at
    twice it less; no honest peer is slashed (the referee is on)."""
    threshold = run_patient(0.02, seed=0)["deterrence_threshold_at_q"]
    assert 0.001 < threshold < 0.02
    for factor, cheaters_win in ((0.5, True), (2.0, False)):
        for seed in (0, 1):
            block = run_patient(factor * threshold, seed)
            assert block["deterrence_threshold_at_q"] == pytest.approx(threshold, rel=0.15)  # the run's own
            assert (block["cheater_profit_per_peer"] > block["honest_profit_per_peer"]) == cheaters_win
            assert block["slashed_honest"] == 0 and block["wrongly_slashed"] == 0


def run_adaptive(probability: float) -> dict:
    steps = 200
    model = P2PLLMModel(load_config("paper_table1", overrides=[
        "ledger.enabled=true", f"run.steps={steps}", "report.reference=null", "verification=spot_check",
        f"verification.probability={probability}", "adversary.behaviour=adaptive", "adversary.fraction=0.2",
        "network.cost_range=[20,20]", "verification.compute_price=0.05", "seed=0"]))
    model.run(steps)
    return model.security.summary()


@pytest.mark.slow
def test_adaptive_cheaters_cheat_below_the_threshold_and_mostly_stop_above_it():
    """Adaptive peers learn the check rate from the checks they see: at a third of the threshold most
    of them cheat and they out-earn their matched honest peers; at ten times it most never cheat (some
    still do near the run's end, when little future income is at stake) and those that cheat earn
    less. No honest peer is slashed."""
    below = run_adaptive(0.002)
    threshold = below["deterrence_threshold"]
    assert threshold / 4 < 0.002 < threshold / 3 and threshold < 0.02
    above = run_adaptive(10 * threshold)
    assert below["cheating_peers"] > 0.8 * below["adversarial_peers"]
    assert below["cheater_profit_per_peer"] > below["honest_profit_per_peer"]
    assert above["cheating_peers"] < 0.5 * above["adversarial_peers"] and above["cheats"] < below["cheats"] / 10
    assert below["slashed_honest"] == above["slashed_honest"] == 0


def test_a_counterfactual_run_draws_the_same_adversaries_and_lets_them_serve_honestly():
    """The paired baseline of a deviation: the same seed and draws, the designated peers honest."""
    def run(counterfactual: bool):
        model = P2PLLMModel(load_config("paper_table1", overrides=[
            "ledger.enabled=true", "run.steps=60", "report.reference=null", "verification=spot_check",
            "adversary.behaviour=mix", "adversary.mix.lazy=1", "adversary.mix.lazy_verifier=1", "adversary.fraction=0.3",
            f"adversary.counterfactual={str(counterfactual).lower()}", "seed=5"]))
        model.run(60)
        return model.security

    factual, baseline = run(False), run(True)
    assert np.array_equal(baseline.behaviours.designated, factual.behaviours.adversarial)
    assert not baseline.behaviours.adversarial.any()
    block = baseline.summary()
    assert block["cheats"] == 0 and block["skipped_checks"] == 0 and block["slashed_honest"] == 0
    assert "designated_profit_per_peer" in block and "cheater_profit_per_peer" not in block
    assert factual.summary()["cheats"] > 0
