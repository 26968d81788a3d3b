"""The cryptoeconomic layer: exact money, the chain, the registry, escrow and every channel path."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from ledger_world import TOKEN, advance, assert_books, world
from p2pllm_abm.ledger import InsufficientFunds, Ledger, draw_proposers, gini, nakamoto_coefficient
from p2pllm_abm.ledger.accounts import MAX_SUPPLY, share
from p2pllm_abm.ledger.channels import CLOSING, FAILED, OPEN, SETTLED
from p2pllm_abm.ledger.contracts import REFUNDED, REJECTED, RELEASED
from p2pllm_abm.ledger.signatures import ChannelState, Keyring, SignedState


# -- accounts -----------------------------------------------------------------------------------------
def test_transfer_beyond_balance_is_refused_atomically():
    ledger = Ledger()
    ledger.open_account("client:0")
    ledger.mint("client:0", 500, reason="genesis")
    rows = ledger.journal.rows
    with pytest.raises(InsufficientFunds, match="'client:0'.*balance is 500"):
        ledger.transfer("client:0", "sys:escrow", 501, reason="escrow_lock")
    assert ledger.balance("client:0") == 500 and ledger.journal.rows == rows
    ledger.assert_conserved()


@pytest.mark.parametrize("call, message", [
    (lambda l: l.transfer("client:9", "sys:burn", 1, "transfer"), "unknown"),
    (lambda l: l.transfer("sys:issuance", "sys:burn", -1, "transfer"), "amount = -1"),
    (lambda l: l.transfer("sys:issuance", "sys:burn", 1, "gift"), "reason = 'gift'"),
    (lambda l: l.open_account("nobody"), "account = 'nobody'"),
])
def test_misuse_is_refused_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call(Ledger())


def sequential(balances, src, dst, amount):
    """The reference semantics: rows in order, a row its source cannot cover is refused."""
    balances = list(balances)
    accepted = []
    for s, d, a in zip(src, dst, amount):
        ok = s == 0 or balances[s] >= a
        if ok:
            balances[s] -= a
            balances[d] += a
        accepted.append(ok)
    return balances, accepted


@given(st.lists(st.integers(0, 50), min_size=3, max_size=3),
       st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 40)), max_size=30))
def test_batch_transfers_equal_the_sequential_reference(start, rows):
    ledger = Ledger()
    names = [f"client:{k}" for k in range(3)]
    ledger.open_accounts(names)
    for name, amount in zip(names, start):
        ledger.mint(name, amount, reason="genesis")
    src, dst, amount = (np.array([r[i] for r in rows], dtype=np.int64) for i in range(3))
    expected_balances, expected_accepted = sequential(ledger.balances().tolist(), src.tolist(), dst.tolist(),
                                                      amount.tolist())
    accepted = ledger.transfer_batch(src, dst, amount, "transfer")
    assert accepted.tolist() == expected_accepted
    assert ledger.balances().tolist() == expected_balances
    ledger.assert_conserved()
    journal = ledger.journal.columns()
    replayed = np.zeros(len(ledger.names), dtype=object)
    np.add.at(replayed, journal["dst"], journal["amount"].astype(object))
    np.subtract.at(replayed, journal["src"], journal["amount"].astype(object))
    assert replayed.tolist() == ledger.balances().tolist()  # balances are recomputable from the journal


@given(st.integers(0, MAX_SUPPLY), st.floats(0, 3))
def test_share_is_the_exact_floor(amount, fraction):
    q = round(fraction * 10**6)
    assert share(amount, fraction) == amount * q // 10**6
    assume(amount * q // 10**6 <= MAX_SUPPLY)  # int64 arrays hold any amount up to the supply cap
    assert int(share(np.array([amount], dtype=np.int64), fraction)[0]) == amount * q // 10**6


# -- chain --------------------------------------------------------------------------------------------
def test_proposers_are_drawn_in_proportion_to_stake():
    stake = np.array([1, 2, 3, 4, 10], dtype=np.int64) * 10**6
    draws = np.concatenate([draw_proposers(11, slot, stake, 4) for slot in range(5000)])
    observed = np.bincount(draws, minlength=len(stake))
    expected = len(draws) * stake / stake.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert np.array_equal(draw_proposers(11, 42, stake, 4), draw_proposers(11, 42, stake, 4))  # counter-based
    assert np.all(draw_proposers(11, 1, np.zeros(3, np.int64), 2) == -1)


def test_block_capacity_queues_transactions_and_fees_go_to_proposers():
    w = world(capacity=3, fee=7)
    w.registry.post_prices(np.array([2.0, 3.0, 4.0]), np.ones(3, bool))
    w.registry.submit_bond(np.array([0, 1, 2, 0]), np.full(4, TOKEN))
    before = w.ledger.balances()[w.peer_accounts].sum()
    latencies = []
    for _ in range(3):
        included = w.chain.total_included
        advance(w)
        latencies.append(w.chain.total_included - included)
    assert latencies == [3, 3, 1]  # 7 transactions through blocks of 3
    assert w.chain.total_latency == 0 * 3 + 1 * 3 + 2 * 1
    assert np.allclose(w.registry.posted_price, [2.0, 3.0, 4.0])
    assert w.ledger.balances()[w.peer_accounts].sum() == before - 4 * TOKEN  # fees stay among the peers (proposers)
    assert_books(w)


def test_cross_shard_transactions_wait_for_their_receipt():
    w = world(peers=2, clients=2, shards=2, cross_shard_delay=2)
    w.sla.open_escrows(np.array([0, 0]), np.array([0, 1]), np.full(2, TOKEN), np.full(2, 10.0), np.full(2, 5.0), step=1)
    advance(w)  # client 0 lives in shard 0: its escrow with peer 0 opens now, the one with peer 1 waits
    assert w.sla.escrows.status[:2].tolist() == [1, 0]
    advance(w, 2)
    assert w.sla.escrows.status[1] == 1
    stats_ = w.chain.shard_statistics()
    assert stats_["cross_shard_share"].tolist() == [0.0, 1.0]
    advance(w, 2)
    assert w.sla.escrows.status[:2].tolist() == [RELEASED, RELEASED]
    assert_books(w)


def test_issuance_is_split_exactly_and_finality_needs_two_thirds():
    w = world(peers=3, stake=30 * TOKEN, issuance_per_epoch=1_000_001)
    w.registry.submit_bond(np.array([2]), np.array([30 * TOKEN]))  # stakes 30, 30, 60
    advance(w, 3)  # the epoch's last slot (4 slots an epoch): stakes 30, 30, 60 share 1_000_001
    assert w.ledger.total_supply() == 3 * 100 * TOKEN + 2 * 1000 * TOKEN + 1_000_001
    assert w.registry.bonded.tolist() == [30 * TOKEN + 250_000, 30 * TOKEN + 250_000, 60 * TOKEN + 500_000]
    assert w.ledger.balance("sys:treasury") == 1  # the floors' remainder
    advance(w, 5)
    assert w.chain.finalized_slot >= 0
    silent = world(attestation_rate=0.0)
    advance(silent, 12)
    assert silent.chain.finalized_slot == -1 and not any(silent.chain.justified)
    assert_books(w)


def test_gini_and_nakamoto_closed_forms():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)  # (n - 1) / n
    assert nakamoto_coefficient(np.array([40, 30, 20, 10])) == 1  # 40 > 100/3
    assert nakamoto_coefficient(np.ones(9)) == 4  # 4 of 9 equal validators exceed 1/3


# -- registry -----------------------------------------------------------------------------------------
def test_unbonding_pays_out_after_the_delay_and_slashing_reaches_it():
    w = world(stake=50 * TOKEN)
    w.registry.submit_unbond(np.array([0]), np.array([10 * TOKEN]))
    advance(w)
    assert w.registry.bonded[0] == 40 * TOKEN and w.registry.unbonding_stake()[0] == 10 * TOKEN
    slashed = w.registry.slash(0, 0.5, reporter="client:1")
    assert slashed == 25 * TOKEN  # half of bonded + unbonding
    assert w.ledger.balance("sys:burn") == slashed - share(slashed, 0.125)
    assert w.ledger.balance("client:1") == 1000 * TOKEN + share(slashed, 0.125)
    assert not w.registry.registered[0] and w.registry.bonded[0] == 0  # 15 left, below 20: exited
    assert w.registry.unbonding_stake()[0] == 25 * TOKEN  # the remaining bond unbonds too
    assert w.registry.exited == [0]
    balance = w.ledger.balance("peer:0")
    advance(w, 4)
    assert w.ledger.balance("peer:0") == balance + 15 * TOKEN + 10 * TOKEN  # both unbondings matured
    assert w.registry.effective_stake()[0] == 0
    assert_books(w)


# -- SLA escrow ---------------------------------------------------------------------------------------
def test_escrow_releases_kept_slas_and_refunds_violations_with_a_penalty():
    w = world()
    client = np.array([0, 0, 1])
    peer = np.array([0, 1, 2])
    w.sla.open_escrows(client, peer, np.full(3, 2 * TOKEN), np.array([10.0, 10.0, 10.0]),
                       np.array([9.0, 11.0, np.inf]), step=1)
    advance(w)
    assert w.sla.escrowed_per_peer(3).tolist() == [2 * TOKEN] * 3
    advance(w)
    assert w.sla.escrows.status[:3].tolist() == [RELEASED, REFUNDED, REFUNDED]
    assert w.ledger.balance("peer:0") == 50 * TOKEN + 2 * TOKEN
    assert w.ledger.balance("client:1") == 1000 * TOKEN + TOKEN  # its refund was never taken; + penalty 0.5 x 2
    assert w.registry.bonded.tolist() == [50 * TOKEN, 49 * TOKEN, 49 * TOKEN]
    assert_books(w)


def test_an_escrow_the_client_cannot_fund_is_rejected():
    w = world()
    w.sla.open_escrows(np.array([0]), np.array([0]), np.array([1001 * TOKEN]), np.array([10.0]), np.array([1.0]), 1)
    advance(w, 2)
    assert w.sla.escrows.status[0] == REJECTED and w.ledger.balance("client:0") == 1000 * TOKEN
    assert_books(w)


def test_terms_hold_for_their_term_and_renew_at_the_posted_price():
    w = world()
    w.sla.term = 3
    c, p = np.array([0]), np.array([1])
    prices = [w.sla.quote(c, p, np.array([posted]), step)[0] for step, posted in enumerate([5, 6, 7, 8, 9], start=1)]
    assert prices == [5, 5, 5, 8, 8] and w.sla.contracts_created == 2


# -- channels: every path -----------------------------------------------------------------------------
def opened(signatures="stub", window=4):
    w = world(signatures=signatures, window=window)
    channel = int(w.channels.open(np.array([0]), np.array([1]), np.array([10 * TOKEN]))[0])
    advance(w)
    assert w.channels.c.status[channel] == OPEN
    return w, channel


def test_cooperative_close_pays_the_latest_state():
    w, ch = opened()
    w.channels.update(ch, 3 * TOKEN)
    w.channels.update(ch, 2 * TOKEN)
    w.channels.close_cooperative(ch)
    advance(w)
    assert w.channels.c.status[ch] == SETTLED
    assert w.ledger.balance("peer:1") == 50 * TOKEN + 5 * TOKEN
    assert w.ledger.balance("client:0") == 995 * TOKEN
    assert_books(w)


def test_unilateral_close_with_the_latest_state_finalizes_after_the_window():
    w, ch = opened(window=4)
    latest = w.channels.update(ch, 3 * TOKEN)
    w.channels.close_unilateral(ch, latest, "peer")
    advance(w)
    assert w.channels.c.status[ch] == CLOSING
    w.channels.finalize(ch)  # too early: refused by the contract
    advance(w)
    assert w.channels.c.status[ch] == CLOSING and w.chain.total_failed == 1
    advance(w, 6)  # the watcher finalizes once the window has passed
    assert w.channels.c.status[ch] == SETTLED and w.ledger.balance("peer:1") == 53 * TOKEN
    assert_books(w)


@pytest.mark.parametrize("cheater", ["client", "peer"])
def test_a_stale_close_is_challenged_and_the_cheater_forfeits(cheater):
    w, ch = opened()
    first = w.channels.update(ch, 2 * TOKEN)  # client 8, peer 2
    w.channels.update(ch, 3 * TOKEN)  # client 5, peer 5
    if cheater == "client":
        # the client would rather publish the state before any payment (both signed it at opening)
        stale = w.channels.keyring.cosign(int(w.client_accounts[0]), int(w.peer_accounts[1]),
                                          ChannelState(ch, 0, 10 * TOKEN, 0))
    else:
        stale = first  # the peer would rather publish... an older state only hurts it, but it is still stale
    w.channels.close_unilateral(ch, stale, cheater)
    advance(w, 3)  # published, then the counterparty answers with nonce 2
    assert w.channels.c.status[ch] == SETTLED
    # stale_penalty = 1: the cheater's whole side of the newest state goes to the honest party
    assert w.ledger.balance("peer:1") == 50 * TOKEN + (10 * TOKEN if cheater == "client" else 0)
    assert w.ledger.balance("client:0") == 990 * TOKEN + (0 if cheater == "client" else 10 * TOKEN)
    assert_books(w)


def test_challenges_that_are_not_newer_or_too_late_are_refused():
    w, ch = opened(window=2)
    latest = w.channels.update(ch, TOKEN)
    w.channels.close_unilateral(ch, latest, "client")
    advance(w)
    w.channels.challenge(ch, latest, "peer")  # same nonce: not newer
    advance(w)
    assert w.channels.c.status[ch] == CLOSING and w.chain.total_failed == 1
    w2, ch2 = opened(window=1)
    stale = w2.channels.latest(ch2)
    w2.channels.update(ch2, TOKEN)
    w2.channels.c.challenged[ch2] = True  # the counterparty is offline (no watchtower)
    w2.channels.close_unilateral(ch2, stale, "client")
    advance(w2, 3)
    w2.channels.challenge(ch2, w2.channels.latest(ch2), "peer")  # after the window
    advance(w2, 3)
    assert w2.ledger.balance("client:0") == 1000 * TOKEN  # the stale close stood: offline cost the peer its pay
    assert_books(w)
    assert_books(w2)


@pytest.mark.parametrize("signatures", ["stub", "ed25519"])
def test_forged_and_non_final_states_are_refused(signatures):
    w, ch = opened(signatures=signatures)
    w.channels.update(ch, TOKEN)
    genuine = w.channels.latest(ch)
    forged_state = ChannelState(ch, 9, 10 * TOKEN, 0, True)
    forged = SignedState(forged_state, w.channels.keyring.sign(int(w.client_accounts[0]), forged_state),
                         genuine.peer_signature)  # the peer never signed it
    w.channels._publish("channel_close", forged, int(w.client_accounts[0]))
    w.channels._publish("channel_close", genuine, int(w.client_accounts[0]))  # not final
    advance(w)
    assert w.channels.c.status[ch] == OPEN and w.chain.total_failed == 2
    assert len(genuine.client_signature) == (64 if signatures == "ed25519" else 32)
    assert_books(w)


def test_ed25519_signatures_verify_and_differ_from_the_stub():
    state = ChannelState(1, 2, 3, 4)
    real, stub = Keyring("ed25519", 0), Keyring("stub", 0)
    assert real.verify(5, state, real.sign(5, state)) and not real.verify(6, state, real.sign(5, state))
    assert not real.verify(5, state._replace(nonce=3), real.sign(5, state))
    assert stub.verify(5, state, stub.sign(5, state)) and not stub.verify(5, state, real.sign(5, state)[:32])
    with pytest.raises(ValueError, match="ledger.signatures = 'rsa'"):
        Keyring("rsa", 0)


def test_payments_wait_for_their_channel_and_drained_channels_are_replaced():
    w = world()
    c, p = np.array([0, 1]), np.array([2, 2])
    w.channels.pay(c, p, np.full(2, 4 * TOKEN), step=1)  # no channel yet: both owed, channels opening
    assert w.channels.owed[0, 2] == 4 * TOKEN and w.channels.c.size == 2
    advance(w)
    for step in range(2, 5):
        w.channels.pay(c, p, np.full(2, 4 * TOKEN), step=step)
        advance(w)
    # 16 tokens each through 10-token channels: the first drained after two payments and was replaced
    assert w.channels.c.size == 4 and set(w.channels.c.status[:4].tolist()) == {SETTLED, OPEN}
    assert w.ledger.balance("peer:2") + w.channels.owed_to_peers(3)[2] + w.channels.owed[:, 2].sum() \
        == 100 * TOKEN - 50 * TOKEN + 32 * TOKEN
    assert w.channels.settled_latency > 0
    assert_books(w)


@pytest.mark.parametrize("close", ["cooperative", "unilateral"])
def test_a_channel_whose_close_was_sent_takes_no_more_updates(close):
    """Payments agreed after a close was sent wait (owed) for the channel that replaces it: none is
    lost to a final state signed before it, and a fair unilateral close is not made stale by them."""
    w = world()
    c, p = np.array([0]), np.array([1])
    w.channels.pay(c, p, np.array([TOKEN]), step=1)
    advance(w)
    w.channels.pay(c, p, np.array([TOKEN]), step=2)
    channel = int(w.channels.channel_of[0, 1])
    if close == "cooperative":
        w.channels.close_cooperative(channel)
    else:
        w.channels.close_unilateral(channel, w.channels.latest(channel), "peer")
    nonce = int(w.channels.c.nonce[channel])
    w.channels.pay(c, p, np.array([2 * TOKEN]), step=3)  # before the close is on chain
    assert w.channels.c.nonce[channel] == nonce and w.channels.owed[0, 1] == 2 * TOKEN
    for step in range(4, 12):
        advance(w)
        w.channels.pay(c, p, np.array([0]), step=step)
    assert w.channels.c.status[channel] == SETTLED and w.channels.challenges_won == 0
    assert w.channels.owed[0, 1] == 0 and w.channels.c.size == 2  # paid through the new channel
    assert w.ledger.balance("peer:1") + w.channels.owed_to_peers(3)[1] == 100 * TOKEN - 50 * TOKEN + 4 * TOKEN
    assert_books(w)


def test_a_broke_client_opens_no_channel():
    w = world()
    w.channels.pay(np.array([0]), np.array([0]), np.array([2000 * TOKEN]), step=1)
    assert w.channels.c.size == 0 and w.channels.owed[0, 0] == 2000 * TOKEN
    w.channels.open(np.array([1]), np.array([0]), np.array([5000 * TOKEN]))  # sent anyway: fails on chain
    advance(w)
    assert w.channels.c.status[0] == FAILED
    assert_books(w)


def test_without_validators_the_chain_halts_and_says_so():
    w = world()
    for peer in range(3):
        w.registry.slash(peer, 1.0)
    blocks = w.chain.blocks
    w.sla.open_escrows(np.array([0]), np.array([0]), np.array([TOKEN]), np.array([10.0]), np.array([5.0]), 1)
    advance(w, 3)
    assert w.chain.blocks == blocks and len(w.chain.mempool) == 1  # nobody to propose: the escrow waits
    stats_ = w.chain.chain_statistics(w.registry.effective_stake())
    assert stats_["validators"] == 0 and stats_["stake_gini"] is None and stats_["nakamoto_coefficient"] == 0
    assert w.registry.exited == [0, 1, 2]
    assert_books(w)
