"""Time every shard of a Llama-style model: prefill of ``(batch, seq_len)`` tokens and one decode
step with a KV cache of ``kv_len`` tokens, with ``torch.utils.benchmark`` (warm-up, repeated
blocks, median and interquartile range), next to the memory-bound minimum of a decode step on the
device it ran on. The profile file holds the measurements (``source = "measured"``), their
metadata, and each stage's time on every device of ``conf/devices.yaml`` scaled by the roofline
(``estimates``, ``source = "estimated"``; :mod:`p2pllm_abm.costs`).

    python -m torch_backend.profile --preset llama-134m --stages 4 --out profile.json

A timing whose interquartile range exceeds 20% of its median is measured again (with a warning),
up to three times, keeping the least spread one; a shipped profile (``conf/profiles/``) is only
overwritten with ``--force``.

The VM this runs on swings 2-3x within minutes, so every profile records a reference probe (a
fixed matmul's GFLOP/s in the profile's dtype: 1024^3 on a CPU, 8192^3 on a GPU) and the measured
memory bandwidth: compare orderings and ratios across profiles, not milliseconds. The shipped CPU
profile is fp32 (the default); the GPU ones bf16 as served, and llama-134m in fp32 to compare
(``--dtype``).

On a GPU, ``--cuda-graphs`` times each step as the replay of a CUDA graph captured over static KV
caches, as a server runs decode; without it each kernel is launched from Python, and at batch 1
that times the host's launches, not the GPU (``execution`` in the metadata says which).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import warnings
from pathlib import Path
from typing import Callable

import torch
import transformers
from torch.utils import benchmark

from p2pllm_abm.costs import device_estimates
from p2pllm_abm.paths import CONF_DIR

from .model import PRESETS, Shard, build_model, layer_bounds, split


PROFILES_DIR = CONF_DIR / "profiles"  #: the profiles shipped with the toolkit


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def capture_graph(step: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """The kernels of ``step`` captured once as a CUDA graph, after three warm-up calls on a side
    stream (as ``torch.cuda.graph`` requires). Replaying it runs the same kernels on the same
    buffers without Python's per-kernel launches, as a server's captured decode step does."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _measure(stmt: str, setup: str, scope: dict, device: torch.device, threads: int,
             min_run_time: float) -> benchmark.Measurement:
    """Median and spread of ``stmt`` (followed by a CUDA synchronisation on a GPU, so that the
    kernels' time is counted) after three warm-up runs (allocator, caches, lazy init)."""
    sync = "; torch.cuda.synchronize()" if device.type == "cuda" else ""
    timer = benchmark.Timer(stmt=stmt + sync, setup=setup, globals={**scope, "torch": torch}, num_threads=threads)
    timer.timeit(number=3)
    return timer.blocked_autorange(min_run_time=min_run_time)


#: a timing whose interquartile range exceeds this share of its median is measured again
SPREAD_LIMIT = 0.2
MAX_TRIES = 3  #: measurements of one statement at most


def least_spread(measure: Callable[[], benchmark.Measurement], label: str,
                 tries: int = MAX_TRIES) -> benchmark.Measurement:
    """``measure()`` repeated, with a warning each time, while its spread (IQR / median) exceeds
    :data:`SPREAD_LIMIT`, at most ``tries`` times; the measurement with the least spread."""
    best = None
    for attempt in range(1, tries + 1):
        measured = measure()
        spread = measured.iqr / measured.median
        if best is None or spread < best.iqr / best.median:
            best = measured
        if spread <= SPREAD_LIMIT:
            break
        then = "measuring again" if attempt < tries else f"keeping the least spread ({best.iqr / best.median:.0%})"
        warnings.warn(f"{label}: the spread is {spread:.0%} of the median (above {SPREAD_LIMIT:.0%}; try {attempt} of "
                      f"{tries}): {then}", stacklevel=2)
    return best


#: the reference probe's matrix size per device type: large enough on a GPU to reach its tensor
#: cores' rate (a small matmul there measures kernel launches), small enough on a CPU to take seconds
PROBE_SIZE = {"cpu": 1024, "cuda": 8192}
#: the dtypes a profile may be measured in (``--dtype``)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def reference_probe(device: torch.device, threads: int, dtype: torch.dtype = torch.float32,
                    size: int = PROBE_SIZE["cpu"]) -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul in ``dtype``: the machine's speed when the profile
    ran, in the profile's dtype (what :mod:`p2pllm_abm.costs` scales prefill times by)."""
    a = torch.randn(size, size, device=device).to(dtype)
    median = _measure("a @ a", "", {"a": a}, device, threads, 0.3).median
    return 2 * size**3 / median / 1e9


def bandwidth_probe(device: torch.device, threads: int, megabytes: int = 256) -> float:
    """Memory bandwidth in GB/s measured by copying a ``megabytes`` fp32 tensor (read + write)."""
    source = torch.empty(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    median = _measure("target.copy_(source)", "", {"source": source, "target": target}, device, threads,
                      0.3).median
    return 2 * source.numel() * 4 / median / 1e9


def shard_bytes(shard: Shard, dtype: torch.dtype) -> int:
    """Weight bytes a decode step of ``shard`` must read: every parameter but the token
    embedding, of which a step reads one row per token."""
    embedding = shard.embed.weight.numel() if shard.is_first else 0
    return (sum(p.numel() for p in shard.parameters()) - embedding) * (torch.finfo(dtype).bits // 8)


def prefill_flops(shard: Shard, batch: int, tokens: int) -> int:
    """Matmul FLOPs of a prefill: 2 per weight per token (embedding lookups excluded) plus the
    attention scores and values, ``4 * tokens^2 * hidden`` per layer (causal: half of it)."""
    embedding = shard.embed.weight.numel() if shard.is_first else 0
    weights = sum(p.numel() for p in shard.parameters()) - embedding
    attention = 2 * len(shard.layers) * tokens * tokens * shard.config.hidden_size
    return batch * (2 * weights * tokens + attention)


def kv_bytes(shard: Shard, kv_len: int, batch: int, dtype: torch.dtype) -> int:
    config = shard.config
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * len(shard.layers) * batch * kv_len * config.num_key_value_heads * head_dim * (torch.finfo(dtype).bits // 8)


def profile_shards(preset: str, n_stages: int, batch: int = 1, seq_len: int = 128, kv_len: int = 128,
                   threads: int | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   min_run_time: float = 1.0, seed: int = 0, cuda_graphs: bool = False) -> dict:
    """The cost profile of ``preset`` split into ``n_stages`` shards (see module docstring).
    ``cuda_graphs``: time each prefill and decode step as the replay of a captured CUDA graph over
    static KV caches (a GPU only), else eagerly, one Python launch per kernel."""
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs = True is invalid on device = {str(device)!r}: allowed on a CUDA device only")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = build_model(preset, seed, dtype).to(device)
    shards = split(model, layer_bounds(model.config.num_hidden_layers, n_stages))
    probe_size = PROBE_SIZE.get(device.type, PROBE_SIZE["cpu"])
    probe, bandwidth = reference_probe(device, threads, dtype, probe_size), bandwidth_probe(device, threads)
    stages = []
    for index, shard in enumerate(shards):
        def inputs(tokens: int) -> torch.Tensor:
            if shard.is_first:
                return torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)
            return torch.randn(batch, tokens, model.config.hidden_size, device=device, dtype=dtype)

        scope = {"shard": shard, "prompt": inputs(seq_len), "token": inputs(1), "history": inputs(kv_len),
                 "kv_len": kv_len}
        if cuda_graphs:  # static caches written in place: the prompt at 0.., the token at kv_len
            prefill_cache, decode_cache = shard.new_cache(seq_len), shard.new_cache(kv_len + 1)
            shard(scope["history"], 0, decode_cache)
            scope["prefill_graph"] = capture_graph(lambda: shard(scope["prompt"], 0, prefill_cache))
            scope["decode_graph"] = capture_graph(lambda: shard(scope["token"], kv_len, decode_cache))
            prefill_stmt, decode_stmt, decode_setup = "prefill_graph.replay()", "decode_graph.replay()", ""
        else:  # a fresh growing cache per prefill; decode appends the token, then crops it off
            prefill_stmt = "shard(prompt, 0, shard.new_cache())"
            decode_stmt = "shard(token, kv_len, cache); cache.crop(kv_len)"
            decode_setup = "cache = shard.new_cache(); shard(history, 0, cache)"
        prefill = least_spread(lambda: _measure(prefill_stmt, "", scope, device, threads, min_run_time),
                               f"stage {index} prefill")
        decode = least_spread(lambda: _measure(decode_stmt, decode_setup, scope, device, threads, min_run_time),
                              f"stage {index} decode")
        memory_bound = (shard_bytes(shard, dtype) + kv_bytes(shard, kv_len, batch, dtype)) / (bandwidth * 1e9)
        stages.append({
            "stage": index, "layers": [shard.start, shard.end], "first": shard.is_first, "last": shard.is_last,
            "parameters": sum(p.numel() for p in shard.parameters()),
            "prefill_ms": prefill.median * 1e3, "prefill_iqr_ms": prefill.iqr * 1e3,
            "decode_ms": decode.median * 1e3, "decode_iqr_ms": decode.iqr * 1e3,
            "decode_memory_bound_ms": memory_bound * 1e3, "decode_over_memory_bound": decode.median / memory_bound,
            "weight_bytes": shard_bytes(shard, dtype), "kv_bytes": kv_bytes(shard, kv_len, batch, dtype),
            "prefill_flops": prefill_flops(shard, batch, seq_len), "source": "measured",
        })
    profile = {
        "metadata": {
            "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "transformers": transformers.__version__, "dtype": str(dtype).removeprefix("torch."), "threads": threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "preset": preset, "shapes": vars(PRESETS[preset]), "batch": batch, "seq_len": seq_len,
            "kv_len": kv_len, "reference_gflops": probe, "memory_bandwidth_gbs": bandwidth,
            "reference_probe": f"{probe_size}^3 matmul in {str(dtype).removeprefix('torch.')}",
            "execution": "cuda_graph" if cuda_graphs else "eager",
        },
        "stages": stages,
    }
    profile["estimates"] = device_estimates(profile)
    return profile


def format_table(profile: dict) -> str:
    meta = profile["metadata"]
    lines = [f"{meta['preset']} on {meta['device']} ({meta['dtype']}, {meta['execution']}, {meta['threads']} threads), "
             f"batch {meta['batch']}, prompt {meta['seq_len']}, KV cache {meta['kv_len']}; probe "
             f"{meta['reference_gflops']:.1f} GFLOP/s, {meta['memory_bandwidth_gbs']:.1f} GB/s",
             "| stage | layers | prefill (ms) | decode (ms) | decode memory bound (ms) | measured / bound |",
             "|---|---|---|---|---|---|"]
    for s in profile["stages"]:
        lines.append(f"| {s['stage']} | {s['layers'][0]}-{s['layers'][1]} | {s['prefill_ms']:.2f} ± "
                     f"{s['prefill_iqr_ms']:.2f} | {s['decode_ms']:.3f} ± {s['decode_iqr_ms']:.3f} | "
                     f"{s['decode_memory_bound_ms']:.3f} | {s['decode_over_memory_bound']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m torch_backend.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-134m", choices=sorted(PRESETS))
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--kv-len", type=int, default=128)
    parser.add_argument("--threads", type=int, help="default: torch's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="weights, activations and the reference probe (the shipped CPU profile: float32; "
                             "the GPU ones: bfloat16, as served)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="time each step as the replay of a captured CUDA graph with static KV caches, as "
                             "servers run decode (a GPU only; default: eager, launch by launch)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timed statement")
    parser.add_argument("--out", type=Path, default=Path("profile.json"))
    parser.add_argument("--force", action="store_true", help=f"overwrite a shipped profile in {PROFILES_DIR}")
    args = parser.parse_args(argv)
    if args.out.exists() and args.out.resolve().parent == PROFILES_DIR.resolve() and not args.force:
        parser.error(f"--out = {str(args.out)!r} is a shipped profile: allowed a new path, or --force to overwrite it")
    for name in ("stages", "batch", "seq_len", "kv_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)} is invalid: allowed >= 1")
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error(f"--cuda-graphs is invalid with --device = {args.device!r}: allowed with a CUDA device only")
    profile = profile_shards(args.preset, args.stages, args.batch, args.seq_len, args.kv_len, args.threads,
                             args.device, DTYPES[args.dtype], min_run_time=args.min_run_time,
                             cuda_graphs=args.cuda_graphs)
    args.out.write_text(json.dumps(profile, indent=2))
    print(format_table(profile))
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
