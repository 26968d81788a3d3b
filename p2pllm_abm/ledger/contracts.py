"""Service level agreements with escrow (paper section 4.2, contract 2).

Every hop of a paid request runs under an SLA between the client and the hop's peer: the layers
(the peer's span), the promised latency (the peer's *registered* c_i plus the hop's network
latency), the price and a penalty of ``sla_penalty`` times the price. Terms are agreed per
(client, peer) pair for ``sla_term`` steps and renewed at the peer's *current posted* price when
they expire (the paper's adaptive pricing inside contracts; ``sla_term = 1`` re-prices every
request). :meth:`SlaBook.quote` is that policy.

With ``ledger.payments=escrow`` each hop is an on-chain escrow:

1. ``escrow_open`` (sent by the client): ``client -> sys:escrow``; refused if the client cannot pay;
2. ``escrow_settle`` (sent when the open is included): if the delivered time is within the promise,
   ``sys:escrow -> peer`` (release); otherwise ``sys:escrow -> client`` (refund) plus the penalty
   from the peer's stake to the client. A hop that was never served has delivered time ``inf``.

With ``ledger.payments=channels`` the payment goes through a channel
(:mod:`~p2pllm_abm.ledger.channels`) and a violated SLA withholds it and sends an ``sla_penalty``
transaction instead. Invariant (tested): ``balance(sys:escrow) == sum of open escrows``.
"""

from __future__ import annotations

import numpy as np

from .accounts import Ledger, share
from .chain import Chain
from .columns import GrowingColumns
from .registry import Registry

SUBMITTED, OPEN, RELEASED, REFUNDED, REJECTED = range(5)
STATUSES = ("submitted", "open", "released", "refunded", "rejected")


class SlaBook:
    """Terms per (client, peer), escrow contracts per request hop, and their handlers."""

    def __init__(self, ledger: Ledger, chain: Chain, registry: Registry, client_accounts: np.ndarray,
                 client_home: np.ndarray, n_peers: int, *, term: int, penalty: float):
        self.ledger, self.chain, self.registry = ledger, chain, registry
        self.client_accounts = np.asarray(client_accounts, dtype=np.int64)
        self.client_home = np.asarray(client_home, dtype=np.int64)
        self.term, self.penalty = term, penalty
        shape = (len(client_accounts), n_peers)
        self.term_price = np.zeros(shape, dtype=np.int64)  #: agreed price per (client, peer)
        self.term_expiry = np.full(shape, -1, dtype=np.int64)  #: last step the terms hold
        self.contracts_created = 0  #: terms agreed or renewed so far
        self.escrows = GrowingColumns(client=np.int64, peer=np.int64, amount=np.int64, penalty=np.int64,
                                      promised=float, delivered=float, status=np.int8, step=np.int64,
                                      commitment=np.uint64)
        self.settled_latency = 0  #: slots from request to settlement, summed over settled hops
        self.settled = 0
        chain.register("escrow_open", self._apply_open)
        chain.register("escrow_settle", self._apply_settle)
        chain.register("sla_penalty", self._apply_penalty)

    def quote(self, client: np.ndarray, peer: np.ndarray, posted: np.ndarray, step: int) -> np.ndarray:
        """The agreed price of each (client, peer) hop: the standing terms, or new terms at the
        peer's posted price ``posted`` (base units) where none hold at ``step``."""
        if self.term == 1:  # every request renews: the posted price, no standing terms to keep
            self.contracts_created += len(client)
            return posted
        expired = self.term_expiry[client, peer] < step
        renew_client, renew_peer = client[expired], peer[expired]
        self.term_price[renew_client, renew_peer] = posted[expired]
        self.term_expiry[renew_client, renew_peer] = step + self.term - 1
        self.contracts_created += int(expired.sum())
        return self.term_price[client, peer]

    # -- escrow ---------------------------------------------------------------------------------
    def open_escrows(self, client: np.ndarray, peer: np.ndarray, amount: np.ndarray, promised: np.ndarray,
                     delivered: np.ndarray, step: int, commitment: np.ndarray | None = None) -> None:
        """One escrow contract per hop, recording its request's ``commitment`` (the Merkle root of
        the path's hop fingerprints; 0 without verification); each sends its ``escrow_open``."""
        self._send("escrow_open", client, peer, amount, share(amount, self.penalty), promised, delivered, SUBMITTED,
                   step, commitment)

    def _apply_open(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        e = self.escrows
        ok = self.ledger.escrow_lock(self.client_accounts[e.client[refs]], self.registry.accounts[e.peer[refs]],
                                     e.amount[refs], refs, shards)
        e.status[refs] = np.where(ok, OPEN, REJECTED)
        opened = refs[ok]
        # the settlement is sent by whoever it pays: the peer (release) or the client (refund)
        kept = e.delivered[opened] <= e.promised[opened]
        sender = np.where(kept, self.registry.accounts[e.peer[opened]], self.client_accounts[e.client[opened]])
        self.chain.submit("escrow_settle", sender, opened, shards[ok])
        return ok

    def _apply_settle(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        e = self.escrows
        kept = e.delivered[refs] <= e.promised[refs]
        payee = np.where(kept, self.registry.accounts[e.peer[refs]], self.client_accounts[e.client[refs]])
        for outcome, mask in ((RELEASED, kept), (REFUNDED, ~kept)):
            rows = refs[mask]
            self.ledger.escrow_settle(rows, payee[mask], e.amount[rows], outcome == RELEASED, shards[mask])
            e.status[rows] = outcome
        self._take_penalties(refs[~kept])
        self.settled += len(refs)
        self.settled_latency += int((self.chain.slot - e.step[refs]).sum())
        return np.ones(len(refs), dtype=bool)

    # -- penalties (channels mode) -----------------------------------------------------------------
    def penalise(self, client: np.ndarray, peer: np.ndarray, amount: np.ndarray, promised: np.ndarray,
                 delivered: np.ndarray, step: int, commitment: np.ndarray | None = None) -> None:
        """Violated hops paid through channels: record them and send ``sla_penalty`` transactions."""
        self._send("sla_penalty", client, peer, np.zeros(len(client), np.int64), share(amount, self.penalty),
                   promised, delivered, REFUNDED, step, commitment)

    def _send(self, kind: str, client: np.ndarray, peer: np.ndarray, amount: np.ndarray, penalty: np.ndarray,
              promised: np.ndarray, delivered: np.ndarray, status: int, step: int,
              commitment: np.ndarray | None) -> None:
        """Record one row per hop and send its transaction from the client."""
        rows = self.escrows.append(client=client, peer=peer, amount=amount, penalty=penalty, promised=promised,
                                   delivered=delivered, status=np.full(len(client), status, np.int8),
                                   step=np.full(len(client), step),
                                   commitment=np.zeros(len(client), np.uint64) if commitment is None else commitment)
        self.chain.submit(kind, self.client_accounts[client], rows, self.registry.home_shard[peer],
                          self.client_home[client])

    def _apply_penalty(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        self._take_penalties(refs)
        return np.ones(len(refs), dtype=bool)

    def _take_penalties(self, refs: np.ndarray) -> None:
        e = self.escrows
        for row, peer, client, penalty in zip(refs.tolist(), e.peer[refs].tolist(), e.client[refs].tolist(),
                                              e.penalty[refs].tolist()):
            if penalty:
                self.registry.take_stake(peer, penalty, int(self.client_accounts[client]), "sla_penalty", ref=row)

    # -- views ----------------------------------------------------------------------------------
    def escrowed_per_peer(self, n_peers: int) -> np.ndarray:
        """Base units held in open escrows for each peer."""
        e = self.escrows
        rows = np.flatnonzero(e.status[: e.size] == OPEN)
        return np.bincount(e.peer[rows], e.amount[rows], minlength=n_peers).astype(np.int64)

    def escrow_in_contract(self) -> int:
        """What ``sys:escrow`` must hold: every open escrow."""
        e = self.escrows
        return int(e.amount[: e.size][e.status[: e.size] == OPEN].sum())
