"""Accounts and the journal: exact integer money (paper section 4, "facilitating secure payments").

Every amount is an integer number of *base units* (``ledger.unit`` of them make one price unit).
Every movement is one :class:`Journal` row ``step, block, shard, src, dst, amount, reason, ref``
between two accounts, and nothing else changes a balance, so

    sum over all accounts (system accounts included) == 0        at every step, exactly.

``sys:issuance`` is the only account allowed below zero: minted tokens come from it, so
``-balance(sys:issuance)`` is the total supply held by everybody else.

Balances are ``int64``. A balance never exceeds the supply and the supply is capped at
:data:`MAX_SUPPLY` (2^62), so no sum of balances can overflow.

Backends: :class:`Ledger` keeps balances in a numpy array. :class:`~p2pllm_abm.ledger.evm.EvmLedger`
subclasses it and keeps them in an in-process EVM instead. Both route every movement through
:meth:`Ledger.transfer_batch`, which journals it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: system accounts, created first in this order
SYSTEM_ACCOUNTS = ("sys:issuance", "sys:burn", "sys:treasury", "sys:escrow", "sys:channels", "sys:stake")
ISSUANCE = 0  #: index of sys:issuance, the one account that may go negative
#: the supply cap: balances (and any sum of them) stay below int64's 2^63
MAX_SUPPLY = 2**62

#: why money moved; the journal stores the index into this tuple
REASONS = (
    "genesis", "fee", "issuance", "bond", "unbond", "withdraw", "slash_burn", "slash_reward",
    "escrow_lock", "escrow_release", "escrow_refund", "sla_penalty",
    "channel_deposit", "channel_payout", "channel_penalty", "transfer", "verification_fee",
)
REASON = {name: code for code, name in enumerate(REASONS)}


#: fractions of amounts (penalties, slashes, rewards) are exact in parts per million
PPM = 1_000_000


def share(amount: int | np.ndarray, fraction: float) -> int | np.ndarray:
    """``floor(amount * fraction)`` in exact integer arithmetic, with ``fraction`` rounded to
    parts per million (the contracts compute the same). Split as ``(a // PPM) q + (a % PPM) q //
    PPM`` so that int64 arrays do not overflow."""
    q = round(fraction * PPM)
    return amount // PPM * q + amount % PPM * q // PPM


def challenge_payouts(channels: int, client: int, peer: int, bal_client: int, bal_peer: int, penalty: int,
                      client_cheated: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    """The movements that settle a channel on a newer state after a stale close: each side's
    balance, less ``penalty`` from the stale closer's, and the penalty to the challenger; as
    ``(src, dst, amount, reason)`` batches out of account ``channels``."""
    cheater_side = bal_client if client_cheated else bal_peer
    if not 0 <= penalty <= cheater_side:
        raise ValueError(f"penalty = {penalty} is invalid: allowed 0 <= penalty <= the closer's balance {cheater_side}")
    kept = np.array([bal_client - penalty, bal_peer] if client_cheated else [bal_client, bal_peer - penalty])
    moves = [(np.full(2, channels), np.array([client, peer]), kept, "channel_payout")]
    if penalty:
        moves.append((np.array([channels]), np.array([peer if client_cheated else client]), np.array([penalty]),
                      "channel_penalty"))
    return moves


class InsufficientFunds(ValueError):
    """A transfer would take an account below zero; nothing was changed."""

    def __init__(self, account: str, amount: int, balance: int):
        self.account, self.amount, self.balance = account, amount, balance
        super().__init__(f"transfer of {amount} from {account!r} refused: its balance is {balance}")


@dataclass
class Journal:
    """Every movement, as chunks (one per batch: its step, block and reason, and its rows'
    columns); :meth:`columns` joins them."""

    chunks: list[tuple] = field(default_factory=list)
    rows: int = 0

    COLUMNS = ("step", "block", "shard", "src", "dst", "amount", "reason", "ref")

    def append(self, step: int, block: int, shard: np.ndarray, src: np.ndarray, dst: np.ndarray,
               amount: np.ndarray, reason: int, ref: np.ndarray) -> None:
        if len(src):  # copies: a caller may reuse its arrays
            self.chunks.append((step, block, np.array(shard), np.array(src), np.array(dst), np.array(amount), reason,
                                np.array(ref)))
            self.rows += len(src)

    def columns(self) -> dict[str, np.ndarray]:
        if not self.chunks:
            return {name: np.zeros(0, np.int64) for name in self.COLUMNS}
        sizes = np.array([len(chunk[3]) for chunk in self.chunks])

        def joined(k: int, dtype: type) -> np.ndarray:
            return np.concatenate([np.broadcast_to(np.asarray(chunk[k], dtype=dtype), (n,))
                                   for chunk, n in zip(self.chunks, sizes.tolist())])

        return {
            "step": np.repeat(np.array([c[0] for c in self.chunks], np.int32), sizes),
            "block": np.repeat(np.array([c[1] for c in self.chunks], np.int32), sizes),
            "shard": joined(2, np.int16), "src": joined(3, np.int32), "dst": joined(4, np.int32),
            "amount": joined(5, np.int64),
            "reason": np.repeat(np.array([c[6] for c in self.chunks], np.int8), sizes),
            "ref": joined(7, np.int64),
        }


class Ledger:
    """Accounts with integer balances and the journal of every movement.

    >>> ledger = Ledger()
    >>> ledger.open_account("client:0")
    6
    >>> ledger.mint("client:0", 1_000, reason="genesis")
    >>> ledger.transfer("client:0", "sys:escrow", 400, reason="escrow_lock", ref=7)
    >>> ledger.balance("client:0"), ledger.balance("sys:escrow")
    (600, 400)
    >>> ledger.assert_conserved()

    ``step``, ``block`` and ``shard`` stamp the journal rows; the chain sets them as it runs.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._balance = np.zeros(64, dtype=np.int64)
        self.journal = Journal()
        self.step = 0
        self.block = -1
        for name in SYSTEM_ACCOUNTS:
            self.open_account(name)

    # -- accounts -------------------------------------------------------------------------------
    def open_account(self, name: str) -> int:
        """The index of account ``name``, created with balance 0 if new."""
        if name in self.index:
            return self.index[name]
        if not isinstance(name, str) or ":" not in name:
            raise ValueError(f"account = {name!r} is invalid: allowed 'peer:<id>', 'client:<k>' or 'sys:<name>'")
        k = len(self.names)
        if k == len(self._balance):
            self._balance = np.concatenate([self._balance, np.zeros(k, dtype=np.int64)])
        self.names.append(name)
        self.index[name] = k
        self._on_open(k)
        return k

    def open_accounts(self, names: list[str]) -> np.ndarray:
        return np.array([self.open_account(name) for name in names], dtype=np.int64)

    def resolve(self, account: str | int) -> int:
        """The index of ``account`` (a name or an index)."""
        if isinstance(account, (int, np.integer)):
            if not 0 <= account < len(self.names):
                raise ValueError(f"account = {account} is invalid: allowed an index in [0, {len(self.names)})")
            return int(account)
        if account not in self.index:
            raise ValueError(f"account = {account!r} is unknown: open it first")
        return self.index[account]

    def balance(self, account: str | int) -> int:
        return int(self.balances()[self.resolve(account)])

    def balances(self) -> np.ndarray:
        """Every account's balance, in account-index order (a copy for backends that own it)."""
        return self._balance[: len(self.names)]

    def total_supply(self) -> int:
        """Tokens minted and not destroyed: everything held outside ``sys:issuance``."""
        return -self.balance(ISSUANCE)

    # -- movements ------------------------------------------------------------------------------
    def transfer(self, src: str | int, dst: str | int, amount: int, reason: str, ref: int = -1,
                 shard: int = -1) -> None:
        """Move ``amount`` base units from ``src`` to ``dst``; raise :class:`InsufficientFunds`
        (changing nothing) if ``src`` cannot cover it."""
        s, d = self.resolve(src), self.resolve(dst)
        accepted = self.transfer_batch(np.array([s]), np.array([d]), np.array([amount]), reason,
                                       np.array([ref]), np.array([shard]))
        if not accepted[0]:
            raise InsufficientFunds(self.names[s], int(amount), self.balance(s))

    def mint(self, account: str | int, amount: int, reason: str = "issuance") -> None:
        """Create ``amount`` new tokens in ``account`` (a transfer from ``sys:issuance``)."""
        self.transfer(ISSUANCE, account, amount, reason)

    def transfer_batch(self, src: np.ndarray, dst: np.ndarray, amount: np.ndarray, reason: str,
                       ref: np.ndarray | int = -1, shard: np.ndarray | int = -1) -> np.ndarray:
        """Apply transfers row by row, in order, and return which were accepted.

        A row that would take its source below zero is refused and changes nothing; later rows
        still run (a credit earlier in the batch may fund them). This is exactly the sequential
        semantics; it is evaluated vectorised whenever no source is short for the batch as a whole
        (the common case), else row by row.
        """
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        amount = np.asarray(amount, dtype=np.int64)
        if reason not in REASON:
            raise ValueError(f"reason = {reason!r} is invalid: allowed one of {REASONS}")
        if len(src) and not 0 <= amount.min() <= amount.max() <= MAX_SUPPLY:
            raise ValueError(f"amount = {amount.min() if amount.min() < 0 else amount.max()} is invalid: "
                             f"allowed integers in [0, {MAX_SUPPLY}]")
        accepted = self._apply(src, dst, amount)
        if not accepted.all():
            keep = np.flatnonzero(accepted)
            src, dst, amount = src[keep], dst[keep], amount[keep]
            ref = ref if np.ndim(ref) == 0 else np.asarray(ref)[keep]
            shard = shard if np.ndim(shard) == 0 else np.asarray(shard)[keep]
        self.journal.append(self.step, self.block, shard, src, dst, amount, REASON[reason], ref)
        if len(src) and src.min() == ISSUANCE and self.total_supply() > MAX_SUPPLY:
            raise OverflowError(f"total supply {self.total_supply()} exceeds the cap {MAX_SUPPLY}")
        return accepted

    def _apply(self, src: np.ndarray, dst: np.ndarray, amount: np.ndarray) -> np.ndarray:
        """Move the money of every row that its source can cover, in order (numpy backend)."""
        balance = self._balance
        need = np.zeros(len(self.names), dtype=np.int64)
        np.add.at(need, src, amount)
        short = need > balance[: len(self.names)]
        short[ISSUANCE] = False
        if not short[src].any():
            np.subtract.at(balance, src, amount)
            np.add.at(balance, dst, amount)
            return np.ones(len(src), dtype=bool)
        accepted = np.zeros(len(src), dtype=bool)
        for k, (s, d, a) in enumerate(zip(src.tolist(), dst.tolist(), amount.tolist())):
            if s == ISSUANCE or balance[s] >= a:
                balance[s] -= a
                balance[d] += a
                accepted[k] = True
        return accepted

    def _on_open(self, index: int) -> None:
        """Hook for backends that keep balances elsewhere."""

    # -- contract operations ----------------------------------------------------------------------
    # The escrow and channel contracts move money only through these. Here they are plain
    # transfers (the contracts' rules are checked by their Python owners); the EVM backend runs
    # them as calls into the Vyper contracts, which check the same rules again.
    def escrow_lock(self, client: np.ndarray, provider: np.ndarray, amount: np.ndarray, job: np.ndarray,
                    shard: np.ndarray) -> np.ndarray:
        """Lock ``amount`` from each ``client`` in escrow job ``job``; which succeeded."""
        return self.transfer_batch(client, np.full(len(client), self.index["sys:escrow"]), amount, "escrow_lock",
                                   ref=job, shard=shard)

    def escrow_settle(self, job: np.ndarray, payee: np.ndarray, amount: np.ndarray, release: bool,
                      shard: np.ndarray) -> None:
        """Pay each locked job out to ``payee``: the provider (``release``) or the client (refund)."""
        self.transfer_batch(np.full(len(job), self.index["sys:escrow"]), payee, amount,
                            "escrow_release" if release else "escrow_refund", ref=job, shard=shard)

    def channel_deposit(self, client: np.ndarray, peer: np.ndarray, amount: np.ndarray, channel: np.ndarray,
                        shard: np.ndarray) -> np.ndarray:
        """Fund each new ``channel`` with the client's deposit; which succeeded."""
        return self.transfer_batch(client, np.full(len(client), self.index["sys:channels"]), amount,
                                   "channel_deposit", ref=channel, shard=shard)

    def channel_close(self, channel: int, client: int, peer: int, bal_client: int, bal_peer: int, shard: int) -> None:
        """Pay out a channel cooperatively closed, or finalized after its challenge window."""
        self.transfer_batch(np.full(2, self.index["sys:channels"]), np.array([client, peer]),
                            np.array([bal_client, bal_peer]), "channel_payout", ref=channel, shard=shard)

    def channel_close_unilateral(self, channel: int, nonce: int, bal_client: int, bal_peer: int,
                                 closer_is_client: bool) -> None:
        """A state published to start the challenge window (no money moves)."""

    def channel_challenge(self, channel: int, client: int, peer: int, nonce: int, bal_client: int, bal_peer: int,
                          penalty: int, client_cheated: bool, shard: int) -> None:
        """Settle a channel on a newer state than the one published; ``penalty`` moves from the
        stale closer's side to the challenger."""
        for src, dst, amount, reason in challenge_payouts(self.index["sys:channels"], client, peer, bal_client,
                                                          bal_peer, penalty, client_cheated):
            self.transfer_batch(src, dst, amount, reason, ref=channel, shard=shard)

    # -- checks and outputs ---------------------------------------------------------------------
    def assert_conserved(self) -> None:
        """Raise AssertionError unless every balance sums to exactly 0 (Python integers, no
        overflow) and no account but ``sys:issuance`` is negative."""
        balances = self.balances()
        total = sum(int(b) for b in balances.tolist())
        assert total == 0, f"ledger not conserved: the balances sum to {total}, not 0"
        negative = np.flatnonzero(balances < 0)
        negative = negative[negative != ISSUANCE]
        assert not len(negative), f"account {self.names[negative[0]]!r} is negative: {balances[negative[0]]}"

    def is_conserved(self) -> bool:
        try:
            self.assert_conserved()
        except AssertionError:
            return False
        return True

    def journal_frame(self) -> pd.DataFrame:
        """The journal as a table (``ledger.parquet``): ``src``/``dst`` as account names and
        ``reason`` as its name, both categorical."""
        columns = self.journal.columns()
        names = pd.Categorical.from_codes
        frame = pd.DataFrame(columns)
        categories = list(self.names)
        frame["src"] = names(columns["src"], categories=categories)
        frame["dst"] = names(columns["dst"], categories=categories)
        frame["reason"] = names(columns["reason"].astype(np.int64), categories=list(REASONS))
        return frame
