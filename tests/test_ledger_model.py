"""The ledger wired into the model: same market with it on, conservation every step, outputs,
chain latency, every config field validated, and the EVM backend against the Python one."""

import json

import numpy as np
import pandas as pd
import pytest

from p2pllm_abm import ConfigError, P2PLLMModel, load_config
from p2pllm_abm.agents import PeerAgent
from p2pllm_abm.metrics import CHAIN_METRICS, LEDGER_PEER_COLUMNS, SHARD_METRICS, chain_rows, shard_rows, stage_rows
from p2pllm_abm.metrics import write_run_outputs

ON = ["ledger.enabled=true", "ledger.check_every_step=true"]


def small(*overrides):
    return load_config("paper_28", overrides=["run.record_interval=10", *overrides])


@pytest.mark.parametrize("payments", ["channels", "escrow"])
def test_the_live_ledger_leaves_the_market_untouched(payments):
    off = P2PLLMModel(small())
    on = P2PLLMModel(small(*ON, f"ledger.payments={payments}"))
    off.run(60)
    on.run(60)
    market = stage_rows(off.metrics_frame()).reset_index(drop=True)
    pd.testing.assert_frame_equal(market, stage_rows(on.metrics_frame())[market.columns].reset_index(drop=True))
    assert np.array_equal(off.peers.price, on.peers.price)
    assert on.ledger.ledger.is_conserved()


@pytest.mark.parametrize("payments", ["channels", "escrow"])
def test_peers_are_paid_what_the_market_says_they_earned(payments):
    model = P2PLLMModel(small(*ON, f"ledger.payments={payments}", "ledger.tx_fee=0"))
    model.run(40)
    cfg = model.config.ledger
    earned = model.peers.balance + model.peers.escrowed + model.peers.stake - cfg.peer_endowment
    # each hop pays floor(price * unit); a few hops may still wait in the chain's queue
    owed = np.floor(model.peers.revenue * cfg.unit)
    assert np.all(earned <= owed + 1e-6)
    assert earned.sum() >= 0.95 * owed.sum()


def test_confirmed_registry_prices_lag_the_live_ones():
    live = P2PLLMModel(small(*ON))
    confirmed = P2PLLMModel(small(*ON, "ledger.registry_view=confirmed", "ledger.price_tick=0.05"))
    live.run(30)
    confirmed.run(30)
    posted = confirmed.ledger.registry.posted_price
    assert not np.array_equal(live.peers.revenue, confirmed.peers.revenue)
    assert np.all(np.abs(posted - confirmed.peers.price) <= 0.05 + np.abs(confirmed.peers.price - posted).max())
    assert np.abs(posted - confirmed.peers.price).max() > 0


def test_block_capacity_creates_queues_and_sharding_relieves_them():
    tight = P2PLLMModel(small(*ON, "ledger.payments=escrow", "ledger.sharding=none", "ledger.block_capacity=300"))
    sharded = P2PLLMModel(small(*ON, "ledger.payments=escrow", "ledger.sharding=stage", "ledger.block_capacity=300"))
    tight.run(30)
    sharded.run(30)
    assert tight.ledger.summary()["mean_confirmation_latency_slots"] > 2
    assert sharded.ledger.summary()["mean_confirmation_latency_slots"] < 1.5
    assert shard_rows(sharded.metrics_frame())["cross_shard_share"].max() > 0


def test_a_slashed_peer_leaves_the_market_and_its_agent_stays_a_handle():
    model = P2PLLMModel(small(*ON))
    model.run(5)
    model.ledger.registry.slash(3, 1.0, reporter="client:0")
    model.run(2)
    assert not model.peers.alive[3] and not model.ledger.registry.registered[3]
    assert model.ledger.registry.effective_stake()[3] == 0
    served = model.peers.requests[3]
    model.run(10)
    assert model.peers.requests[3] == served  # out of the market: no more requests
    peer = next(a for a in model.agents_by_type[PeerAgent] if a.index == 3)
    assert not peer.alive


def test_outputs_carry_the_ledger(tmp_path):
    model = P2PLLMModel(small(*ON))
    model.run(40)
    paths = write_run_outputs(model, tmp_path, 1.0)
    peers = pd.read_parquet(paths["peers.parquet"])
    assert set(LEDGER_PEER_COLUMNS) <= set(peers.columns)
    journal = pd.read_parquet(paths["ledger.parquet"])
    assert list(journal.columns) == ["step", "block", "shard", "src", "dst", "amount", "reason", "ref"]
    replay = journal.groupby("dst", observed=True)["amount"].sum().sub(
        journal.groupby("src", observed=True)["amount"].sum(), fill_value=0)
    final = peers[peers["step"] == 40].set_index("peer_id")["balance"]
    assert all(replay[f"peer:{i}"] == final[i] for i in range(28))  # balances are the journal's sums
    metrics = pd.read_parquet(paths["metrics.parquet"])
    chain = chain_rows(metrics)
    assert set(CHAIN_METRICS) <= set(metrics.columns) and set(SHARD_METRICS) <= set(metrics.columns)
    assert chain["conserved"].all() and (chain["total_supply"] == chain["total_supply"].iloc[0]).all()
    summary = json.loads(paths["summary.json"].read_text())["ledger"]
    assert summary["conserved"] and summary["journal_rows"] == len(journal)
    assert summary["onchain_tx_per_request"] < 1  # channels: a few opens and closes for many requests


def test_escrow_costs_more_transactions_per_request_than_channels():
    runs = {p: P2PLLMModel(small(*ON, f"ledger.payments={p}")) for p in ("channels", "escrow")}
    for model in runs.values():
        model.run(40)
    tx = {p: m.ledger.summary()["onchain_tx_per_request"] for p, m in runs.items()}
    assert tx["escrow"] > 7 > 1 > tx["channels"]  # 4 hops x (open + settle) per request, less the queue


def test_same_seed_same_journal():
    a, b = (P2PLLMModel(small(*ON, "ledger.issuance_per_epoch=1000000")) for _ in range(2))
    a.run(40)
    b.run(40)
    pd.testing.assert_frame_equal(a.ledger.ledger.journal_frame(), b.ledger.ledger.journal_frame())


def test_ed25519_signed_run_conserves():
    model = P2PLLMModel(small(*ON, "ledger.signatures=ed25519", "ledger.channel_deposit=3000000"))
    model.run(15)
    channels = model.ledger.channels
    assert channels.signed and all(len(s.client_signature) == 64 for s in channels.signed.values())
    assert model.ledger.summary()["channels_opened"] > model.config.clients.count  # drained ones replaced


@pytest.mark.parametrize("override, field", [
    ("ledger.backend=solidity", "ledger.backend"),
    ("ledger.payments=cash", "ledger.payments"),
    ("ledger.sharding=client", "ledger.sharding"),
    ("ledger.registry_view=stale", "ledger.registry_view"),
    ("ledger.fee_destination=miner", "ledger.fee_destination"),
    ("ledger.signatures=rsa", "ledger.signatures"),
    ("ledger.unit=0", "ledger.unit"),
    ("ledger.slots_per_epoch=0", "ledger.slots_per_epoch"),
    ("ledger.block_capacity=0", "ledger.block_capacity"),
    ("ledger.tx_fee=-1", "ledger.tx_fee"),
    ("ledger.client_endowment=-5", "ledger.client_endowment"),
    ("ledger.peer_endowment=-5", "ledger.peer_endowment"),
    ("ledger.min_stake=0", "ledger.min_stake"),
    ("ledger.initial_stake=1", "ledger.initial_stake"),
    ("ledger.initial_stake=2000000000", "ledger.initial_stake"),
    ("ledger.max_effective_stake=0", "ledger.max_effective_stake"),
    ("ledger.issuance_per_epoch=-1", "ledger.issuance_per_epoch"),
    ("ledger.attestation_rate=1.5", "ledger.attestation_rate"),
    ("ledger.cross_shard_delay=-1", "ledger.cross_shard_delay"),
    ("ledger.price_tick=-0.1", "ledger.price_tick"),
    ("ledger.unbonding_delay=-1", "ledger.unbonding_delay"),
    ("ledger.whistleblower_share=2", "ledger.whistleblower_share"),
    ("ledger.sla_term=0", "ledger.sla_term"),
    ("ledger.sla_penalty=-1", "ledger.sla_penalty"),
    ("ledger.channel_deposit=-1", "ledger.channel_deposit"),
    ("ledger.challenge_window=-2", "ledger.challenge_window"),
    ("ledger.stale_penalty=1.5", "ledger.stale_penalty"),
    ("ledger.client_endowment=4611686018427387904", "ledger.client_endowment"),
])
def test_every_ledger_field_is_validated(override, field):
    with pytest.raises(ConfigError) as err:
        small("ledger.enabled=true", override)
    assert err.value.field == field and "allowed" in str(err.value)
    small(override)  # with the ledger off its fields are not read


@pytest.mark.parametrize("payments", ["channels", "escrow"])
def test_evm_backend_gives_identical_final_balances(payments):
    pytest.importorskip("pyrevm")
    pytest.importorskip("vyper")
    # paper_28, 50 steps; small channel deposits so that channels drain, close and reopen
    runs = {}
    for backend in ("python", "evm"):
        model = P2PLLMModel(small("ledger.enabled=true", f"ledger.backend={backend}", f"ledger.payments={payments}",
                                  "ledger.channel_deposit=5000000"))
        model.run(25)
        if payments == "channels":  # dispute paths too: a stale close (challenged) and a fair one (finalized)
            channels = model.ledger.channels
            live = np.flatnonzero(channels.c.status[: channels.c.size] == 1)
            stale, fair = int(live[0]), int(live[1])
            opening = channels.keyring.cosign(*(int(a) for a in (channels.client_accounts[channels.c.client[stale]],
                                                                   channels.peer_accounts[channels.c.peer[stale]])),
                                              channels.latest(stale).state._replace(
                                                  nonce=0, bal_client=int(channels.c.deposit[stale]), bal_peer=0))
            channels.close_unilateral(stale, opening, "client")
            channels.close_unilateral(fair, channels.latest(fair), "peer")
        model.run(25)
        model.ledger.assert_invariants()
        runs[backend] = model
    python, evm = runs["python"].ledger, runs["evm"].ledger
    assert np.array_equal(python.ledger.balances(), evm.ledger.balances())
    pd.testing.assert_frame_equal(python.ledger.journal_frame(), evm.ledger.journal_frame())
    if payments == "channels":
        journal = python.ledger.journal_frame()
        assert (journal["reason"] == "channel_penalty").sum() == 1
        assert (python.channels.c.status[: python.channels.c.size] == 3).sum() > 2  # settled channels
