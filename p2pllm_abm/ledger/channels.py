"""Payment channels between clients and peers (paper section 4.2, contract 3; Lightning-like).

A channel is a state machine ``opening -> open -> (closing ->) settled``:

- **open**: the client's ``channel_open`` transaction moves its deposit into ``sys:channels``
  (``failed`` if it cannot pay);
- **update** (off-chain, no transaction): ``nonce + 1`` and the price moves from the client's side
  to the peer's; both sign the state (:mod:`~p2pllm_abm.ledger.signatures`). Payments of a step
  are applied to all channels at once (:meth:`Channels.pay`); a payment that arrives before its
  channel is open waits as ``owed`` and is streamed in when it opens;
- **cooperative close**: a co-signed *final* state pays both sides at once. A drained channel
  (the client's side cannot cover what it owes) pays what it can, is closed this way, and a new
  one is opened with a deposit of at least the rest;
- **unilateral close**: either party publishes a co-signed state; a challenge window of
  ``challenge_window`` slots opens. The counterparty (who watches every slot) answers a stale
  state with a newer one: the newer state settles the channel and ``stale_penalty`` of the
  closer's balance in it goes to the challenger (1.0: Lightning's whole-channel forfeit). Without
  a challenge the closer finalizes after the window.

Invariants (tested): ``bal_client + bal_peer == deposit`` per channel, nonces strictly increase,
``balance(sys:channels) ==`` the deposits of open and closing channels, nothing is paid out twice.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .accounts import Ledger, share
from .chain import Chain
from .columns import GrowingColumns
from .signatures import ChannelState, Keyring, SignedState

OPENING, OPEN, CLOSING, SETTLED, FAILED = range(5)
STATUSES = ("opening", "open", "closing", "settled", "failed")


class Channels:
    """Every channel as columns, the (client, peer) -> newest channel map, and the handlers."""

    def __init__(self, ledger: Ledger, chain: Chain, keyring: Keyring, client_accounts: np.ndarray,
                 client_home: np.ndarray, peer_accounts: np.ndarray, peer_home: np.ndarray, *, deposit: int,
                 challenge_window: int, stale_penalty: float, sign_updates: bool, stale_clients: np.ndarray):
        self.ledger, self.chain, self.keyring = ledger, chain, keyring
        self.client_accounts, self.client_home = np.asarray(client_accounts), np.asarray(client_home)
        self.peer_accounts, self.peer_home = np.asarray(peer_accounts), np.asarray(peer_home)
        self.deposit, self.challenge_window, self.stale_penalty = deposit, challenge_window, stale_penalty
        self.sign_updates = sign_updates
        self.stale_clients = np.asarray(stale_clients, dtype=bool)  #: clients that close drained channels stale
        self.stale_closes = 0  #: drained channels a stale client closed with its opening state
        self.challenges_won = 0  #: stale closes answered with a newer state
        shape = (len(client_accounts), len(peer_accounts))
        self.channel_of = np.full(shape, -1, dtype=np.int64)  #: newest channel of each pair
        self.owed = np.zeros(shape, dtype=np.int64)  #: agreed payments not yet in a channel update
        self.owed_since = np.zeros(shape, dtype=np.int64)  #: step of the oldest owed payment
        self.c = GrowingColumns(client=np.int64, peer=np.int64, deposit=np.int64, bal_client=np.int64,
                                bal_peer=np.int64, nonce=np.int64, status=np.int8, deadline=np.int64,
                                pub_nonce=np.int64, pub_client=np.int64, pub_peer=np.int64, closer=np.int64,
                                challenged=bool, finalizing=bool, close_sent=bool)
        self.signed: dict[int, SignedState] = {}  #: newest co-signed state, when updates are signed
        self.payloads: list[SignedState] = []  #: states published on chain, by transaction ref
        self.updates = 0  #: off-chain updates so far
        self.settled_latency = 0  #: steps from payment agreed to payment in a channel update, summed
        self.settled = 0
        for kind, handler in (("channel_open", self._apply_open), ("channel_close", self._apply_close),
                              ("channel_close_unilateral", self._apply_close_unilateral),
                              ("channel_challenge", self._apply_challenge), ("channel_finalize", self._apply_finalize)):
            chain.register(kind, handler)

    # -- off-chain payments ---------------------------------------------------------------------
    def pay(self, client: np.ndarray, peer: np.ndarray, amount: np.ndarray, step: int) -> None:
        """Agree payments ``client -> peer`` and stream every owed amount into its open channel, as
        much as the client's side covers; a channel that cannot cover the rest is drained: it is
        closed cooperatively and replaced by one whose deposit covers the rest. Pairs without a
        channel open one (if the client can fund it); their payments wait as ``owed``."""
        fresh = self.owed[client, peer] == 0
        self.owed_since[client[fresh], peer[fresh]] = step
        np.add.at(self.owed, (client, peer), amount)  # a (client, peer) pair may repeat (API callers)
        c, p = np.nonzero(self.owed)
        due = self.owed[c, p]
        ch = self.channel_of[c, p]
        status = np.where(ch >= 0, self.c.status[np.maximum(ch, 0)], FAILED)
        # a channel whose close was sent takes no more updates: no party co-signs after deciding to
        # close (else the published state would be stale, or an update lost, when the close lands)
        live = (status == OPEN) & ~self.c.close_sent[np.maximum(ch, 0)]
        paying = np.where(live, np.minimum(due, self.c.bal_client[np.maximum(ch, 0)]), 0)
        self._update(ch[paying > 0], paying[paying > 0])
        remaining = due - paying
        self.owed[c, p] = remaining
        done = live & (remaining == 0)
        self.settled += int(done.sum())
        self.settled_latency += int((step - self.owed_since[c[done], p[done]]).sum())
        drained = live & (remaining > 0)
        for channel in ch[drained].tolist():
            if self.stale_clients[self.c.client[channel]]:  # publishes the opening state: all its deposit back
                self.close_unilateral(channel, self.opening_state(channel), "client")
                self.stale_closes += 1
            else:
                self.close_cooperative(channel)
        reopen = drained | (status == SETTLED) | (status == FAILED)
        if reopen.any():
            deposit = np.maximum(remaining, self.deposit)
            reopen &= self.ledger.balances()[self.client_accounts[c]] >= deposit
            self.open(c[reopen], p[reopen], deposit[reopen])

    def _update(self, ch: np.ndarray, amount: np.ndarray) -> None:
        cols = self.c
        cols.bal_client[ch] -= amount
        cols.bal_peer[ch] += amount
        cols.nonce[ch] += 1
        self.updates += len(ch)
        if self.sign_updates:
            for channel in ch.tolist():
                self.signed[channel] = self._cosign(channel, final=False)

    def update(self, channel: int, amount: int) -> SignedState:
        """One off-chain payment on an open channel; returns the new co-signed state."""
        cols = self.c
        if cols.status[channel] != OPEN or not 0 <= amount <= cols.bal_client[channel]:
            raise ValueError(f"amount = {amount} is invalid on channel {channel} ({STATUSES[cols.status[channel]]}, "
                             f"client side {int(cols.bal_client[channel])}): allowed 0 <= amount <= client side, open")
        self._update(np.array([channel]), np.array([amount]))
        return self.latest(channel)

    def latest(self, channel: int, final: bool = False) -> SignedState:
        """The newest co-signed state of ``channel`` (each party keeps it)."""
        if not final and channel in self.signed:
            return self.signed[channel]
        return self._cosign(channel, final)

    def opening_state(self, channel: int) -> SignedState:
        """The co-signed state both parties signed when ``channel`` opened (nonce 0)."""
        cols = self.c
        return self.keyring.cosign(int(self.client_accounts[cols.client[channel]]),
                                   int(self.peer_accounts[cols.peer[channel]]),
                                   ChannelState(channel, 0, int(cols.deposit[channel]), 0))

    def _cosign(self, channel: int, final: bool) -> SignedState:
        cols = self.c
        state = ChannelState(channel, int(cols.nonce[channel]), int(cols.bal_client[channel]),
                             int(cols.bal_peer[channel]), final)
        return self.keyring.cosign(int(self.client_accounts[cols.client[channel]]),
                                   int(self.peer_accounts[cols.peer[channel]]), state)

    # -- on-chain operations (transactions) -----------------------------------------------------------
    def open(self, client: np.ndarray, peer: np.ndarray, deposit: np.ndarray) -> np.ndarray:
        """Create channels and send their ``channel_open`` transactions; returns their ids."""
        n = len(client)
        zeros = np.zeros(n, np.int64)
        ids = self.c.append(client=client, peer=peer, deposit=deposit, bal_client=deposit, bal_peer=zeros,
                            nonce=zeros, status=np.full(n, OPENING, np.int8), deadline=zeros, pub_nonce=zeros,
                            pub_client=zeros, pub_peer=zeros, closer=zeros, challenged=np.zeros(n, bool),
                            finalizing=np.zeros(n, bool), close_sent=np.zeros(n, bool))
        self.channel_of[client, peer] = ids
        self.chain.submit("channel_open", self.client_accounts[client], ids, self.peer_home[peer],
                          self.client_home[client])
        return ids

    def close_cooperative(self, channel: int) -> None:
        """Both parties sign the final state; the client sends it."""
        self.c.close_sent[channel] = True
        self._publish("channel_close", self.latest(channel, final=True), self._account(channel, "client"))

    def close_unilateral(self, channel: int, signed: SignedState, closer: str) -> None:
        """``closer`` ("client" or "peer") publishes ``signed`` (which may be stale)."""
        self.c.close_sent[channel] = True
        self._publish("channel_close_unilateral", signed, self._account(channel, closer))
        self.c.closer[channel] = 0 if closer == "client" else 1

    def challenge(self, channel: int, signed: SignedState, challenger: str) -> None:
        self._publish("channel_challenge", signed, self._account(channel, challenger))

    def finalize(self, channel: int) -> None:
        self.chain.submit("channel_finalize", np.array([self._account(channel, "closer")]), np.array([channel]),
                          self.peer_home[self.c.peer[channel]])

    def watch(self) -> None:
        """Each counterparty answers a unilateral close of a stale state with its newest state, and
        closers finalize channels whose challenge window has passed."""
        cols = self.c
        closing = np.flatnonzero(cols.status[: cols.size] == CLOSING)
        for channel in closing.tolist():
            if cols.pub_nonce[channel] < cols.nonce[channel] and not cols.challenged[channel]:
                cols.challenged[channel] = True
                self.challenge(channel, self.latest(channel), "peer" if cols.closer[channel] == 0 else "client")
            elif cols.deadline[channel] < self.chain.slot and not cols.finalizing[channel]:
                cols.finalizing[channel] = True
                self.finalize(channel)

    def _account(self, channel: int, party: str) -> int:
        cols = self.c
        if party == "closer":
            party = "client" if cols.closer[channel] == 0 else "peer"
        if party == "client":
            return int(self.client_accounts[cols.client[channel]])
        if party == "peer":
            return int(self.peer_accounts[cols.peer[channel]])
        raise ValueError(f"party = {party!r} is invalid: allowed 'client' or 'peer'")

    def _publish(self, kind: str, signed: SignedState, sender: int) -> None:
        self.payloads.append(signed)
        channel = signed.state.channel
        self.chain.submit(kind, np.array([sender]), np.array([len(self.payloads) - 1]),
                          self.peer_home[self.c.peer[channel]])

    # -- handlers -------------------------------------------------------------------------------
    def _apply_open(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        cols = self.c
        ok = self.ledger.channel_deposit(self.client_accounts[cols.client[refs]], self.peer_accounts[cols.peer[refs]],
                                         cols.deposit[refs], refs, shards)
        cols.status[refs] = np.where(ok, OPEN, FAILED)
        return ok

    def _valid(self, signed: SignedState, statuses: tuple[int, ...]) -> bool:
        state, cols = signed.state, self.c
        channel = state.channel
        return (0 <= channel < cols.size and cols.status[channel] in statuses
                and state.bal_client >= 0 and state.bal_peer >= 0
                and state.bal_client + state.bal_peer == cols.deposit[channel]
                and self.keyring.cosigned(int(self.client_accounts[cols.client[channel]]),
                                          int(self.peer_accounts[cols.peer[channel]]), signed))

    def _each(self, refs: np.ndarray, apply: Callable[[int], bool]) -> np.ndarray:
        """Apply a handler to each transaction's payload in order; which succeeded."""
        return np.array([apply(ref) for ref in refs.tolist()], dtype=bool)

    def _apply_close(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        return self._each(refs, self._close)

    def _apply_close_unilateral(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        return self._each(refs, self._close_unilateral)

    def _apply_challenge(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        return self._each(refs, self._challenge)

    def _apply_finalize(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        return self._each(refs, self._finalize)

    def _close(self, ref: int) -> bool:
        signed = self.payloads[ref]
        if not (signed.state.final and self._valid(signed, (OPEN,))):
            return self._close_failed(signed.state.channel)
        self._settle(signed.state)
        return True

    def _close_unilateral(self, ref: int) -> bool:
        signed, cols = self.payloads[ref], self.c
        if not self._valid(signed, (OPEN,)):
            return self._close_failed(signed.state.channel)
        channel, state = signed.state.channel, signed.state
        cols.status[channel] = CLOSING
        cols.deadline[channel] = self.chain.slot + self.challenge_window
        cols.pub_nonce[channel], cols.pub_client[channel], cols.pub_peer[channel] = (
            state.nonce, state.bal_client, state.bal_peer)
        self.ledger.channel_close_unilateral(channel, state.nonce, state.bal_client, state.bal_peer,
                                             bool(cols.closer[channel] == 0))
        return True

    def _close_failed(self, channel: int) -> bool:
        """A close that did not apply: a channel still open takes updates again. Returns False."""
        if 0 <= channel < self.c.size and self.c.status[channel] == OPEN:
            self.c.close_sent[channel] = False
        return False

    def _challenge(self, ref: int) -> bool:
        signed, cols = self.payloads[ref], self.c
        channel = signed.state.channel
        if not (self._valid(signed, (CLOSING,)) and self.chain.slot <= cols.deadline[channel]
                and signed.state.nonce > cols.pub_nonce[channel]):
            return False
        self._settle(signed.state, stale_closer="client" if cols.closer[channel] == 0 else "peer")
        self.challenges_won += 1
        return True

    def _finalize(self, channel: int) -> bool:
        cols = self.c
        if not (cols.status[channel] == CLOSING and self.chain.slot > cols.deadline[channel]):
            return False
        self._settle(ChannelState(channel, int(cols.pub_nonce[channel]), int(cols.pub_client[channel]),
                                  int(cols.pub_peer[channel])))
        return True

    def _settle(self, state: ChannelState, stale_closer: str | None = None) -> None:
        """Pay ``state`` out; after a stale close, ``stale_penalty`` of the stale closer's
        balance in ``state`` goes to the challenger."""
        cols, channel = self.c, state.channel
        shard = int(self.peer_home[cols.peer[channel]])
        client, peer = self._account(channel, "client"), self._account(channel, "peer")
        if stale_closer is None:
            self.ledger.channel_close(channel, client, peer, state.bal_client, state.bal_peer, shard)
        else:
            cheated = state.bal_client if stale_closer == "client" else state.bal_peer
            self.ledger.channel_challenge(channel, client, peer, state.nonce, state.bal_client, state.bal_peer,
                                          share(cheated, self.stale_penalty), stale_closer == "client", shard)
        cols.status[channel] = SETTLED
        cols.bal_client[channel], cols.bal_peer[channel] = state.bal_client, state.bal_peer
        cols.nonce[channel] = max(int(cols.nonce[channel]), state.nonce)

    # -- views ----------------------------------------------------------------------------------
    def locked_in_contract(self) -> int:
        """What ``sys:channels`` must hold: the deposits of open and closing channels."""
        cols = self.c
        status = cols.status[: cols.size]
        return int(cols.deposit[: cols.size][(status == OPEN) | (status == CLOSING)].sum())

    def owed_to_peers(self, n_peers: int) -> np.ndarray:
        """Per peer: its side of every open or closing channel (earned, not yet on its balance)."""
        cols = self.c
        status = cols.status[: cols.size]
        rows = np.flatnonzero((status == OPEN) | (status == CLOSING))
        return np.bincount(cols.peer[rows], cols.bal_peer[rows], minlength=n_peers).astype(np.int64)
