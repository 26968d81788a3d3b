"""The host's Python and XLA's CPU threads on separate cores while a small market runs fused.

A fused run (:meth:`~p2pllm_abm.model.P2PLLMModel.run`) overlaps two kinds of work: XLA's thread
pool runs the compiled steps while the calling Python thread takes the previous record (statistics,
DataCollector rows) and dispatches the next call. In a small market with clients each side needs
about one core. The operating system moves XLA's pool threads, which hand the steps to one
another, across every core, so that they keep preempting the Python thread and each other. Measured
on this 2-core machine (64 clients, reallocation every 10 steps, records every 50; a step, median of
3 x 1,000-2,000 steps, alternating runs):

- 200 peers x 4 stages: 32 -> 22 us with the Python thread on one core and XLA's threads on the other;
- 500 x 4: 48 -> 44 us; 1,000 x 4: 78 -> 82 us; 2,000 x 8: 147 -> 159 us; 10^4 x 16: 630 -> 790 us
  (larger markets need both cores for XLA's parallel loops);
- without clients (the market phases only, 200 peers): 8.2 -> 8.6 us (little host work to overlap).

So it applies to markets of at most :data:`SMALL_MARKET_PEERS` peers with clients.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

#: XLA's CPU client names its pool threads so (``/proc/<pid>/task/<tid>/comm``, Linux)
XLA_THREAD_PREFIX = "tf_XLAEigen"
#: the largest market whose fused runs separate the cores (measured: see the module docstring)
SMALL_MARKET_PEERS = 500


def xla_threads() -> list[int]:
    """The native ids of this process's XLA CPU pool threads (none where ``/proc`` is missing)."""
    tasks = Path("/proc/self/task")
    found = []
    for task in tasks.iterdir() if tasks.is_dir() else []:
        with contextlib.suppress(OSError):  # a thread may end meanwhile
            if (task / "comm").read_text().startswith(XLA_THREAD_PREFIX):
                found.append(int(task.name))
    return found


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def allowed_threads() -> int:
    """The cores this process may use, fewer when ``OMP_NUM_THREADS`` says so (a sweep's job given a
    share of the cores: :func:`~p2pllm_abm.sweep.thread_environment`)."""
    cores = available_cores()
    told = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(told)) if told.isdigit() and int(told) > 0 else cores


@contextlib.contextmanager
def separate_cores(enabled: bool = True) -> Iterator[bool]:
    """Inside the block the calling thread runs on the first core this process may use and XLA's
    pool threads on the others; every affinity changed is restored afterwards. Yields whether it
    separated them: not when ``enabled`` is false, with fewer than two cores (:func:`allowed_threads`),
    or without XLA pool threads or thread affinities (not Linux)."""
    if not enabled or not hasattr(os, "sched_setaffinity") or allowed_threads() < 2:
        yield False
        return
    pool = xla_threads()
    if not pool:
        yield False
        return
    cores = sorted(os.sched_getaffinity(0))
    caller = threading.get_native_id()
    saved = {}
    for thread, placed in [(caller, {cores[0]}), *((thread, set(cores[1:])) for thread in pool)]:
        with contextlib.suppress(OSError):
            saved[thread] = os.sched_getaffinity(thread)
            os.sched_setaffinity(thread, placed)
    try:
        yield True
    finally:
        for thread, affinity in saved.items():
            with contextlib.suppress(OSError):  # a pool thread may have ended
                os.sched_setaffinity(thread, affinity)
