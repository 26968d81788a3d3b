"""Compiled steps kept on disk between processes (JAX's persistent compilation cache).

A run compiles its steps once per shape, 1-2 s each at Table 1's size: most of a short job's
wall time, paid again by every new process (each ``p2pllm-sim`` job, each joblib worker of a
multirun, each SLURM job). With the cache (``run.compilation_cache``, on by default in
``p2pllm-sim``; :func:`enable_compilation_cache` in Python), a process loads what an earlier one
compiled for the same program, shapes, JAX version and CPU; the executable is the same, so the
outputs are too (README, Compilation cache, for what it saves).

Entries are evicted least recently used beyond :data:`MAX_BYTES`; reads and writes hold a file
lock, so concurrent jobs (a joblib or SLURM multirun) can share one directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from .config import ConfigError
from .paths import ensure_writable

#: the cache's size bound, in bytes (a Table 1 run's programs take about 350 KB)
MAX_BYTES = 1 << 30


#: the environment variable ``run.compilation_cache = "auto"`` reads first
DIRECTORY_VARIABLE = "P2PLLM_ABM_COMPILATION_CACHE"


def cache_directory(setting: str | None) -> Path | None:
    """Where ``run.compilation_cache = setting`` keeps the cache: ``None`` (no cache) for null; for
    ``"auto"``, ``$P2PLLM_ABM_COMPILATION_CACHE`` when set, else ``$XDG_CACHE_HOME/p2pllm-abm/jax``
    (``~/.cache/p2pllm-abm/jax``); otherwise the directory named (``~`` expanded). A directory of its
    own: every process writing there keeps each entry's access time beside it, which the eviction
    reads (entries that JAX writes without a size bound lack it)."""
    if setting is None:
        return None
    if setting == "auto":
        if os.environ.get(DIRECTORY_VARIABLE):
            return Path(os.environ[DIRECTORY_VARIABLE]).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "p2pllm-abm" / "jax"
    return Path(setting).expanduser()


def enable_compilation_cache(setting: str | None = "auto") -> Path | None:
    """Keep this process's compiled programs in :func:`cache_directory` of ``setting`` (null: keep
    none) and load them from there; returns the directory. Every compiled program is kept, not
    only those that took over a second to compile (JAX's default): loading a run's small programs
    is faster than compiling them. Raises :class:`~p2pllm_abm.config.ConfigError` naming
    ``run.compilation_cache`` when the directory cannot be written."""
    directory = cache_directory(setting)
    if directory is not None:
        try:
            ensure_writable(directory)
        except OSError as error:
            raise ConfigError("run.compilation_cache", setting,
                              f"null, 'auto' or a directory this process can write ({error})") from None
    compilation_cache.reset_cache()  # JAX opens its cache once, with the settings of that moment
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    jax.config.update("jax_compilation_cache_dir", None if directory is None else str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return directory
