"""The proof-of-stake chain (paper section 4.1): slots, stake-weighted proposers, blocks of bounded
capacity per shard, fees, issuance and Casper-FFG-like finality.

One model step is one slot. In every slot each shard's proposer is drawn with probability
proportional to effective stake (``min(bonded, max_effective_stake)``; :func:`draw_proposers`,
counter-based on ``(seed, slot)`` so a slot's draw depends on nothing else) and packs at
most ``block_capacity`` ready transactions of its shard, first come first served. A transaction
sent from another shard (a client paying a peer of stage ``s``, a receipt) is ready
``cross_shard_delay`` slots after it was sent. Every included transaction pays ``tx_fee`` to its
block's proposer (or to ``sys:burn``); one that cannot pay fails and does nothing.

A block applies its transactions grouped by kind, in :data:`KINDS` order, each group in arrival
order; each kind's effect is a handler registered by the contract that owns it
(:meth:`Chain.register`), called with the group's payload references and returning which
succeeded.

At the last slot of each epoch ``issuance_per_epoch`` base units are minted to validators in
proportion to effective stake and added to their stake, as Ethereum's rewards are (floored; the
remainder goes to ``sys:treasury``), and every
validator attests with probability ``attestation_rate``. An epoch is *justified* when the stake
attesting is at least 2/3 of the total, and epoch ``e - 1`` is *finalized* when ``e - 1`` and
``e`` are both justified (Casper FFG with k = 1): every block up to the end of ``e - 1`` is final.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from .accounts import Ledger

#: transaction kinds, in the order a block applies them
KINDS = (
    "bond", "unbond", "price", "escrow_open", "escrow_settle", "sla_penalty",
    "channel_open", "channel_close", "channel_close_unilateral", "channel_challenge", "channel_finalize",
)
KIND = {name: code for code, name in enumerate(KINDS)}

#: a handler applies included transactions: (payload refs, shards) -> accepted mask
Handler = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Validators(Protocol):
    """What the chain needs of its validator set (the registry)."""

    accounts: np.ndarray

    def effective_stake(self) -> np.ndarray: ...

    def reward(self, peers: np.ndarray, amounts: np.ndarray) -> None: ...

#: per-shard columns of metrics.parquet (scope "shard"), accumulated between two records
SHARD_METRICS = ("tx_submitted", "tx_included", "tx_failed", "queue", "block_fill", "confirmation_latency",
                 "cross_shard_share")


def _counter_words(seed: int, slot: int, stream: int, count: int) -> list[int]:
    """``count`` pseudo-random 128-bit integers, a function of ``(seed, slot, stream)`` alone:
    SHA-256 in counter mode (two words per digest)."""
    words = []
    for block in range((count + 1) // 2):
        digest = hashlib.sha256(struct.pack(">QQQQ", seed, slot, stream, block)).digest()
        words += [int.from_bytes(digest[:16], "big"), int.from_bytes(digest[16:], "big")]
    return words[:count]


def draw_proposers(seed: int, slot: int, stake: np.ndarray, n_shards: int) -> np.ndarray:
    """Each shard's proposer for ``slot``: validator ``i`` with probability ``stake[i] / stake.sum()``
    (an integer draw below the total, biased by at most ``total / 2^128``), counter-based on
    ``(seed, slot)``; ``-1`` for every shard when no stake is bonded."""
    total = int(stake.sum())
    if total <= 0:
        return np.full(n_shards, -1)
    draws = np.array([word % total for word in _counter_words(seed, slot, 0, n_shards)], dtype=np.int64)
    return np.searchsorted(np.cumsum(stake), draws, side="right")


def attesters(seed: int, slot: int, validators: int, rate: float) -> np.ndarray:
    """Which validators attest at ``slot`` (each independently with probability ``rate``)."""
    if rate >= 1.0:
        return np.ones(validators, dtype=bool)
    rng = np.random.Generator(np.random.Philox(key=seed, counter=[slot, 1, 0, 0]))
    return rng.random(validators) < rate


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (0: all equal; -> 1: one holds everything);
    NaN for an empty or all-zero vector."""
    x = np.sort(np.asarray(values, dtype=float))
    if len(x) == 0 or x.sum() <= 0:
        return float("nan")
    n = len(x)
    return float((2.0 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def nakamoto_coefficient(stake: np.ndarray, threshold: float = 1.0 / 3.0) -> int:
    """The fewest validators whose stake exceeds ``threshold`` of the total (1/3 can halt BFT
    finality); 0 when nothing is staked."""
    s = np.sort(np.asarray(stake, dtype=float))[::-1]
    if s.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(s), threshold * s.sum(), side="right") + 1)


class Mempool:
    """Pending transactions of every shard, as columns in arrival order. New transactions wait in
    a list until the next block is built (one concatenation per slot)."""

    COLUMNS = ("kind", "sender", "ref", "shard", "sent", "ready", "cross")
    DTYPES = (np.int8, np.int64, np.int64, np.int64, np.int64, np.int64, bool)

    def __init__(self) -> None:
        self.columns = {name: np.zeros(0, dtype) for name, dtype in zip(self.COLUMNS, self.DTYPES)}
        self.arrivals: list[tuple[np.ndarray, ...]] = []

    def __len__(self) -> int:
        return len(self.columns["kind"]) + sum(len(batch[0]) for batch in self.arrivals)

    def extend(self, *columns: np.ndarray) -> None:
        self.arrivals.append(columns)

    def merged(self) -> dict[str, np.ndarray]:
        """Every pending transaction (the arrivals appended in order)."""
        if self.arrivals:
            self.columns = {name: np.concatenate([self.columns[name], *(batch[k] for batch in self.arrivals)])
                            for k, name in enumerate(self.COLUMNS)}
            self.arrivals = []
        return self.columns

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Remove ``rows`` (sorted indices into :meth:`merged`) and return their columns."""
        columns = self.merged()
        keep = np.ones(len(columns["kind"]), dtype=bool)
        keep[rows] = False
        taken = {name: values[rows] for name, values in columns.items()}
        self.columns = {name: values[keep] for name, values in columns.items()}
        return taken


class Chain:
    """Slots, blocks and finality over a :class:`~p2pllm_abm.ledger.accounts.Ledger`.

    The validator set is ``validators`` (the :class:`~p2pllm_abm.ledger.registry.Registry`
    attaches itself): its ``effective_stake()`` (0 for a non-validator), ``accounts`` (ledger
    account of each peer) and ``reward(peers, amounts)`` (issuance added to their stake).
    """

    def __init__(self, ledger: Ledger, n_shards: int, block_capacity: int, tx_fee: int, fee_to_proposer: bool,
                 slots_per_epoch: int, issuance_per_epoch: int, attestation_rate: float, cross_shard_delay: int,
                 seed: int):
        self.ledger = ledger
        self.n_shards = n_shards
        self.block_capacity = block_capacity
        self.tx_fee = tx_fee
        self.fee_to_proposer = fee_to_proposer
        self.slots_per_epoch = slots_per_epoch
        self.issuance_per_epoch = issuance_per_epoch
        self.attestation_rate = attestation_rate
        self.cross_shard_delay = cross_shard_delay
        self.seed = seed
        self.validators: Validators | None = None
        self.handlers: dict[int, Handler] = {}
        self.mempool = Mempool()
        self.slot = 0  #: the genesis slot; advance() produces slot 1, 2, ... (one per model step)
        self.blocks = 1  #: the genesis block holds the registrations
        self.total_submitted = self.total_included = self.total_failed = self.total_latency = 0
        self.justified: list[bool] = []
        self.finalized_slot = -1  #: every block at or before this slot is final
        self.proposals = np.zeros(0, dtype=np.int64)  #: blocks proposed per validator (peer)
        self._reset_window()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[KIND[kind]] = handler

    # -- transactions ---------------------------------------------------------------------------
    def submit(self, kind: str, sender: np.ndarray, ref: np.ndarray, shard: np.ndarray,
               home: np.ndarray | None = None) -> None:
        """Queue transactions of ``kind`` paid by accounts ``sender`` for execution in ``shard``;
        a transaction whose sender's ``home`` shard differs is cross-shard (ready later)."""
        n = len(sender)
        if n == 0:
            return
        shard = np.broadcast_to(np.asarray(shard, dtype=np.int64), (n,))
        cross = np.zeros(n, bool) if home is None else np.broadcast_to(np.asarray(home) != shard, (n,))
        sent = np.full(n, self.slot + 1, dtype=np.int64)  # the next slot is the first that may include it
        self.mempool.extend(np.full(n, KIND[kind], np.int8), np.asarray(sender, np.int64),
                            np.broadcast_to(np.asarray(ref, np.int64), (n,)), shard, sent,
                            sent + self.cross_shard_delay * cross, cross)
        self._submitted += np.bincount(shard, minlength=self.n_shards)
        self.total_submitted += n

    # -- slots ----------------------------------------------------------------------------------
    def advance(self) -> None:
        """Produce the next slot's blocks, then, at an epoch's last slot, issuance and finality."""
        self.slot += 1
        slot = self.ledger.step = self.slot
        stake = self.validators.effective_stake()
        if len(self.proposals) < len(stake):
            self.proposals = np.concatenate([self.proposals, np.zeros(len(stake) - len(self.proposals), np.int64)])
        proposer = draw_proposers(self.seed, slot, stake, self.n_shards)
        if proposer[0] >= 0:
            self._produce_blocks(slot, proposer)
        if (slot + 1) % self.slots_per_epoch == 0:
            self._end_epoch(slot, stake)
        self._queue_sum += np.bincount(self.mempool.merged()["shard"], minlength=self.n_shards)
        self._slots += 1

    def _produce_blocks(self, slot: int, proposer: np.ndarray) -> None:
        pool = self.mempool.merged()
        ready = np.flatnonzero(pool["ready"] <= slot)
        shard = pool["shard"][ready]
        order = np.argsort(shard, kind="stable")
        first = np.searchsorted(shard[order], np.arange(self.n_shards))
        rank = np.arange(len(ready)) - first[shard[order]]
        chosen = np.sort(ready[order[rank < self.block_capacity]])
        self.ledger.block = self.blocks
        np.add.at(self.proposals, proposer, 1)
        self.blocks += 1
        if len(chosen) == 0:
            return
        txs = self.mempool.take(chosen)
        account = self.validators.accounts
        collector = account[proposer][txs["shard"]] if self.fee_to_proposer else np.full(len(chosen), self.ledger.index["sys:burn"])
        paid = self.ledger.transfer_batch(txs["sender"], collector, np.full(len(chosen), self.tx_fee), "fee",
                                          ref=np.arange(len(chosen)), shard=txs["shard"])
        ok = paid.copy()
        for code in np.unique(txs["kind"]):
            rows = np.flatnonzero((txs["kind"] == code) & paid)
            if len(rows):
                ok[rows] = self.handlers[int(code)](txs["ref"][rows], txs["shard"][rows])
        self.total_included += len(chosen)
        self.total_failed += int((~ok).sum())
        self.total_latency += int((slot - txs["sent"]).sum())
        def per_shard(weights: np.ndarray | None = None) -> np.ndarray:
            return np.bincount(txs["shard"], weights, minlength=self.n_shards).astype(np.int64)

        self._included += per_shard()
        self._failed += per_shard(~ok)
        self._latency += per_shard(slot - txs["sent"])
        self._cross += per_shard(txs["cross"])

    def _end_epoch(self, slot: int, stake: np.ndarray) -> None:
        validators = np.flatnonzero(stake > 0)
        total = int(stake.sum())
        if self.issuance_per_epoch > 0 and total > 0:
            reward = [int(s) * self.issuance_per_epoch // total for s in stake[validators].tolist()]
            self.validators.reward(validators, np.array(reward, dtype=np.int64))
            self.ledger.transfer(0, "sys:treasury", self.issuance_per_epoch - sum(reward), "issuance")
        voted = attesters(self.seed, slot, len(validators), self.attestation_rate)
        attesting = int(stake[validators][voted].sum())
        self.justified.append(total > 0 and 3 * attesting >= 2 * total)
        if len(self.justified) >= 2 and self.justified[-1] and self.justified[-2]:
            self.finalized_slot = slot - self.slots_per_epoch

    # -- metrics --------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._submitted, self._included, self._failed, self._latency, self._cross, self._queue_sum = (
            np.zeros(self.n_shards, dtype=np.int64) for _ in range(6))
        self._slots = 0

    def shard_statistics(self) -> pd.DataFrame:
        """One row per shard with :data:`SHARD_METRICS` over the slots since the last call (then
        reset): transactions submitted, included and failed, mean queue length, mean block fill,
        mean confirmation latency in slots, and the share of included transactions that crossed
        shards."""
        slots = max(self._slots, 1)
        included = self._included
        with np.errstate(invalid="ignore", divide="ignore"):
            frame = pd.DataFrame({
                "shard": np.arange(self.n_shards),
                "tx_submitted": self._submitted, "tx_included": included, "tx_failed": self._failed,
                "queue": self._queue_sum / slots,
                "block_fill": included / (slots * self.block_capacity),
                "confirmation_latency": np.where(included > 0, self._latency / included, np.nan),
                "cross_shard_share": np.where(included > 0, self._cross / included, np.nan),
            })
        self._reset_window()
        return frame

    def chain_statistics(self, stake: np.ndarray) -> dict[str, float]:
        """Chain-wide figures at this slot: stake concentration and finality."""
        bonded = stake[stake > 0]
        return {
            "slot": self.slot, "blocks": self.blocks, "validators": int(len(bonded)),
            "stake_gini": gini(bonded) if len(bonded) else None,  # None: no validator left
            "nakamoto_coefficient": nakamoto_coefficient(bonded),
            "finalized_slot": self.finalized_slot,
            "finality_lag": self.slot - self.finalized_slot,
            "mempool": len(self.mempool),
        }
