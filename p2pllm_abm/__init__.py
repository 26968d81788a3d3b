"""p2pllm-abm: agent-based economic research toolkit for collaborative (P2P) LLM inference.

Importing the package enables JAX's float64 mode (``jax_enable_x64``): prices, probabilities and
gradients are computed in double precision, which the equilibrium certificates rely on.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .config import Config, ConfigError, load_config  # noqa: E402
from .model import P2PLLMModel  # noqa: E402
from .network import PeerTable  # noqa: E402

__all__ = ["Config", "ConfigError", "P2PLLMModel", "PeerTable", "load_config"]
