"""Hypothesis state machine over random sequences of ledger operations: open / pay / update /
close / challenge / finalize / escrow / bond / unbond / slash, with blocks in between."""

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ledger_world import TOKEN, advance, assert_books, world
from p2pllm_abm.ledger.accounts import REASON
from p2pllm_abm.ledger.channels import CLOSING, OPEN
from p2pllm_abm.ledger.signatures import ChannelState

CLIENTS, PEERS = 2, 3
amounts = st.integers(0, 12 * TOKEN)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.w = world(peers=PEERS, clients=CLIENTS, shards=2, capacity=4, fee=1_000, window=3)
        self.states = {}  # channel -> every co-signed state a party has seen (for stale closes)
        self.nonces = {}  # channel -> the nonces seen, in order

    def seen(self, ch):
        """The co-signed states both parties have of ``ch``: at least the opening state."""
        if ch not in self.states:
            cols, w = self.w.channels.c, self.w
            opening = ChannelState(ch, 0, int(cols.deposit[ch]), 0)
            self.states[ch] = [w.channels.keyring.cosign(int(w.client_accounts[cols.client[ch]]),
                                                         int(w.peer_accounts[cols.peer[ch]]), opening)]
        return self.states[ch]

    def channels_with(self, *statuses):
        cols = self.w.channels.c
        return [ch for ch in range(cols.size) if cols.status[ch] in statuses]

    @rule(client=st.integers(0, CLIENTS - 1), peer=st.integers(0, PEERS - 1), deposit=st.integers(1, 30 * TOKEN))
    def open_channel(self, client, peer, deposit):
        self.w.channels.open(np.array([client]), np.array([peer]), np.array([deposit]))

    @rule(pick=st.integers(0, 10**6), amount=amounts)
    def update(self, pick, amount):
        live = self.channels_with(OPEN)
        if live:
            ch = live[pick % len(live)]
            if amount <= self.w.channels.c.bal_client[ch]:
                self.seen(ch).append(self.w.channels.update(ch, amount))
                self.nonces.setdefault(ch, []).append(self.states[ch][-1].state.nonce)

    @rule(client=st.integers(0, CLIENTS - 1), peer=st.integers(0, PEERS - 1), amount=amounts, step=st.integers(0, 99))
    def pay(self, client, peer, amount, step):
        self.w.channels.pay(np.array([client]), np.array([peer]), np.array([amount]), step)

    @rule(pick=st.integers(0, 10**6))
    def close_cooperatively(self, pick):
        live = self.channels_with(OPEN)
        if live:
            self.w.channels.close_cooperative(live[pick % len(live)])

    @rule(pick=st.integers(0, 10**6), which=st.integers(0, 10**6), closer=st.sampled_from(["client", "peer"]))
    def close_unilaterally(self, pick, which, closer):
        live = self.channels_with(OPEN)
        if live:
            ch = live[pick % len(live)]
            seen = self.seen(ch)
            self.w.channels.close_unilateral(ch, seen[which % len(seen)], closer)

    @rule(pick=st.integers(0, 10**6), which=st.integers(0, 10**6), challenger=st.sampled_from(["client", "peer"]))
    def challenge(self, pick, which, challenger):
        closing = self.channels_with(CLOSING)
        if closing:
            ch = closing[pick % len(closing)]
            seen = self.seen(ch)
            self.w.channels.challenge(ch, seen[which % len(seen)], challenger)

    @rule(pick=st.integers(0, 10**6))
    def finalize(self, pick):
        closing = self.channels_with(CLOSING)
        if closing:
            self.w.channels.finalize(closing[pick % len(closing)])

    @rule(client=st.integers(0, CLIENTS - 1), peer=st.integers(0, PEERS - 1), amount=amounts,
          late=st.booleans())
    def escrow(self, client, peer, amount, late):
        self.w.sla.open_escrows(np.array([client]), np.array([peer]), np.array([amount]), np.array([10.0]),
                                np.array([11.0 if late else 9.0]), step=self.w.chain.slot)

    @rule(peer=st.integers(0, PEERS - 1), amount=st.integers(1, 40 * TOKEN), bond=st.booleans())
    def bond_or_unbond(self, peer, amount, bond):
        submit = self.w.registry.submit_bond if bond else self.w.registry.submit_unbond
        submit(np.array([peer]), np.array([amount]))

    @rule(peer=st.integers(0, PEERS - 1), fraction=st.floats(0, 1), reporter=st.integers(0, CLIENTS - 1))
    def slash(self, peer, fraction, reporter):
        self.w.registry.slash(peer, fraction, reporter=f"client:{reporter}")

    @rule(slots=st.integers(1, 5))
    def blocks(self, slots):
        advance(self.w, slots)

    @invariant()
    def books_balance(self):
        assert_books(self.w)

    @invariant()
    def nonces_strictly_increase(self):
        for seen in self.nonces.values():
            assert all(a < b for a, b in zip(seen, seen[1:]))

    @invariant()
    def nothing_is_settled_twice(self):
        journal = self.w.ledger.journal.columns()
        payouts = journal["ref"][journal["reason"] == REASON["channel_payout"]]
        assert np.all(np.bincount(payouts) <= 2) if len(payouts) else True  # one payout: both sides at most
        settles = journal["ref"][np.isin(journal["reason"], [REASON["escrow_release"], REASON["escrow_refund"]])]
        assert len(np.unique(settles)) == len(settles)
        locks = journal["ref"][journal["reason"] == REASON["escrow_lock"]]
        assert len(np.unique(locks)) == len(locks)


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
