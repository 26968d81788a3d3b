"""What a run does to the process while it runs: Ctrl-C deferred around a record, and the garbage
collector told to skip long-lived objects. Entered by the engine for the length of a run, left
when it ends; nothing here happens at import."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with Ctrl-C (SIGINT) deferred to its end, so that what it appends stays
    together; outside the main thread (where signals cannot be handled) it just runs the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:  # delivered again, to the handler the process had
        signal.raise_signal(signal.SIGINT)


_frozen = 0  # open long_lived_objects_frozen blocks


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Run the block with the objects that exist when it starts left out of the garbage collector's
    scans (``gc.freeze``; moved back when the outermost block ends, so that garbage among them is
    still found later). The modules' functions, the model and its agents outlive a run, and a full
    collection scanned them all every few records: 170 ms each with 64 replicates of Table 1,
    about a sixth of the run."""
    global _frozen
    if _frozen == 0:
        gc.freeze()
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if _frozen == 0:
            gc.unfreeze()
