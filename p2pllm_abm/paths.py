"""Where the toolkit's data lives, and how its files are written."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

#: the Hydra config tree (config.yaml, experiment/, sweep/, ...), devices.yaml, profiles/ and fingerprints/:
#: package data (in a checkout, ``p2pllm_abm/conf`` links to the repository's ``conf/``)
CONF_DIR = Path(__file__).resolve().parent / "conf"


def resolve_fingerprints(name: str) -> Path:
    """A fingerprint-rate file: an absolute path, or a name in ``conf/fingerprints/``."""
    path = Path(name)
    return path if path.is_absolute() else CONF_DIR / "fingerprints" / path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only when the block
    ends without an error, so a reader never sees a half-written file (a failed write leaves the
    old file, or none)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and check that this process can write a file into it (raises
    ``OSError`` otherwise)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
