"""The cryptoeconomic layer's speed.

    python -m benchmarks.ledger          # or: make bench-ledger

1. Ledger operations per second (Python backend, the Table 1 network's ledger): one transfer;
   transfers in batches of 256; escrow lock + settle in batches of 256; one off-chain channel
   update; channel payments streamed in a step of 256; settling one Table-1 step (64 clients x 4
   hops: SLA terms and channel payments) and producing its slot.
2. The Table 1 job (``p2pllm-sim experiment=paper_table1`` vs ``paper_table1_ledger``: 200
   peers, 5,000 steps, outputs and figures), each in a fresh process, ledger off vs on; and the
   model's warm ``run(2000)`` in one process.
3. 10^4 peers x 16 stages, 64 clients, 1,000 steps with channels (build + run).
4. The EVM backend (pyrevm + Vyper, the ``[evm]`` extra): contract calls per second.

Times are medians of 3 (1 for the long runs); VM timings swing 2-3x within minutes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.ledger import MarketLedger
from p2pllm_abm.network import PeerTable

from .timing import fmt, timed

BATCH = 256


def market_ledger(payments: str) -> tuple[MarketLedger, PeerTable, np.ndarray]:
    cfg = load_config("paper_table1_ledger", overrides=[f"ledger.payments={payments}"])
    peers = PeerTable.from_config(cfg.network, np.random.default_rng(0))
    return MarketLedger(cfg.ledger, peers, cfg.clients.count, seed=0), peers, np.random.default_rng(1).uniform(
        size=(cfg.clients.count, 2))


def operation_rates() -> list[tuple[str, float]]:
    """(operation, operations per second)."""
    rates = []
    ml, peers, clients = market_ledger("escrow")
    ledger = ml.ledger
    src = ml.sla.client_accounts[np.arange(BATCH) % 64]
    dst = ml.registry.accounts[np.arange(BATCH) % 200]
    one = np.ones(BATCH, np.int64)
    rates.append(("transfer (one call)", BATCH / timed(lambda: [ledger.transfer(int(s), int(d), 1, "transfer")
                                                                for s, d in zip(src, dst)])[0]))
    rates.append((f"transfer (batch of {BATCH})", BATCH / timed(lambda: ledger.transfer_batch(src, dst, one,
                                                                                              "transfer"))[0]))
    job = np.arange(BATCH)
    shard = np.zeros(BATCH, np.int64)

    def escrow():
        ledger.escrow_lock(src, dst, one, job, shard)
        ledger.escrow_settle(job, dst, one, True, shard)

    rates.append((f"escrow lock + settle (batches of {BATCH})", BATCH / timed(escrow)[0]))

    ml, peers, clients = market_ledger("channels")
    channels = ml.channels
    c, p = np.arange(BATCH) % 64, np.arange(BATCH) % 200
    channels.open(c, p, np.full(BATCH, 10**9))
    for _ in range(1 + ml.config.cross_shard_delay):  # cross-shard opens wait for their receipt
        ml.chain.advance()
    rates.append(("channel update (one call)", BATCH / timed(lambda: [channels.update(ch, 1) for ch in range(BATCH)])[0]))
    rates.append((f"channel payments (a step of {BATCH})", BATCH / timed(lambda: channels.pay(c, p, one, 1))[0]))
    rng = np.random.default_rng(2)
    paid = np.stack([rng.choice(np.flatnonzero(peers.stage == s), 64) for s in range(4)], axis=1)
    step = iter(range(10, 10**6))

    def settle_step():
        ml.settle(next(step), paid, peers.price, peers, clients)
        ml.advance(peers.price, peers.alive)

    rates.append(("settle one Table-1 step (64 x 4 hops) + its slot", 1 / timed(settle_step)[0]))
    ml.assert_invariants()
    return rates


def cli_seconds(experiment: str) -> float:
    with TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "p2pllm-sim"), f"experiment={experiment}",
                        f"hydra.run.dir={out}", "run.progress=false"], check=True, capture_output=True)
        return time.perf_counter() - started


def table1_jobs() -> None:
    off, on = cli_seconds("paper_table1"), cli_seconds("paper_table1_ledger")
    warm = {}
    for name, overrides in (("off", []), ("on", ["ledger.enabled=true"])):
        model = P2PLLMModel(load_config("paper_table1", overrides=overrides))
        model.run(60)
        started = time.perf_counter()
        model.run(2000)
        warm[name] = time.perf_counter() - started
    print("| Table 1 (200 peers, 5,000 steps) | ledger off | ledger on | on / off |")
    print("|---|---|---|---|")
    print(f"| p2pllm-sim job, fresh process (incl. import, compile, outputs, figures) | {fmt(off)} | {fmt(on)} "
          f"| {on / off:.2f}x |")
    print(f"| model.run(2000), warm | {fmt(warm['off'])} | {fmt(warm['on'])} | {warm['on'] / warm['off']:.2f}x |",
          flush=True)


def large_run() -> None:
    cfg = load_config("paper_table1_ledger", overrides=[
        "network.peers=10000", "network.stages=16", "network.initial_distribution=null", "report.reference=null",
        "run.steps=1000"])
    started = time.perf_counter()
    model = P2PLLMModel(cfg)
    built = time.perf_counter() - started
    model.run(1000)
    total = time.perf_counter() - started
    s = model.ledger.summary()
    print("| 10^4 peers x 16 stages, 64 clients, 1,000 steps, channels | value |")
    print("|---|---|")
    print(f"| wall time (build {fmt(built)} + run) | {fmt(total)} |")
    print(f"| conserved | {s['conserved']} |")
    print(f"| requests paid, hops paid | {s['requests_paid']:,}, {s['hops_paid']:,} |")
    print(f"| channels opened, off-chain updates | {s['channels_opened']:,}, {s['channel_updates']:,} |")
    print(f"| on-chain transactions sent (per request), failed | {s['transactions_submitted']:,} "
          f"({s['onchain_tx_per_request']:.2f}), {s['transactions_failed']:,} |")
    print(f"| locked in channels / total supply | {s['channel_locked'] / s['total_supply']:.1%} |")
    print(f"| owed, not yet in a channel (price units) | {s['owed'] / cfg.ledger.unit:,.0f} |", flush=True)


def evm_rates() -> None:
    try:
        from p2pllm_abm.ledger.evm import EvmLedger
    except ImportError:
        print("EVM backend: not installed (pip install -e '.[evm]')")
        return
    ledger = EvmLedger(challenge_window=4, stale_penalty=1.0)
    index = ledger.open_accounts([f"client:{k}" for k in range(BATCH)])
    ledger.transfer_batch(np.zeros(BATCH, np.int64), index, np.full(BATCH, 10**15), "genesis")
    one, shard = np.ones(BATCH, np.int64), np.zeros(BATCH, np.int64)
    jobs = iter(range(10**9))

    def escrow():
        job = np.array([next(jobs) for _ in range(BATCH)])
        ledger.escrow_lock(index, index[::-1], one, job, shard)
        ledger.escrow_settle(job, index[::-1], one, True, shard)

    channels = iter(range(10**9))

    def channel_round():
        ids = np.array([next(channels) for _ in range(BATCH)])
        ledger.channel_deposit(index, index[::-1], one * 2, ids, shard)
        for ch, c, p in zip(ids.tolist(), index.tolist(), index[::-1].tolist()):
            ledger.channel_close(ch, c, p, 1, 1, 0)

    transfers = lambda: ledger.transfer_batch(index, index[::-1], one, "transfer")  # noqa: E731
    print("| EVM backend (pyrevm 0.3.7, Vyper 0.4.3) | calls/s |")
    print("|---|---|")
    print(f"| value transfer | {BATCH / timed(transfers)[0]:,.0f} |")
    print(f"| escrow open + settle (2 contract calls) | {2 * BATCH / timed(escrow)[0]:,.0f} |")
    print(f"| channel open + close (2 contract calls + a view) | {2 * BATCH / timed(channel_round)[0]:,.0f} |")
    ledger.assert_conserved()


def main() -> None:
    print("| operation | rate | per operation |")
    print("|---|---|---|")
    for name, rate in operation_rates():
        print(f"| {name} | {rate:,.0f} /s | {fmt(1 / rate)} |", flush=True)
    print()
    table1_jobs()
    print()
    large_run()
    print()
    evm_rates()


if __name__ == "__main__":
    main()
