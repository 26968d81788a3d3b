"""How often honest hops would be accused: exact SHA-256 of activations vs the top-k fingerprint.

    python -m torch_backend.fingerprints --preset llama-134m --stages 4 \\
        --out conf/fingerprints/llama-134m_4stages_cpu.json

Every request is run once as the reference (alone, batch 1, the default thread count, the whole
prompt in one prefill) and again inside batches of 1, 8 and 32 (other random prompts of the same
length beside it) with 1 and 2 threads, and once as a peer serving it would: the prompt but its
last token prefilled into each shard's KV cache, then the last token decoded (``mode =
"decode"``; a verifier re-executes in prefill). At each hop (a stage's shard) the output at the
last position is compared with the reference's by

- ``exact``: SHA-256 of the activation's bytes (what "hash the intermediate states" means
  literally), and
- ``topk``: :func:`~torch_backend.route.commitment`, the hash of the sorted indices of the
  ``k`` largest entries of the last position.

A mismatch of an honest hop is a false accusation. The file also records how often each
fingerprint *misses* a lazy hop (one that skips its layers and hands its input on). The
simulation draws honest false mismatches and missed cheats from these rates
(``verification.fingerprint=exact|topk``, :mod:`p2pllm_abm.verification`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .model import PRESETS, Shard, build_model, layer_bounds
from .route import commitment

BATCHES = (1, 8, 32)
THREADS = (1, 2)


def hop_outputs(shards: list[Shard], ids: torch.Tensor) -> list[torch.Tensor]:
    """Every hop's output for a batch of prompts."""
    hidden, outputs = ids, []
    with torch.no_grad():
        for shard in shards:
            hidden = shard(hidden, 0)
            outputs.append(hidden)
    return outputs


def decoded_outputs(shards: list[Shard], ids: torch.Tensor) -> list[torch.Tensor]:
    """Every hop's output for the last token, decoded after a prefill of the others (KV caches)."""
    caches = [shard.new_cache() for shard in shards]
    prefix, last = ids[:, :-1], ids[:, -1:]
    with torch.no_grad():
        for shard, cache in zip(shards, caches):
            prefix = shard(prefix, 0, cache)
        hidden, outputs = last, []
        for shard, cache in zip(shards, caches):
            hidden = shard(hidden, ids.shape[1] - 1, cache)
            outputs.append(hidden)
    return outputs


def exact(hidden: torch.Tensor) -> str:
    """SHA-256 of the bytes of the first sequence's last position."""
    return hashlib.sha256(hidden[0, -1].contiguous().numpy().tobytes()).hexdigest()


def measure(preset: str, stages: int, requests: int, length: int, seed: int = 0) -> dict:
    model = build_model(preset, seed=seed)
    bounds = layer_bounds(model.config.num_hidden_layers, stages)
    shards = [Shard(model, start, end) for start, end in bounds]
    generator = torch.Generator().manual_seed(seed + 1)
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (requests, length), generator=generator)
    default_threads = torch.get_num_threads()

    reference = []
    for r in range(requests):
        outputs = hop_outputs(shards, prompts[r:r + 1])
        reference.append([(exact(out), commitment(out[:1, -1:])) for out in outputs])

    def variant(mode: str, batch: int, threads: int) -> dict:
        mismatch = {"exact": np.zeros(stages), "topk": np.zeros(stages)}
        for r in range(requests):
            others = torch.randint(0, vocab, (batch - 1, length), generator=generator)
            ids = torch.cat([prompts[r:r + 1], others])
            outputs = hop_outputs(shards, ids) if mode == "prefill" else decoded_outputs(shards, ids)
            for hop, out in enumerate(outputs):
                mismatch["exact"][hop] += exact(out) != reference[r][hop][0]
                mismatch["topk"][hop] += commitment(out[:1, -1:]) != reference[r][hop][1]
        return {"mode": mode, "batch": batch, "threads": threads,
                **{f"{name}_mismatch_per_hop": (counts / requests).tolist() for name, counts in mismatch.items()},
                **{f"{name}_mismatch": float(counts.mean() / requests) for name, counts in mismatch.items()}}

    variants = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        variants += [variant("prefill", batch, threads) for batch in BATCHES]
        variants.append(variant("decode", 1, threads))
    torch.set_num_threads(default_threads)

    # lazy hops: skip the layers, hand the input on (the first hop embeds: it hands on the embedding)
    missed = {"exact": 0, "topk": 0}
    lazy_hops = 0
    for r in range(requests):
        with torch.no_grad():
            hidden = prompts[r:r + 1]
            for hop, shard in enumerate(shards):
                honest = shard(hidden, 0)
                lazy = model.model.embed_tokens(hidden) if hop == 0 else hidden
                if lazy.shape == honest.shape:
                    lazy_hops += 1
                    missed["exact"] += exact(lazy) == reference[r][hop][0]
                    missed["topk"] += commitment(lazy[:1, -1:]) == reference[r][hop][1]
                hidden = honest
    compared = [v for v in variants
                if not (v["mode"] == "prefill" and v["batch"] == 1 and v["threads"] == default_threads)]
    return {
        "preset": preset, "stages": stages, "requests": requests, "prompt_length": length,
        "reference": {"batch": 1, "threads": default_threads},
        "device": platform.processor() or platform.machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "variants": variants,
        "honest_mismatch": {name: float(np.mean([v[f"{name}_mismatch"] for v in compared])) for name in ("exact", "topk")},
        "lazy_missed": {name: missed[name] / max(lazy_hops, 1) for name in ("exact", "topk")},
        "lazy_hops_compared": lazy_hops,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m torch_backend.fingerprints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-134m", choices=list(PRESETS))
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--length", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for name in ("stages", "requests", "length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} = {getattr(args, name)} is invalid: allowed an integer >= 1")
    result = measure(args.preset, args.stages, args.requests, args.length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| mode | batch | threads | exact SHA-256 mismatch | top-k fingerprint mismatch |")
    print("|---|---|---|---|---|")
    for v in result["variants"]:
        print(f"| {v['mode']} | {v['batch']} | {v['threads']} | {v['exact_mismatch']:.3f} | {v['topk_mismatch']:.3f} |")
    print(f"\nhonest false mismatch (all but the reference setup): {result['honest_mismatch']}")
    print(f"lazy hops missed: {result['lazy_missed']} over {result['lazy_hops_compared']} hops")
    print(args.out)


if __name__ == "__main__":
    main()
