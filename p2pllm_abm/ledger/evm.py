"""EVM-in-the-loop backend (``ledger.backend=evm``, the ``[evm]`` extra: vyper 0.4.3 + pyrevm 0.3.7).

:class:`EvmLedger` keeps every balance in an in-process EVM (pyrevm, Rust revm; no node, no
RPC) and runs the escrow and channel operations as calls into two Vyper contracts,
``contracts_vy/Escrow.vy`` and ``contracts_vy/Channels.vy``, which enforce their rules again
(status transitions, one settlement per job, balances summing to the deposit, newer nonces, the
challenge window in block numbers = slots). Accounts are externally owned addresses, except
``sys:escrow`` and ``sys:channels``, which are the two contracts' addresses, and
``sys:issuance``, which has no address: minting credits the destination (``set_balance``) and
``balance(sys:issuance)`` is minus what was minted. Gas price is 0, so the EVM's balances are
exactly the ledger's. A revert in a contract call the Python side accepted is a disagreement
between the two implementations and raises :class:`EvmDisagreement`.

The journal is the same as the Python backend's (it is written by :class:`Ledger`), so a
differential test can run one seeded scenario through both and compare every final balance.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from .accounts import ISSUANCE, PPM, REASON, Ledger, challenge_payouts

CONTRACTS = Path(__file__).resolve().parent / "contracts_vy"


class EvmDisagreement(RuntimeError):
    """A contract reverted an operation that the Python ledger accepted."""


@lru_cache(maxsize=None)
def compiled(name: str) -> tuple[bytes, list[dict]]:
    """Bytecode and ABI of ``contracts_vy/<name>.vy`` (compiled once per process)."""
    import vyper

    out = vyper.compile_code((CONTRACTS / f"{name}.vy").read_text(), output_formats=["bytecode", "abi"])
    return bytes.fromhex(out["bytecode"].removeprefix("0x")), out["abi"]


def address_of(name: str) -> str:
    """A deterministic address for account ``name``."""
    return "0x" + hashlib.sha256(name.encode()).hexdigest()[:40]


class Contract:
    """A deployed contract with ABI-encoded calls (eth-abi) on a pyrevm ``EVM``."""

    def __init__(self, evm, deployer: str, name: str, *args: int) -> None:
        from eth_abi import encode

        code, self.abi = compiled(name)
        constructor = next((f for f in self.abi if f["type"] == "constructor"), {"inputs": []})
        init = encode([i["type"] for i in constructor["inputs"]], list(args)) if args else b""
        from eth_utils import function_signature_to_4byte_selector

        self.evm, self.name = evm, name
        self.address = evm.deploy(deployer, code + init)
        self._functions = {}  #: name -> (argument types, selector)
        for f in self.abi:
            if f["type"] == "function":
                types = [i["type"] for i in f["inputs"]]
                self._functions[f["name"]] = (types, function_signature_to_4byte_selector(f"{f['name']}({','.join(types)})"))

    def call(self, caller: str, function: str, *args, value: int = 0) -> bytes:
        from eth_abi import encode

        types, selector = self._functions[function]
        calldata = selector + encode(types, list(args))
        try:
            return self.evm.message_call(caller, self.address, calldata=calldata, value=value, gas_price=0)
        except RuntimeError as error:
            raise EvmDisagreement(f"{self.name}.{function}{args} reverted: {error}") from None


class EvmLedger(Ledger):
    """The :class:`Ledger` interface over balances held by an in-process EVM."""

    def __init__(self, challenge_window: int, stale_penalty: float) -> None:
        """Start an EVM and deploy the escrow and channel contracts (their addresses are
        ``sys:escrow`` and ``sys:channels``), with the channels' challenge window in slots and the
        stale-state penalty share."""
        from pyrevm import EVM

        self.evm = EVM()
        self.minted = 0
        self.address: list[str] = []
        self.operator = address_of("sys:operator")
        self.evm.set_balance(self.operator, 0)
        self._slot = -1
        super().__init__()
        self.escrow = Contract(self.evm, self.operator, "Escrow")
        self.channels = Contract(self.evm, self.operator, "Channels", challenge_window, round(stale_penalty * PPM))
        for account, contract in (("sys:escrow", self.escrow), ("sys:channels", self.channels)):
            self.address[self.index[account]] = contract.address

    def _on_open(self, index: int) -> None:
        self.address.append(address_of(self.names[index]))

    def balances(self) -> np.ndarray:
        values = [self.evm.get_balance(a) for a in self.address]
        values[ISSUANCE] = -self.minted
        return np.array(values, dtype=np.int64)

    def _block(self) -> None:
        """Set the EVM's block number to the chain's slot (the challenge window counts slots)."""
        if self._slot != self.step:
            from pyrevm import BlockEnv

            self.evm.set_block_env(BlockEnv(number=self.step, timestamp=self.step))
            self._slot = self.step

    def _apply(self, src: np.ndarray, dst: np.ndarray, amount: np.ndarray) -> np.ndarray:
        """Plain value transfers, in order; a transfer the sender cannot cover is refused."""
        accepted = np.zeros(len(src), dtype=bool)
        for k, (s, d, a) in enumerate(zip(src.tolist(), dst.tolist(), amount.tolist())):
            if s == ISSUANCE:
                self.minted += a
                self.evm.set_balance(self.address[d], self.evm.get_balance(self.address[d]) + a)
                accepted[k] = True
            elif self.evm.get_balance(self.address[s]) >= a:
                self.evm.message_call(self.address[s], self.address[d], calldata=b"", value=a, gas_price=0)
                accepted[k] = True
        return accepted

    # -- contract operations ----------------------------------------------------------------------
    def _fund(self, contract: Contract, client, counterparty, amount, ids, shard, account: str, reason: str):
        """Each client calls ``contract.open(id, counterparty)`` paying ``amount`` if it can."""
        self._block()
        accepted = np.zeros(len(client), dtype=bool)
        for k, (c, p, a, i) in enumerate(zip(client.tolist(), counterparty.tolist(), amount.tolist(), ids.tolist())):
            if self.evm.get_balance(self.address[c]) >= a:
                contract.call(self.address[c], "open", i, self.address[p], value=a)
                accepted[k] = True
        self._record(client[accepted], np.full(int(accepted.sum()), self.index[account]), amount[accepted], reason,
                     np.asarray(ids)[accepted], np.asarray(shard)[accepted])
        return accepted

    def escrow_lock(self, client, provider, amount, job, shard):
        return self._fund(self.escrow, client, provider, amount, job, shard, "sys:escrow", "escrow_lock")

    def escrow_settle(self, job, payee, amount, release, shard):
        self._block()
        for j in np.asarray(job).tolist():
            self.escrow.call(self.operator, "settle", j, bool(release))
        self._record(np.full(len(job), self.index["sys:escrow"]), payee, amount,
                     "escrow_release" if release else "escrow_refund", job, shard)

    def channel_deposit(self, client, peer, amount, channel, shard):
        return self._fund(self.channels, client, peer, amount, channel, shard, "sys:channels", "channel_deposit")

    def channel_close(self, channel, client, peer, bal_client, bal_peer, shard):
        self._block()
        if self._closing(channel):  # finalized after the challenge window, else cooperative
            self.channels.call(self.operator, "finalize", channel)
        else:
            self.channels.call(self.operator, "close", channel, 0, bal_client, bal_peer)
        self._record(np.full(2, self.index["sys:channels"]), np.array([client, peer]), np.array([bal_client, bal_peer]),
                     "channel_payout", channel, shard)

    def channel_close_unilateral(self, channel, nonce, bal_client, bal_peer, closer_is_client):
        self._block()
        self.channels.call(self.operator, "close_unilateral", channel, nonce, bal_client, bal_peer, closer_is_client)

    def channel_challenge(self, channel, client, peer, nonce, bal_client, bal_peer, penalty, client_cheated, shard):
        self._block()
        self.channels.call(self.operator, "challenge", channel, nonce, bal_client, bal_peer)
        for src, dst, amount, reason in challenge_payouts(self.index["sys:channels"], client, peer, bal_client,
                                                          bal_peer, penalty, client_cheated):
            self._record(src, dst, amount, reason, channel, shard)

    def _closing(self, channel: int) -> bool:
        """Whether the Channels contract holds ``channel`` in its challenge window (status 2)."""
        from eth_abi import decode

        out = self.channels.call(self.operator, "channels", channel)
        return decode(["address", "address", "uint256", "uint8", "uint256", "uint256", "uint256", "uint256", "bool"],
                      out)[3] == 2

    def _record(self, src, dst, amount, reason, ref, shard) -> None:
        """Journal movements the contracts made (balances are already in the EVM)."""
        self.journal.append(self.step, self.block, np.asarray(shard), np.asarray(src, np.int64),
                            np.asarray(dst, np.int64), np.asarray(amount, np.int64), REASON[reason], np.asarray(ref))
