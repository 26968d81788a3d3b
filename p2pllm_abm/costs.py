"""Compute costs grounded in measured transformer shards (``network.cost_source=profile``).

A cost profile (written by ``python -m torch_backend.profile``; reference profiles ship in
``conf/profiles/``, so no torch is needed here) holds, per stage of a Llama-style model, the
measured prefill time and per-token decode time on the machine it ran on, with the bytes a decode
step reads and the FLOPs of a prefill (the files: :mod:`p2pllm_abm.profiles`).
:func:`~p2pllm_abm.profiles.devices` (``conf/devices.yaml``) lists other devices by peak tensor
throughput and memory bandwidth, each with its source. A stage's time on another
device is the measured time scaled by the roofline: decode is memory-bound, so it scales with
``bandwidth_profiled / bandwidth_device``; prefill is compute-bound, so with
``gflops_profiled / peak_device`` (``gflops_profiled`` being the profile's reference matmul probe).
The measured inefficiency relative to the roofline is kept; the result is an estimate and is
labelled so.

A peer serving stages ``[start, end)`` on device ``d`` costs the sum of those stages' times on
``d`` (``network.cost_metric``: ``decode``, ms per generated token, or ``prefill``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .profiles import COST_METRICS, PROFILED, ProfileError, devices, load_profile, resolve_profile

#: the profile files' names, read here before they moved to p2pllm_abm.profiles
__all__ = ["COST_METRICS", "PROFILED", "ProfileError", "devices", "load_profile", "resolve_profile", "stage_times",
           "device_estimates", "span_costs", "span_sum"]


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
