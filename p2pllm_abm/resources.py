"""How much memory a run needs, estimated before anything is allocated.

The estimate adds what grows with the configuration, per part, with constants measured on this
machine (peak RSS of runs of 200 to 10^5 peers, stage and path routing; README, Configuration):

- the process (Python, JAX, compiled steps): :data:`BASE_BYTES`;
- the peers' arrays and their temporaries: :data:`PEER_BYTES` per peer;
- the snapshots of ``peers.parquet``: :data:`SNAPSHOT_BYTES` per peer per record;
- the request phase of one tick, all clients at once: with ``clients.routing=stage``
  :data:`STAGE_CHOICE_BYTES` per client and peer (noise, logits, probabilities); with ``path``
  :data:`PATH_CHOICE_BYTES` per client and pair of peers on both sides of the widest boundary
  (Alg. 2 relaxes all of them at once);
- with the ledger on, :data:`JOURNAL_BYTES` per paid hop (every request pays every stage).

A run whose estimate exceeds the memory available (``MemAvailable``) is refused before it starts,
naming what to shrink: the largest part's field, or ``network.peers`` when even without that part
the run would not fit.
"""

from __future__ import annotations

import os

from .config import Config, ConfigError, field_value, initial_distribution

BASE_BYTES = 600 * 2**20
PEER_BYTES = 1024
SNAPSHOT_BYTES = 200
STAGE_CHOICE_BYTES = 64
PATH_CHOICE_BYTES = 40
JOURNAL_BYTES = 96


def estimate_memory(cfg: Config) -> dict[str, int]:
    """Bytes each part of a run needs (see the module docstring)."""
    net, clients, run = cfg.network, cfg.clients, cfg.run
    n = net.peers
    records = run.steps // run.record_interval + 2
    if clients.routing == "path":
        width = 1 << max(max(initial_distribution(net)) - 1, 0).bit_length()
        requests = clients.count * width * width * PATH_CHOICE_BYTES
    else:
        requests = clients.count * n * STAGE_CHOICE_BYTES
    journal = clients.count * net.stages * run.steps * JOURNAL_BYTES if cfg.ledger.enabled else 0
    return {"process": BASE_BYTES, "peers": n * PEER_BYTES, "snapshots": n * records * SNAPSHOT_BYTES,
            "requests": requests, "journal": journal}


def available_memory() -> int | None:
    """Bytes the system can still give (``MemAvailable``; ``None`` where it is not known)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: what to shrink for each part of the estimate
REMEDY = {
    "peers": ("network.peers", "fewer peers"),
    "snapshots": ("run.record_interval", "a larger run.record_interval (fewer peer snapshots) or fewer peers"),
    "requests": ("network.peers", "fewer peers or clients (clients.count), or clients.routing=stage instead of "
                                  "path"),
    "journal": ("ledger.enabled", "fewer steps or clients, or the ledger off"),
}


def check_memory(cfg: Config, available: int | None = None) -> None:
    """Refuse a run whose estimate exceeds ``available`` (default: :func:`available_memory`), naming
    the largest part and what to shrink."""
    available = available_memory() if available is None else available
    if not cfg.run.memory_check or available is None:
        return
    parts = estimate_memory(cfg)
    total = sum(parts.values())
    if total <= available:
        return
    largest = max(REMEDY, key=parts.get)
    field, remedy = REMEDY[largest]
    if total - parts[largest] > available:  # no single part is to blame: every part grows with the peers
        field, remedy = "network.peers", "fewer peers (every part grows with them)"
    gib = 2.0**30
    breakdown = ", ".join(f"{name} {size / gib:,.1f}" for name, size in parts.items() if size)
    raise ConfigError(field, field_value(cfg, field),
                      f"a run that fits in memory: this one needs about {total / gib:,.1f} GiB ({breakdown}) and "
                      f"{available / gib:,.1f} GiB are available; use {remedy} (run.memory_check=false skips "
                      "this check)")

