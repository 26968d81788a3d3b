"""Compute costs grounded in measured transformer shards (``network.cost_source=profile``).

A cost profile (written by ``python -m torch_backend.profile``; reference profiles ship in
``conf/profiles/``, so no torch is needed here) holds, per stage of a Llama-style model, the
measured prefill time and per-token decode time on the machine it ran on, with the bytes a decode
step reads and the FLOPs of a prefill. :data:`DEVICES` (``conf/devices.yaml``) lists other devices
by peak tensor throughput and memory bandwidth, each with its source. A stage's time on another
device is the measured time scaled by the roofline: decode is memory-bound, so it scales with
``bandwidth_profiled / bandwidth_device``; prefill is compute-bound, so with
``gflops_profiled / peak_device`` (``gflops_profiled`` being the profile's reference matmul probe).
The measured inefficiency relative to the roofline is kept; the result is an estimate and is
labelled so.

A peer serving stages ``[start, end)`` on device ``d`` costs the sum of those stages' times on
``d`` (``network.cost_metric``: ``decode``, ms per generated token, or ``prefill``).
"""

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


def stage_times(profile: dict[str, Any], device: str, metric: str) -> np.ndarray:
    """Time in ms of every stage of ``profile`` on ``device`` for ``metric`` (measured for
    :data:`PROFILED`, roofline-scaled otherwise)."""
    key = f"{metric}_ms"
    measured = np.array([stage[key] for stage in profile["stages"]])
    if device == PROFILED:
        return measured
    spec, meta = devices()[device], profile["metadata"]
    if metric == "decode":
        return measured * meta["memory_bandwidth_gbs"] / spec["bandwidth_gbs"]
    return measured * meta["reference_gflops"] / (spec["peak_tflops"] * 1e3)


def device_estimates(profile: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per device of :data:`devices`, every stage's estimated prefill and decode time (the
    measurement scaled as in :func:`stage_times`) and its roofline minimum (prefill FLOPs / peak,
    decode weight + KV bytes / bandwidth): what a profile stores beside its measurements, marked
    ``source = "estimated"``."""
    estimates = {}
    for device, spec in devices().items():
        prefill, decode = stage_times(profile, device, "prefill"), stage_times(profile, device, "decode")
        estimates[device] = [{
            "stage": s, "prefill_ms": float(p), "decode_ms": float(d),
            "prefill_roofline_ms": stage["prefill_flops"] / (spec["peak_tflops"] * 1e12) * 1e3,
            "decode_roofline_ms": (stage["weight_bytes"] + stage["kv_bytes"]) / (spec["bandwidth_gbs"] * 1e9) * 1e3,
            "source": "estimated",
        } for s, (p, d, stage) in enumerate(zip(prefill, decode, profile["stages"]))]
    return estimates


def span_costs(profile: dict[str, Any], start: np.ndarray, end: np.ndarray, device: np.ndarray,
               metric: str) -> np.ndarray:
    """Cost of each peer serving ``[start, end)`` on its ``device`` (names)."""
    cost = np.zeros(len(start))
    for name in np.unique(device):
        mine = device == name
        times = np.broadcast_to(stage_times(profile, str(name), metric), (int(mine.sum()), len(profile["stages"])))
        cost[mine] = span_sum(times, start[mine], end[mine])
    return cost


def span_sum(stage_cost: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The cost of serving ``[start, end)`` for rows of stage costs ``(k, n_stages)``: the sum of
    ``c_i(s)`` over the span (one stage: exactly ``c_i(s)``)."""
    stages = np.arange(stage_cost.shape[1])
    inside = (stages >= np.asarray(start)[:, None]) & (stages < np.asarray(end)[:, None])
    return np.where(inside, stage_cost, 0.0).sum(axis=1)
