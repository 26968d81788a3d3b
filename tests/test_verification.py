"""Verification: closed forms against the mechanisms' frequencies, invariants of every verdict,
commitments, and the security targets in the model."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pllm_abm import ConfigError, P2PLLMModel, load_config
from p2pllm_abm.agents import PeerAgent
from p2pllm_abm.behaviours import CODE, COLLUDERS, assign
from p2pllm_abm.config import MECHANISMS, AdversaryConfig, VerificationConfig
from p2pllm_abm.verification import Hops, Verifier, detection_probability, merkle_roots, minimal_sampling_rate

STAGES = 4


def hops_of(requests: int, peer_of: np.ndarray) -> Hops:
    """``requests`` paths through stages 0..3; ``peer_of[request, stage]`` serves each hop."""
    request = np.repeat(np.arange(requests), STAGES)
    position = np.tile(np.arange(STAGES), requests)
    peer = peer_of[request, position]
    return Hops(request=request, position=position, peer=peer, stage=position, cost=np.full(len(peer), 10.0))


def verifier(mechanism: str, q: float = 1.0, seed: int = 0, **options) -> Verifier:
    config = VerificationConfig(mechanism=mechanism, warmup=0, **options)
    return Verifier(config, cheat_probability=q, offline_probability=0.5, rng=np.random.default_rng(seed))


def network(n_per_stage: int, behaviour_of):
    """Peers ``stage * n_per_stage + j``; ``behaviour_of(stage, j)`` names each one's behaviour."""
    n = STAGES * n_per_stage
    behaviour = np.array([CODE[behaviour_of(i // n_per_stage, i % n_per_stage)] for i in range(n)], dtype=np.int8)
    owner = np.where(behaviour == CODE["colluding"], COLLUDERS, np.arange(n))
    return behaviour, owner, np.full(n, 64 * 10**6), np.arange(n) // n_per_stage


@pytest.mark.parametrize("mechanism, options", [
    ("spot_check", {"probability": 0.2}),
    ("optimistic", {"probability": 0.1, "watchers": 3}),
    ("dispute_game", {"probability": 0.1, "watchers": 3}),
    ("redundancy", {"replicas": 3}),
])
def test_detection_frequency_matches_the_closed_form(mechanism, options):
    behaviour, owner, stake, stage = network(10, lambda s, j: "lazy" if j == 0 else "honest")
    v = verifier(mechanism, **options)
    requests = 20_000
    peer_of = np.tile(np.arange(STAGES) * 10, (requests, 1))  # every request through the lazy peers
    verdict = v.check(hops_of(requests, peer_of), behaviour, owner, stake, stage, requests, STAGES)
    expected = detection_probability(mechanism, v.config, v.fn)
    rate = verdict.caught[verdict.cheated].mean()
    assert rate == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / verdict.cheated.sum()) + 1e-12)


def test_colluders_pass_redundancy_about_beta_to_the_k_minus_one():
    # stage 0: 4 of 10 peers collude (beta = 0.4 of the stake); the market sends every hop to a colluder
    behaviour, owner, stake, stage = network(10, lambda s, j: "colluding" if j < 4 else "honest")
    for k in (2, 3, 4):
        v = verifier("redundancy", replicas=k, seed=k)
        requests = 20_000
        peer_of = np.tile(np.arange(STAGES) * 10, (requests, 1))
        verdict = v.check(hops_of(requests, peer_of), behaviour, owner, stake, stage, requests, STAGES)
        passed = (verdict.cheated & ~verdict.caught).mean()
        assert passed == pytest.approx(0.4 ** (k - 1), abs=0.01)


@pytest.mark.parametrize("q", [0.5, 1.0])
def test_coordinated_committees_pass_q_beta_to_the_k_minus_one_and_are_never_caught(q):
    """A coordinated peer cheats only when its whole committee is coordinated (stake share beta per
    replica), and then the committee's one wrong output passes: wrong outputs q beta^(k - 1), none
    caught; independent colluders at the same q pass only when all k cheat, q^k beta^(k - 1)."""
    requests = 20_000
    peer_of = np.tile(np.arange(STAGES) * 10, (requests, 1))  # every hop to a coordinated peer
    for k in (2, 3):
        behaviour, owner, stake, stage = network(10, lambda s, j: "coordinated" if j < 4 else "honest")
        owner = np.where(behaviour == CODE["coordinated"], COLLUDERS, owner)
        v = verifier("redundancy", q=q, replicas=k, seed=k)
        verdict = v.check(hops_of(requests, peer_of), behaviour, owner, stake, stage, requests, STAGES)
        passed = verdict.cheated & ~verdict.caught
        expected = q * 0.4 ** (k - 1)
        assert passed.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected / len(passed)))
        assert not verdict.caught.any() and (verdict.cheated == passed).all()
        assert len(verdict.extra_cheaters) == 0  # coordinated replicas never cheat on their own
        colluders = np.where(behaviour == CODE["coordinated"], CODE["colluding"], behaviour)
        independent = verifier("redundancy", q=q, replicas=k, seed=k).check(
            hops_of(requests, peer_of), colluders, owner, stake, stage, requests, STAGES)
        alone = q ** k * 0.4 ** (k - 1)  # all k cheat on their own, and every replica is a colluder
        assert (independent.cheated & ~independent.caught).mean() == pytest.approx(alone, abs=4 * np.sqrt(alone / requests))
        assert independent.caught.mean() > 0.3


def test_adjacent_colluders_hide_from_the_dispute_game_unless_the_referee_samples_inside():
    behaviour, owner, stake, stage = network(5, lambda s, j: "colluding" if j == 0 and s in (1, 2) else "honest")
    peer_of = np.tile(np.arange(STAGES) * 5, (5000, 1))
    for inside, caught_share in ((0.0, 0.0), (1.0, 1.0)):
        v = verifier("dispute_game", probability=1.0, watchers=1, inside_sampling=inside)
        verdict = v.check(hops_of(5000, peer_of), behaviour, owner, stake, stage, 5000, STAGES)
        assert verdict.caught[verdict.cheated].mean() == caught_share
    # a lone colluder (no colluding neighbour on the path) is caught like a lazy peer
    behaviour, owner, stake, stage = network(5, lambda s, j: "colluding" if j == 0 and s == 1 else "honest")
    verdict = verifier("dispute_game", probability=1.0, watchers=1).check(
        hops_of(100, np.tile(np.arange(STAGES) * 5, (100, 1))), behaviour, owner, stake, stage, 100, STAGES)
    assert verdict.caught[verdict.cheated].all()


@given(st.sampled_from(MECHANISMS), st.booleans(), st.integers(0, 2**31 - 1),
       st.lists(st.sampled_from(["honest", "lazy", "malicious", "colluding", "sybil", "offline"]), min_size=8,
                max_size=8))
def test_every_verdict_is_consistent(mechanism, referee, seed, names):
    behaviour = np.array([CODE[name] for name in names * STAGES], dtype=np.int8)  # 8 peers per stage
    owner = np.where(behaviour == CODE["colluding"], COLLUDERS, np.arange(len(behaviour)))
    stage = np.arange(len(behaviour)) // 8
    rng = np.random.default_rng(seed)
    peer_of = stage.reshape(STAGES, 8)[np.arange(STAGES), rng.integers(0, 8, (50, STAGES))] * 0 + \
        np.arange(STAGES) * 8 + rng.integers(0, 8, (50, STAGES))
    config = VerificationConfig(mechanism=mechanism, referee=referee, fingerprint="exact", probability=0.5)
    v = Verifier(config, cheat_probability=0.5, offline_probability=0.5, rng=rng)
    verdict = v.check(hops_of(50, peer_of), behaviour, owner, np.full(len(behaviour), 10**6), stage, 50, STAGES)
    assert not (verdict.cheated & verdict.dropped).any()
    assert not (verdict.caught & ~verdict.cheated).any()  # only cheats are caught
    assert not (verdict.flagged_honest & verdict.cheated).any()
    if referee or mechanism == "none":
        assert not (verdict.confirmed & ~verdict.cheated).any()  # with a referee nobody honest is slashed
    assert np.all(verdict.verification_ms >= 0)
    if mechanism == "none":
        assert not verdict.caught.any() and verdict.verification_ms.sum() == 0
    cheated_requests = np.bincount(verdict_hops := np.repeat(np.arange(50), STAGES), verdict.cheated, minlength=50) > 0
    assert not (verdict.bad_request & ~cheated_requests).any()  # a wrong output needs a cheat
    assert np.all(np.isin(verdict.extra_cheaters, np.flatnonzero(np.isin(behaviour, [1, 2, 5, 6]))))
    assert len(verdict.commitments) == 50 and len(verdict_hops) == 200


@given(st.integers(1, 6).flatmap(lambda width: st.tuples(
    st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=width, max_size=width), min_size=1, max_size=4),
    st.integers(0, width - 1))), st.integers(1, 2**64 - 1))
def test_merkle_roots_commit_to_every_leaf(rows_and_column, change):
    rows, column = rows_and_column
    leaves = np.array(rows, dtype=np.uint64)
    roots = merkle_roots(leaves)
    tampered = leaves.copy()
    tampered[0, column] ^= np.uint64(change)
    assert merkle_roots(tampered)[0] != roots[0]  # any one leaf changed: a different root, provably
    assert np.array_equal(merkle_roots(tampered)[1:], roots[1:]) and np.array_equal(merkle_roots(leaves), roots)


def test_minimal_sampling_rate_closed_form():
    assert minimal_sampling_rate(1.0, 2.0, 8.0) == pytest.approx(0.1)
    assert minimal_sampling_rate(1.0, 2.0, 8.0, fn=0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="cost = -1"):
        minimal_sampling_rate(-1, 2, 8)


def test_behaviours_are_assigned_as_configured():
    adversary = AdversaryConfig(fraction=0.3, behaviour="mix", mix={"lazy": 1, "sybil": 1, "stale_channel": 1},
                                sybil_identities=3)
    b = assign(adversary, 300, 60, np.random.default_rng(0))
    assert (b.peer != 0).sum() == 60 and b.stale_client.sum() == 6  # 2/3 of 30% of peers, 1/3 of 30% of clients
    sybils = np.flatnonzero(b.peer == CODE["sybil"])
    assert np.all(np.bincount(-b.owner[sybils] + COLLUDERS)[1:] <= 3)  # at most 3 identities per owner
    assert np.array_equal(b.registration_stake(64, 32)[sybils], np.full(len(sybils), 32))
    assert b.claimed_cost(np.ones(300), 0.5).min() == 1.0  # no overclaimers here


# -- in the model ---------------------------------------------------------------------------------------
def secure(*overrides, experiment="paper_table1"):
    return load_config(experiment, overrides=["ledger.enabled=true", "run.record_interval=50", *overrides])


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_default_spot_check_slashes_lazy_peers_and_no_honest_one(fraction):
    model = P2PLLMModel(secure("verification=spot_check", f"adversary.fraction={fraction}"))
    model.run(1000)
    s = model.security.summary()
    assert s["cheating_peers"] > 0 and s["slashed_cheaters"] >= 0.99 * s["cheating_peers"]
    assert s["slashed_honest"] == 0 and s["bad_output_share"] < 0.01
    assert s["adversarial_peers"] == round(fraction * 200)
    model.ledger.assert_invariants()
    assert not model.peers.alive[model.security.slashed_at >= 0].any()  # slashed peers were forced out


def test_without_a_referee_exact_hashes_slash_honest_peers():
    model = P2PLLMModel(secure("verification=spot_check", "verification.referee=false", "verification.fingerprint=exact",
                               "adversary.fraction=0.1", "run.steps=100"))
    model.run(100)
    s = model.security.summary()
    assert s["honest_flags"] > 0 and s["slashed_honest"] > 0  # measured: exact hashes mismatch after KV-cache decoding
    topk = P2PLLMModel(secure("verification=spot_check", "verification.referee=false", "adversary.fraction=0.1"))
    topk.run(100)
    assert topk.security.summary()["slashed_honest"] == 0


def test_overclaimers_and_offline_peers_pay_sla_penalties_but_are_not_slashed():
    model = P2PLLMModel(secure("verification=spot_check", "adversary.behaviour=mix", "adversary.fraction=0.2",
                               "adversary.mix.overclaim=1", "adversary.mix.offline=1", "ledger.payments=escrow",
                               "ledger.check_every_step=true"))
    model.run(200)
    s = model.security.summary()
    journal = model.ledger.ledger.journal_frame()
    assert s["slashed_cheaters"] == 0 and s["sla_timeouts"] > 0
    penalised = set(model.ledger.sla.escrows.peer[journal.loc[journal["reason"] == "sla_penalty", "ref"].to_numpy()].tolist())
    assert len(penalised) > 0
    escrows = model.ledger.sla.escrows
    assert np.all(escrows.commitment[: escrows.size] != 0)  # every hop's SLA records its request's Merkle root
    kinds = {a.behaviour for a in model.agents_by_type[PeerAgent] if a.index in penalised}
    assert kinds <= {"overclaim", "offline"}


def test_stale_channel_clients_are_challenged_and_forfeit():
    model = P2PLLMModel(secure("adversary.behaviour=stale_channel", "adversary.fraction=0.5",
                               "ledger.channel_deposit=3000000", "ledger.check_every_step=true"))
    model.run(60)
    s = model.security.summary()
    journal = model.ledger.ledger.journal_frame()
    assert s["stale_channel_clients"] == 32 and s["stale_closes"] > 0
    # the watching peers answered every stale close that reached the chain with the newest state
    assert s["stale_closes_challenged"] > 0
    closes = model.ledger.channels
    assert closes.challenges_won == ((closes.c.status[: closes.c.size] == 3) & closes.c.challenged[: closes.c.size]).sum()
    paid_back = journal[(journal["reason"] == "channel_payout") & journal["dst"].astype(str).str.startswith("client")]
    assert paid_back["amount"].sum() < closes.stale_closes * 3_000_000  # the stale states' full deposits never came back


def test_security_block_and_behaviour_rows(tmp_path):
    from p2pllm_abm.metrics import write_run_outputs

    model = P2PLLMModel(secure("verification=optimistic", "adversary.fraction=0.2", "run.steps=100"))
    model.run(100)
    paths = write_run_outputs(model, tmp_path, 1.0)
    summary = json.loads(paths["summary.json"].read_text())["security"]
    for key in ("cheating_peers", "slashed_cheaters", "adversarial_peers", "slashed_honest", "requests",
                "bad_outputs_delivered", "verification_compute_share"):
        assert key in summary
    import pandas as pd

    rows = pd.read_parquet(paths["metrics.parquet"]).query("scope == 'behaviour'")
    assert set(rows["behaviour"]) == {"honest", "lazy"}
    peers = pd.read_parquet(paths["peers.parquet"])
    assert set(peers["behaviour"]) == {"honest", "lazy"}


@pytest.mark.parametrize("override, field", [
    ("adversary.fraction=1.5", "adversary.fraction"),
    ("adversary.behaviour=evil", "adversary.behaviour"),
    ("adversary.cheat_probability=2", "adversary.cheat_probability"),
    ("adversary.offline_probability=-1", "adversary.offline_probability"),
    ("adversary.overclaim_factor=0", "adversary.overclaim_factor"),
    ("adversary.sybil_identities=0", "adversary.sybil_identities"),
    ("verification.mechanism=oracle", "verification.mechanism"),
    ("verification.probability=1.5", "verification.probability"),
    ("verification.warmup=-1", "verification.warmup"),
    ("verification.replicas=1", "verification.replicas"),
    ("verification.watchers=0", "verification.watchers"),
    ("verification.challenge_window=-1", "verification.challenge_window"),
    ("verification.inside_sampling=2", "verification.inside_sampling"),
    ("verification.fingerprint=md5", "verification.fingerprint"),
    ("verification.fingerprint_profile=nope.json", "verification.fingerprint_profile"),
    ("verification.slash_fraction=1.5", "verification.slash_fraction"),
    ("verification.slash_amount=-1", "verification.slash_amount"),
    ("verification.compute_price=-1", "verification.compute_price"),
    ("verification.payer=nobody", "verification.payer"),
    ("adversary.verifier_skip_probability=1.2", "adversary.verifier_skip_probability"),
    ("verification.forced_error_rate=-0.1", "verification.forced_error_rate"),
    ("verification.jackpot=-1", "verification.jackpot"),
    ("verification.jackpot=nan", "verification.jackpot"),
])
def test_every_security_field_is_validated(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("paper_28", overrides=["ledger.enabled=true", "adversary.fraction=0.1", override])
    assert err.value.field == field


def test_adversaries_need_the_ledger():
    with pytest.raises(ConfigError, match="ledger.enabled"):
        load_config("paper_28", overrides=["adversary.fraction=0.1"])
    with pytest.raises(ConfigError, match="adversary.mix"):
        load_config("paper_28", overrides=["ledger.enabled=true", "adversary.fraction=0.1", "adversary.behaviour=mix"])


@pytest.mark.parametrize("overrides, field", [
    (["verification=redundancy", "verification.forced_error_rate=0.1"], "verification.forced_error_rate"),
    (["verification=spot_check", "verification.jackpot=1.0"], "verification.jackpot"),
    (["verification=optimistic", "adversary.behaviour=lazy_verifier"], "adversary.behaviour"),
])
def test_remedies_and_lazy_verifiers_need_a_mechanism_that_draws_validators(overrides, field):
    with pytest.raises(ConfigError) as error:
        load_config("paper_table1", overrides=["ledger.enabled=true", "adversary.fraction=0.2", *overrides])
    assert error.value.field == field
