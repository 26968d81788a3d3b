import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# one compilation cache for the session, shared with the runs the CLI and sweep tests start as
# subprocesses (they compile the same steps again otherwise); fresh per session, so nothing stale
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="p2pllm-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import p2pllm_abm  # noqa: E402,F401  (enables float64 before any test builds arrays)
from hypothesis import HealthCheck, settings  # noqa: E402

# derandomize: the same examples on every run, so that CI's verdict does not depend on luck
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=True, database=None)
settings.load_profile("default")
