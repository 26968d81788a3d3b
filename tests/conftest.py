import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import p2pllm_abm  # noqa: E402,F401  (enables float64 before any test builds arrays)
from hypothesis import HealthCheck, settings  # noqa: E402

# the runs the tests start (p2pllm-sim, run_experiment) share one compilation cache
# (run.compilation_cache=auto reads this), in the checkout, not the user's
os.environ.setdefault("P2PLLM_ABM_COMPILATION_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                                    ".pytest_cache", "jax-compilation-cache"))

# derandomize: the same examples on every run, so that CI's verdict does not depend on luck
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=True, database=None)
settings.load_profile("default")
