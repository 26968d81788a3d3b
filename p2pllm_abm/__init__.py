"""p2pllm-abm: agent-based economic research toolkit for collaborative (P2P) LLM inference.

Importing the package enables JAX's float64 mode (``jax_enable_x64``): prices, probabilities and
gradients are computed in double precision, which the equilibrium certificates rely on.
"""

from importlib.metadata import PackageNotFoundError, version

import jax

jax.config.update("jax_enable_x64", True)

from .config import Config, ConfigError, load_config  # noqa: E402
from .model import P2PLLMModel  # noqa: E402
from .network import PeerTable  # noqa: E402

try:
    __version__ = version("p2pllm-abm")  #: the one version number: pyproject.toml's
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown"

__all__ = ["__version__", "Config", "ConfigError", "P2PLLMModel", "PeerTable", "load_config"]
