"""p2pllm-abm: agent-based economic research toolkit for collaborative (P2P) LLM inference.

Importing the package enables JAX's float64 mode (``jax_enable_x64``): prices, probabilities and
gradients are computed in double precision, which the equilibrium certificates rely on.

It also makes XLA's CPU compiler order a program's kernels depth first, the order that keeps the
fewest buffers live, instead of breadth first, the order that lets independent kernels run at once
on XLA's thread pool (``--xla_cpu_enable_concurrency_optimized_scheduler=false`` added to
``XLA_FLAGS``, unless ``XLA_FLAGS`` already sets it). A tick of a small market is a few hundred
kernels of microseconds each: running them side by side gains nothing and the hand-offs cost, while
the host takes a record on the other core. Measured with ``make bench`` on this 2-core machine: 200
peers x 4 stages 41 -> 34 us a step; 10^4 peers x 16 stages 628 -> 642 us. The order changes no
value. XLA reads the flag when JAX first computes, so it applies when the package is imported
before that; ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true`` keeps XLA's
default.
"""

import os

CONCURRENCY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if CONCURRENCY_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CONCURRENCY_SCHEDULER_FLAG}=false".strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from .config import Config, ConfigError, load_config  # noqa: E402
from .model import P2PLLMModel  # noqa: E402
from .network import PeerTable  # noqa: E402

__all__ = ["Config", "ConfigError", "P2PLLMModel", "PeerTable", "load_config"]
