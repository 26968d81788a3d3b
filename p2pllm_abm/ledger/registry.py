"""The node registry and the registration contract (paper sections 4.1-4.2).

Registration records a peer's ``(span, c_i, p_i, stake, position)`` and bonds at least
``ledger.min_stake`` base units into ``sys:stake``. Bonded stake makes the peer a validator
(effective stake ``min(bonded, max_effective_stake)``). ``unbond`` starts an unbonding that pays
out after ``unbonding_delay`` slots; stake still unbonding can be slashed. :meth:`Registry.slash`
takes ``floor(fraction * (bonded + unbonding))``: ``floor(whistleblower_share * amount)`` to the
reporter and the rest to ``sys:burn`` (Ethereum's split, routed through accounts so the ledger
stays conserved). A peer whose bonded stake falls below ``min_stake`` exits: it is deregistered,
its remaining bond starts unbonding, and the model takes it out of the market.

Price updates are transactions: a peer posts its price when it has moved by at least
``price_tick`` since its last post; the registry's ``posted_price`` changes when the post is
included in a block. Routing reads ``posted_price`` under ``ledger.registry_view=confirmed``.

Invariant (tested): ``balance(sys:stake) == bonded.sum() + unbonding amounts``.
"""

from __future__ import annotations

import numpy as np

from .accounts import Ledger, share
from .chain import Chain
from .columns import GrowingColumns


class Registry:
    """Registered peers, their stake and posted prices; the registration contract's handlers."""

    def __init__(self, ledger: Ledger, chain: Chain, accounts: np.ndarray, home_shard: np.ndarray, *,
                 min_stake: int, max_effective_stake: int | None, unbonding_delay: int,
                 whistleblower_share: float, price_tick: float):
        n = len(accounts)
        self.ledger, self.chain = ledger, chain
        self.accounts = np.asarray(accounts, dtype=np.int64)  #: ledger account of each peer
        self.home_shard = np.asarray(home_shard, dtype=np.int64)
        self.min_stake, self.max_effective_stake = min_stake, max_effective_stake
        self.unbonding_delay = unbonding_delay
        self.whistleblower_share = whistleblower_share
        self.price_tick = price_tick
        self.registered = np.zeros(n, dtype=bool)
        self.bonded = np.zeros(n, dtype=np.int64)
        self.posted_price = np.zeros(n)  #: the confirmed registry price (what routing reads when confirmed)
        self.sent_price = np.zeros(n)  #: the last price sent on chain (confirmed or not)
        self.cost = np.zeros(n)  #: registered c_i
        self.span = np.zeros((n, 2), dtype=np.int64)  #: registered [first stage, end)
        self.position = np.zeros((n, 2))  #: registered position (latencies follow from it)
        self.exited: list[int] = []  #: peers that left since the model last looked
        self.unbonding = GrowingColumns(peer=np.int64, amount=np.int64, release=np.int64)
        self.orders = GrowingColumns(peer=np.int64, amount=np.int64, price=float)  #: bond, unbond and price transactions
        self.stake_account = ledger.index["sys:stake"]
        for kind, handler in (("bond", self._apply_bond), ("unbond", self._apply_unbond), ("price", self._apply_price)):
            chain.register(kind, handler)
        chain.validators = self

    # -- registration ---------------------------------------------------------------------------
    def register_genesis(self, peers: np.ndarray, stake: np.ndarray, price: np.ndarray, cost: np.ndarray,
                         span: np.ndarray, position: np.ndarray) -> None:
        """Register ``peers`` in the genesis block: bond ``stake`` each and record their price,
        cost, span ``(n, 2)`` and position ``(n, 2)``."""
        if np.any(stake < self.min_stake):
            raise ValueError(f"stake = {int(stake.min())} is invalid: allowed >= ledger.min_stake = {self.min_stake}")
        accepted = self.ledger.transfer_batch(self.accounts[peers], np.full(len(peers), self.stake_account), stake,
                                              "bond", ref=peers, shard=self.home_shard[peers])
        if not accepted.all():
            bad = int(peers[~accepted][0])
            raise ValueError(f"peer {bad} cannot bond {int(stake[~accepted][0])}: its balance is "
                             f"{self.ledger.balance(int(self.accounts[bad]))} (raise ledger.peer_endowment)")
        self.bonded[peers] += stake
        self.registered[peers] = True
        self.posted_price[peers] = self.sent_price[peers] = price
        self.cost[peers] = cost
        self.span[peers] = span
        self.position[peers] = position

    def effective_stake(self) -> np.ndarray:
        """Each peer's weight as a validator: bonded stake (capped), 0 unless registered."""
        stake = np.where(self.registered, self.bonded, 0)
        return stake if self.max_effective_stake is None else np.minimum(stake, self.max_effective_stake)

    def reward(self, peers: np.ndarray, amounts: np.ndarray) -> None:
        """Mint ``amounts`` into the stake of ``peers`` (the chain's issuance)."""
        self.ledger.transfer_batch(np.zeros(len(peers), np.int64), np.full(len(peers), self.stake_account), amounts,
                                   "issuance", ref=peers, shard=self.home_shard[peers])
        self.bonded[peers] += amounts

    def unbonding_stake(self) -> np.ndarray:
        """Each peer's stake still unbonding (slashable, not yet withdrawn)."""
        live = np.flatnonzero(self.unbonding.amount[: self.unbonding.size] > 0)
        return np.bincount(self.unbonding.peer[live], self.unbonding.amount[live],
                           minlength=len(self.bonded)).astype(np.int64)

    # -- transactions ---------------------------------------------------------------------------
    def submit_bond(self, peers: np.ndarray, amount: np.ndarray) -> None:
        self._submit("bond", peers, amount)

    def submit_unbond(self, peers: np.ndarray, amount: np.ndarray) -> None:
        self._submit("unbond", peers, amount)

    def post_prices(self, price: np.ndarray, alive: np.ndarray) -> None:
        """Send a price transaction for every registered live peer whose price moved by at least
        ``price_tick`` since its last post."""
        peers = np.flatnonzero(self.registered & alive & (np.abs(price - self.sent_price) >= self.price_tick))
        self.sent_price[peers] = price[peers]
        self._submit("price", peers, np.zeros(len(peers), np.int64), price[peers])

    def _submit(self, kind: str, peers: np.ndarray, amount: np.ndarray, price: np.ndarray | None = None) -> None:
        peers = np.asarray(peers, dtype=np.int64)
        rows = self.orders.append(peer=peers, amount=np.asarray(amount, np.int64),
                                    price=np.zeros(len(peers)) if price is None else price)
        self.chain.submit(kind, self.accounts[peers], rows, self.home_shard[peers])

    def _apply_bond(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        peer, amount = self.orders.peer[refs], self.orders.amount[refs]
        ok = self.ledger.transfer_batch(self.accounts[peer], np.full(len(peer), self.stake_account), amount,
                                        "bond", ref=peer, shard=shards)
        np.add.at(self.bonded, peer[ok], amount[ok])
        return ok

    def _apply_unbond(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        ok = np.zeros(len(refs), dtype=bool)
        for k, (peer, amount) in enumerate(zip(self.orders.peer[refs].tolist(), self.orders.amount[refs].tolist())):
            if 0 < amount <= self.bonded[peer]:
                self.bonded[peer] -= amount
                self.unbonding.append(peer=np.array([peer]), amount=np.array([amount]),
                                      release=np.array([self.chain.slot + self.unbonding_delay]))
                self._exit_if_below_minimum(np.array([peer]))
                ok[k] = True
        return ok

    def _apply_price(self, refs: np.ndarray, shards: np.ndarray) -> np.ndarray:
        self.posted_price[self.orders.peer[refs]] = self.orders.price[refs]
        return np.ones(len(refs), dtype=bool)

    def withdraw_matured(self) -> None:
        """Pay out every unbonding whose delay has passed (``sys:stake`` -> the peer)."""
        u = self.unbonding
        due = np.flatnonzero((u.amount[: u.size] > 0) & (u.release[: u.size] <= self.chain.slot))
        if len(due):
            peer = u.peer[due]
            self.ledger.transfer_batch(np.full(len(due), self.stake_account), self.accounts[peer], u.amount[due],
                                       "withdraw", ref=peer, shard=self.home_shard[peer])
            u.amount[due] = 0

    # -- penalties ------------------------------------------------------------------------------
    def take_stake(self, peer: int, amount: int, dst: int, reason: str, ref: int = -1) -> int:
        """Move up to ``amount`` of ``peer``'s stake (bonded first, then unbonding) to account
        ``dst``; return how much moved. The peer exits if its bond falls below the minimum."""
        from_bond = min(amount, int(self.bonded[peer]))
        self.bonded[peer] -= from_bond
        rest = amount - from_bond
        u = self.unbonding
        for row in np.flatnonzero((u.peer[: u.size] == peer) & (u.amount[: u.size] > 0)).tolist():
            if rest == 0:
                break
            take = min(rest, int(u.amount[row]))
            u.amount[row] -= take
            rest -= take
        moved = amount - rest
        if moved:
            self.ledger.transfer(self.stake_account, dst, moved, reason, ref=ref, shard=int(self.home_shard[peer]))
        self._exit_if_below_minimum(np.array([peer]))
        return moved

    def slash(self, peer: int, fraction: float, reporter: int | str | None = None) -> int:
        """Slash ``floor(fraction * stake)`` of ``peer`` (bonded + unbonding): the whistleblower
        share to ``reporter``'s account (or burned without one), the rest burned. Returns the
        amount slashed. This is the entry point a referee's verdict calls."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction = {fraction} is invalid: allowed 0 <= fraction <= 1")
        total = int(self.bonded[peer]) + int(self.unbonding_stake()[peer])
        amount = share(total, fraction)
        reward = share(amount, self.whistleblower_share) if reporter is not None else 0
        burn = self.ledger.index["sys:burn"]
        if reward:
            self.take_stake(peer, reward, self.ledger.resolve(reporter), "slash_reward", ref=peer)
        self.take_stake(peer, amount - reward, burn, "slash_burn", ref=peer)
        return amount

    def force_exit(self, peer: int) -> None:
        """Deregister ``peer`` (a slashed validator is forced out): its bond starts unbonding."""
        if self.registered[peer]:
            self._leave(peer)

    def _exit_if_below_minimum(self, peers: np.ndarray) -> None:
        leaving = peers[self.registered[peers] & (self.bonded[peers] < self.min_stake)]
        for peer in leaving.tolist():
            self._leave(peer)

    def _leave(self, peer: int) -> None:
        self.registered[peer] = False
        if self.bonded[peer] > 0:
            self.unbonding.append(peer=np.array([peer]), amount=np.array([self.bonded[peer]]),
                                  release=np.array([self.chain.slot + self.unbonding_delay]))
            self.bonded[peer] = 0
        self.exited.append(peer)

    def stake_in_contract(self) -> int:
        """What ``sys:stake`` must hold: all bonded plus all unbonding stake."""
        return int(self.bonded.sum()) + int(self.unbonding.amount[: self.unbonding.size].sum())
