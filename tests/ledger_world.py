"""A small ledger world without the market: accounts, chain, registry, SLAs and channels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from p2pllm_abm.ledger import Chain, Channels, Keyring, Ledger, Registry, SlaBook
from p2pllm_abm.ledger.phase import assert_books as books

TOKEN = 10**6


def world(peers: int = 3, clients: int = 2, shards: int = 1, capacity: int = 64, fee: int = 0, stake: int = 50 * TOKEN,
          signatures: str = "stub", ledger: Ledger | None = None, window: int = 4, **chain_options) -> SimpleNamespace:
    """``peers`` registered peers (endowment 100 tokens, ``stake`` bonded) and ``clients`` clients
    (1000 tokens each); peer ``i`` lives in shard ``i mod shards``, client ``k`` in ``k mod shards``."""
    ledger = ledger if ledger is not None else Ledger()
    peer_accounts = ledger.open_accounts([f"peer:{i}" for i in range(peers)])
    client_accounts = ledger.open_accounts([f"client:{k}" for k in range(clients)])
    ledger.transfer_batch(np.zeros(peers + clients, np.int64), np.concatenate([peer_accounts, client_accounts]),
                          np.repeat([100 * TOKEN, 1000 * TOKEN], [peers, clients]), "genesis")
    options = dict(slots_per_epoch=4, issuance_per_epoch=0, attestation_rate=1.0, cross_shard_delay=1, seed=3)
    options.update(chain_options)
    w = SimpleNamespace(ledger=ledger, peer_accounts=peer_accounts, client_accounts=client_accounts)
    w.chain = Chain(ledger, shards, capacity, fee, True, **options)
    peer_home, client_home = np.arange(peers) % shards, np.arange(clients) % shards
    w.registry = Registry(ledger, w.chain, peer_accounts, peer_home, min_stake=20 * TOKEN, max_effective_stake=None,
                          unbonding_delay=3, whistleblower_share=0.125, price_tick=0.01)
    w.registry.register_genesis(np.arange(peers), np.full(peers, stake, np.int64), np.ones(peers), np.full(peers, 5.0),
                                np.stack([np.arange(peers) % 4, np.arange(peers) % 4 + 1], axis=1),
                                np.full((peers, 2), 0.5))
    w.sla = SlaBook(ledger, w.chain, w.registry, client_accounts, client_home, peers, term=1, penalty=0.5)
    w.channels = Channels(ledger, w.chain, Keyring(signatures, 3), client_accounts, client_home, peer_accounts,
                          peer_home, deposit=10 * TOKEN, challenge_window=window, stale_penalty=1.0,
                          sign_updates=signatures != "stub", stale_clients=np.zeros(clients, bool))
    return w


def advance(w: SimpleNamespace, slots: int = 1) -> None:
    for _ in range(slots):
        w.channels.watch()
        w.chain.advance()
        w.registry.withdraw_matured()


def assert_books(w: SimpleNamespace) -> None:
    """The world's books: :func:`p2pllm_abm.ledger.phase.assert_books`."""
    books(w.ledger, w.registry, w.sla, w.channels)
