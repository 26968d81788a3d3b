"""What importing the package sets up: float64, and XLA's depth-first kernel order on the CPU."""

import os
import subprocess
import sys

import pytest

from p2pllm_abm import CONCURRENCY_SCHEDULER_FLAG

PROBE = ("import os, jax, jax.numpy as jnp, p2pllm_abm; "
         "print(os.environ['XLA_FLAGS']); print(jnp.ones(1).dtype)")


def imported_with(xla_flags: str | None) -> list[str]:
    """What a fresh process that imports the package prints: its XLA_FLAGS and JAX's default float."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.split("\n")[:2]


@pytest.mark.parametrize("given, expected", [
    (None, f"{CONCURRENCY_SCHEDULER_FLAG}=false"),
    ("--xla_cpu_use_thunk_runtime=true", f"--xla_cpu_use_thunk_runtime=true {CONCURRENCY_SCHEDULER_FLAG}=false"),
    (f"{CONCURRENCY_SCHEDULER_FLAG}=true", f"{CONCURRENCY_SCHEDULER_FLAG}=true"),  # the user's choice stands
])
def test_importing_adds_the_depth_first_order_unless_xla_flags_choose(given, expected):
    assert imported_with(given) == [expected, "float64"]
