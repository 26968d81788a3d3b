"""Cost-profile files: the device table (``conf/devices.yaml``) and the measured profiles
(``conf/profiles/``, written by ``python -m torch_backend.profile``), read and checked against
:data:`PROFILE_SCHEMA`. Data access only; what the costs are is :mod:`p2pllm_abm.costs`."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .paths import CONF_DIR


COST_METRICS = ("decode", "prefill")
PROFILED = "profiled"  #: the device a profile was measured on


@lru_cache(maxsize=1)
def devices() -> dict[str, dict[str, Any]]:
    """The device table of ``conf/devices.yaml``."""
    return yaml.safe_load((CONF_DIR / "devices.yaml").read_text())


def resolve_profile(path: str | Path) -> Path:
    """A profile path as given, or relative to ``conf/profiles/``."""
    candidate = Path(path)
    return candidate if candidate.is_file() else CONF_DIR / "profiles" / candidate


class ProfileError(ValueError):
    """A cost profile that does not follow :data:`PROFILE_SCHEMA`; the message names the file and
    the key."""


#: what the toolkit reads from a profile: metadata keys and per-stage keys, each a finite number
#: above (``> 0``) or at least (``>= 0``) zero
PROFILE_SCHEMA = {
    "metadata": {"reference_gflops": "> 0", "memory_bandwidth_gbs": "> 0"},
    "stages": {"prefill_ms": "> 0", "decode_ms": "> 0", "weight_bytes": ">= 0", "kv_bytes": ">= 0",
               "prefill_flops": ">= 0"},
}


def _number(value: Any, bound: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    return value > 0 if bound == "> 0" else value >= 0


def validate_profile(profile: Any, source: str) -> dict[str, Any]:
    """``profile`` when it follows :data:`PROFILE_SCHEMA` (an object with a ``metadata`` object and a
    non-empty list of ``stages`` objects, every listed key a finite number in its range); else a
    :class:`ProfileError` naming ``source`` and the first offending key."""
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ProfileError(f"{source}: {key} = {value!r} is invalid: allowed {allowed}")

    if not isinstance(profile, dict):
        fail("(top level)", type(profile).__name__, "an object with 'metadata' and 'stages'")
    metadata, stages = profile.get("metadata"), profile.get("stages")
    if not isinstance(metadata, dict):
        fail("metadata", metadata, "an object")
    if not isinstance(stages, list) or not stages:
        fail("stages", stages, "a non-empty list of stage objects")
    for key, bound in PROFILE_SCHEMA["metadata"].items():
        if not _number(metadata.get(key), bound):
            fail(f"metadata.{key}", metadata.get(key, "(missing)"), f"a finite number {bound}")
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict):
            fail(f"stages[{index}]", stage, "an object")
        for key, bound in PROFILE_SCHEMA["stages"].items():
            if not _number(stage.get(key), bound):
                fail(f"stages[{index}].{key}", stage.get(key, "(missing)"), f"a finite number {bound}")
    return profile


def load_profile(path: str | Path) -> dict[str, Any]:
    """A cost profile read and checked against :data:`PROFILE_SCHEMA` (:class:`ProfileError` names
    the file and the key, also for a file that is not JSON)."""
    resolved = resolve_profile(path)
    try:
        profile = json.loads(resolved.read_text())
    except json.JSONDecodeError as error:
        raise ProfileError(f"{resolved}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileError(f"{resolved}: cannot be read ({error})") from None
    return validate_profile(profile, str(resolved))
