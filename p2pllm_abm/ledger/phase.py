"""The contracts phase (paper 5.1, phase 4): the market's payments settled on the ledger.

:class:`MarketLedger` builds the accounts, chain, registry and contracts of a run from
``config.ledger`` and, each step, takes what the jitted market tick produced as arrays:

- ``paid``: ``(clients, n_stages)`` peer ids of every paid hop (``-1``: no request or no hop),
- the prices those requests were quoted,

and settles all hops of the step at once (:meth:`MarketLedger.settle`): SLA terms are agreed or
renewed (:meth:`~p2pllm_abm.ledger.contracts.SlaBook.quote`), then each hop is paid through an
escrow or a channel. :meth:`MarketLedger.advance` posts moved prices, lets counterparties watch
their channels and produces the slot's blocks. There is no Python loop over requests.

Genesis: every client gets ``client_endowment`` and every peer ``peer_endowment`` from
``sys:issuance``; every peer registers, bonding ``initial_stake``, in the genesis block (slot 0).
Clients live in shard ``k mod shards``; a peer's registry entry, SLAs and channels in the shard of
its first stage (``ledger.sharding=stage``), so a client paying a peer of another shard sends a
cross-shard transaction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..config import LedgerConfig
from ..network import PeerTable, latency
from .accounts import Ledger
from .chain import Chain
from .channels import Channels
from .contracts import SlaBook
from .registry import Registry
from .signatures import Keyring


def make_ledger(config: LedgerConfig) -> Ledger:
    """The account store of ``ledger.backend``."""
    if config.backend == "evm":
        from .evm import EvmLedger

        return EvmLedger(config.challenge_window, config.stale_penalty)
    return Ledger()


def assert_books(ledger: Ledger, registry: Registry, sla: SlaBook, channels: Channels | None) -> None:
    """Conservation; every contract account holding exactly what its records say; and every
    channel's two sides summing to its deposit. Raises AssertionError naming what is off."""
    ledger.assert_conserved()
    for account, expected in (("sys:stake", registry.stake_in_contract()), ("sys:escrow", sla.escrow_in_contract()),
                              ("sys:channels", channels.locked_in_contract() if channels else 0)):
        assert ledger.balance(account) == expected, f"{account} holds {ledger.balance(account)}, records say {expected}"
    if channels is not None:
        cols = channels.c
        sides = cols.bal_client[: cols.size] + cols.bal_peer[: cols.size]
        unequal = np.flatnonzero(sides != cols.deposit[: cols.size])
        assert not len(unequal), f"channel {unequal[:1].tolist()} sides sum to {sides[unequal[:1]].tolist()}, not its deposit"


class MarketLedger:
    """Accounts, chain, registry, SLAs and channels of one run, driven by the model."""

    def __init__(self, config: LedgerConfig, peers: PeerTable, n_clients: int, seed: int,
                 stake: np.ndarray | None = None, claimed_cost: np.ndarray | None = None,
                 stale_clients: np.ndarray | None = None):
        """``stake`` (each peer's registration bond; default ``initial_stake``), ``claimed_cost``
        (the c_i peers register; default their true cost) and ``stale_clients`` (clients that
        publish stale channel states) come from :mod:`p2pllm_abm.behaviours`."""
        self.config = config
        ledger = self.ledger = make_ledger(config)
        n = len(peers)
        peer_accounts = ledger.open_accounts([f"peer:{i}" for i in range(n)])
        client_accounts = ledger.open_accounts([f"client:{k}" for k in range(n_clients)])
        ledger.block = 0
        ledger.transfer_batch(np.zeros(n + n_clients, np.int64), np.concatenate([peer_accounts, client_accounts]),
                              np.repeat([config.peer_endowment, config.client_endowment], [n, n_clients]), "genesis")
        self.n_shards = peers.n_stages if config.sharding == "stage" else 1
        peer_home = peers.stage_start.copy() if config.sharding == "stage" else np.zeros(n, np.int64)
        client_home = np.arange(n_clients) % self.n_shards
        self.chain = Chain(ledger, self.n_shards, config.block_capacity, config.tx_fee,
                           config.fee_destination == "proposer", config.slots_per_epoch, config.issuance_per_epoch,
                           config.attestation_rate, config.cross_shard_delay, seed)
        self.registry = Registry(ledger, self.chain, peer_accounts, peer_home, min_stake=config.min_stake,
                                 max_effective_stake=config.max_effective_stake,
                                 unbonding_delay=config.unbonding_delay,
                                 whistleblower_share=config.whistleblower_share, price_tick=config.price_tick)
        members = np.flatnonzero(peers.present)  # spare rows (churn) register when a peer joins
        stake = np.full(n, config.initial_stake, np.int64) if stake is None else stake
        claimed = peers.cost if claimed_cost is None else claimed_cost
        self.registry.register_genesis(members, stake[members], peers.price[members], claimed[members],
                                       np.stack([peers.stage_start, peers.stage_end], axis=1)[members],
                                       peers.position[members])
        self.sla = SlaBook(ledger, self.chain, self.registry, client_accounts, client_home, n,
                           term=config.sla_term, penalty=config.sla_penalty)
        self.channels = None
        if config.payments == "channels":
            self.channels = Channels(ledger, self.chain, Keyring(config.signatures, seed), client_accounts,
                                     client_home, peer_accounts, peer_home, deposit=config.channel_deposit,
                                     challenge_window=config.challenge_window, stale_penalty=config.stale_penalty,
                                     sign_updates=config.signatures != "stub",
                                     stale_clients=np.zeros(n_clients, bool) if stale_clients is None else stale_clients)
        self.requests = 0  #: paid requests (at least one hop) so far
        self.hops = 0  #: paid hops so far
        self.unpaid_hops = 0  #: hops not paid (a zero price, or a violated SLA)
        self.failed_hops = 0  #: hops whose peer failed mid-request (penalised, not paid)
        self._window_requests = 0

    # -- the phase ------------------------------------------------------------------------------
    @staticmethod
    def paid_hops(paid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The paid hops of ``paid`` as (client, column, peer), in the order :meth:`settle` uses."""
        client, hop = np.nonzero(paid >= 0)
        return client, hop, paid[client, hop]

    def settle(self, step: int, paid: np.ndarray, quoted: np.ndarray, peers: PeerTable,
               client_position: np.ndarray, failed: np.ndarray | None = None,
               commitments: np.ndarray | None = None) -> None:
        """Settle every paid hop of ``step``: SLA terms, then escrows or channel payments. A
        ``failed`` hop (in :meth:`paid_hops` order: dropped, or caught delivering a wrong output)
        settles as a violated SLA; ``commitments`` (per client: its request's Merkle root) are
        recorded with the hops' SLAs."""
        hops = paid >= 0
        client, hop, peer = self.paid_hops(paid)
        requests = int(hops.any(axis=1).sum())
        self._window_requests += requests
        self.requests += requests
        self.hops += len(peer)
        if not len(peer):
            return
        price = self.sla.quote(client, peer, np.floor(quoted[peer] * self.config.unit).astype(np.int64), step)
        priced = price > 0
        self.unpaid_hops += int((~priced).sum())
        # an SLA can only be missed by a peer that left, failed, or registered less than its cost
        # (latency is in both the promise and the delivery); without one, channels just pay
        may_miss = ~peers.alive[peer] | (self.registry.cost[peer] < peers.cost[peer])
        if self.channels is not None and not (may_miss.any() or (failed is not None and failed.any())):
            self.channels.pay(client[priced], peer[priced], price[priced], step)
            return
        before = np.where(hop > 0, paid[client, np.maximum(hop - 1, 0)], -1)
        origin = np.where((before >= 0)[:, None], peers.position[np.maximum(before, 0)], client_position[client])
        hop_latency = latency(origin, peers.position[peer], peers.latency_range)
        promised = self.registry.cost[peer] + hop_latency
        delivered = np.where(peers.alive[peer], peers.cost[peer] + hop_latency, np.inf)
        if failed is not None:
            delivered = np.where(failed, np.inf, delivered)
        client, peer, price = client[priced], peer[priced], price[priced]
        promised, delivered = promised[priced], delivered[priced]
        root = None if commitments is None else commitments[client]
        if self.channels is None:
            self.sla.open_escrows(client, peer, price, promised, delivered, step, root)
            return
        kept = delivered <= promised
        self.unpaid_hops += int((~kept).sum())
        self.channels.pay(client[kept], peer[kept], price[kept], step)
        self.sla.penalise(client[~kept], peer[~kept], price[~kept], promised[~kept], delivered[~kept], step,
                          None if root is None else root[~kept])

    def join(self, rows: np.ndarray, peers: PeerTable) -> None:
        """Peers ``rows`` join (churn): registered with their price, cost, span and position now,
        their ``initial_stake`` bonded by a transaction in their home shard's next block."""
        registry = self.registry
        if self.config.sharding == "stage":
            registry.home_shard[rows] = peers.stage_start[rows]  # the channels read the same array
        registry.registered[rows] = True
        registry.posted_price[rows] = registry.sent_price[rows] = peers.price[rows]
        registry.cost[rows] = peers.cost[rows]
        registry.span[rows] = np.stack([peers.stage_start[rows], peers.stage_end[rows]], axis=1)
        registry.position[rows] = peers.position[rows]
        registry.submit_bond(rows, np.full(len(rows), self.config.initial_stake, np.int64))

    def leave(self, rows: np.ndarray) -> None:
        """Peers ``rows`` leave (churn): deregistered, their bond unbonding."""
        for row in rows.tolist():
            self.registry.force_exit(row)

    def penalise_failed(self, step: int, failed: np.ndarray, quoted: np.ndarray, peers: PeerTable) -> None:
        """Hops whose peer failed mid-request (``failed``: ``(clients, n_stages)`` peer ids, ``-1``
        elsewhere; the client failed over and paid the replacement): each settles as a violated SLA,
        nothing paid to the failed peer and ``sla_penalty`` times its price taken from its stake."""
        client, _, peer = self.paid_hops(failed)
        if not len(peer):
            return
        price = self.sla.quote(client, peer, np.floor(quoted[peer] * self.config.unit).astype(np.int64), step)
        priced = price > 0
        self.failed_hops += len(peer)
        client, peer, price = client[priced], peer[priced], price[priced]
        self.sla.penalise(client, peer, price, self.registry.cost[peer], np.full(len(peer), np.inf), step)

    def advance(self, price: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Post moved prices, watch channels, produce this slot's blocks and pay out matured
        unbondings; return the peers that left the registry (their stake fell below the minimum)."""
        self.registry.post_prices(price, alive)
        if self.channels is not None:
            self.channels.watch()
        self.chain.advance()
        self.registry.withdraw_matured()
        if self.config.check_every_step:
            self.assert_invariants()
        exited, self.registry.exited = np.array(self.registry.exited, dtype=np.int64), []
        return exited

    # -- checks ---------------------------------------------------------------------------------
    def assert_invariants(self) -> None:
        """:func:`assert_books` of this run's ledger and contracts."""
        assert_books(self.ledger, self.registry, self.sla, self.channels)

    # -- outputs --------------------------------------------------------------------------------
    def peer_columns(self) -> dict[str, np.ndarray]:
        """``balance``, bonded ``stake`` and ``escrowed`` (earned, not yet on the balance: open
        escrows, or the peer's side of open channels) per peer, in base units."""
        n = len(self.registry.accounts)
        escrowed = self.sla.escrowed_per_peer(n)
        if self.channels is not None:
            escrowed = escrowed + self.channels.owed_to_peers(n)
        return {"balance": self.ledger.balances()[self.registry.accounts].copy(),
                "stake": self.registry.bonded.copy(), "escrowed": escrowed}

    def shard_rows(self) -> pd.DataFrame:
        """Per-shard chain statistics since the previous record (``scope = "shard"``)."""
        return self.chain.shard_statistics()

    def chain_row(self) -> dict[str, Any]:
        """Chain-wide figures now (``scope = "chain"``), with the requests paid since the previous
        row (``window_requests``; the window then restarts, like the shards')."""
        requests, self._window_requests = self._window_requests, 0
        return {**self.chain.chain_statistics(self.registry.effective_stake()), **self._holdings(),
                "window_requests": requests}

    def _holdings(self) -> dict[str, Any]:
        """Supply, conservation and what the system accounts hold."""
        ledger = self.ledger
        return {"total_supply": ledger.total_supply(), "conserved": ledger.is_conserved(),
                "staked": ledger.balance("sys:stake"), "escrow_locked": ledger.balance("sys:escrow"),
                "channel_locked": ledger.balance("sys:channels"), "burned": ledger.balance("sys:burn")}

    def summary(self) -> dict[str, Any]:
        """The ``ledger`` block of summary.json."""
        chain, sla, ch = self.chain, self.sla, self.channels
        settled = ch.settled if ch else sla.settled
        settled_latency = ch.settled_latency if ch else sla.settled_latency
        return {
            "backend": self.config.backend, "payments": self.config.payments,
            "signatures": self.config.signatures, "sharding": self.config.sharding,
            "registry_view": self.config.registry_view,
            "journal_rows": self.ledger.journal.rows,
            "requests_paid": self.requests, "hops_paid": self.hops, "unpaid_hops": self.unpaid_hops,
            "failed_hops": self.failed_hops,
            "transactions_submitted": int(chain.total_submitted),
            "transactions_included": int(chain.total_included),
            "transactions_failed": int(chain.total_failed),
            "onchain_tx_per_request": chain.total_submitted / self.requests if self.requests else None,
            "mean_confirmation_latency_slots": chain.total_latency / chain.total_included if chain.total_included else None,
            "mean_settlement_latency_slots": settled_latency / settled if settled else None,
            "contracts_created": sla.contracts_created,
            "channels_opened": int(ch.c.size) if ch else 0,
            # agreed but not yet in a channel: waiting for an open, or the client cannot fund one
            "owed": int(ch.owed.sum()) if ch else 0,
            "channel_updates": int(ch.updates) if ch else 0,
            **self.chain.chain_statistics(self.registry.effective_stake()),
            **self._holdings(),
        }
