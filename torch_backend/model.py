"""A Llama-style decoder with random weights, split into the stages a network serves.

The model is ``transformers``' ``LlamaForCausalLM`` built from a ``LlamaConfig`` alone (RMSNorm,
rotary position embeddings, grouped-query attention with a KV cache, SwiGLU MLP): no weights are
ever downloaded (``HF_HUB_OFFLINE=1`` is set on import). :class:`Shard` holds a contiguous block
of decoder layers, with the token embedding on the first shard and the final norm and LM head on
the last; :func:`run_chain` passes hidden states from shard to shard, each shard keeping its own
KV cache, exactly as peers on a path would.

Two facts about transformers 4.57 this relies on (pinned in the ``[torch]`` extra): decoder layers
called one at a time without a mask are causal only under SDPA attention (eager attention silently
is not), so the model is built with ``attn_implementation="sdpa"``; and a shard's own cache does
not know how many tokens came before, so positions are always passed explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.cache_utils import DynamicCache, StaticCache  # noqa: E402


@dataclass(frozen=True)
class Preset:
    """Shapes of a Llama-style model (weights are random)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 32_000

    def config(self) -> LlamaConfig:
        return LlamaConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=self.num_key_value_heads, vocab_size=self.vocab_size,
                           max_position_embeddings=4096, attn_implementation="sdpa")

    def parameters(self) -> int:
        """Parameter count (embedding and LM head untied)."""
        head_dim = self.hidden_size // self.num_attention_heads
        attention = self.hidden_size * head_dim * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        layer = attention + mlp + 2 * self.hidden_size
        return self.num_hidden_layers * layer + 2 * self.vocab_size * self.hidden_size + self.hidden_size


#: model shapes: "tiny" for tests; "llama-134m" 12 layers of width 768 (a 110M-class Llama with
#: untied 32k embeddings); "llama-1b" the Llama-3.2-1B shapes; "llama-7b" the Llama-2-7B shapes
PRESETS = {
    "tiny": Preset(64, 176, 4, 4, 2, vocab_size=512),
    "llama-134m": Preset(768, 2048, 12, 12, 12),
    "llama-1b": Preset(2048, 8192, 16, 32, 8, vocab_size=128_256),
    "llama-7b": Preset(4096, 11008, 32, 32, 32),
}


def available_memory_bytes() -> int:
    """Memory this process could still allocate (Linux: MemAvailable), or 0 if unknown."""
    try:
        for line in open("/proc/meminfo").read().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def build_model(preset: str | Preset, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """The model of ``preset`` with weights drawn from ``seed`` (eval mode). Refuses a model whose
    weights would not fit in the memory available (a 7B model in fp32 needs 27 GB)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset = {preset!r} is invalid: allowed one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    needed = preset.parameters() * (torch.finfo(dtype).bits // 8)
    available = available_memory_bytes()
    if available and needed > 0.8 * available:
        raise MemoryError(f"preset needs {needed / 2**30:.1f} GiB of weights in {dtype}, more than 80% of the "
                          f"{available / 2**30:.1f} GiB available: allowed a smaller preset or dtype")
    torch.manual_seed(seed)
    return LlamaForCausalLM(preset.config()).to(dtype).eval()


def layer_bounds(num_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """Split ``num_layers`` decoder layers into ``n_stages`` contiguous blocks, as evenly as
    possible (earlier stages take the remainder)."""
    if not 1 <= n_stages <= num_layers:
        raise ValueError(f"n_stages = {n_stages} is invalid: allowed 1 <= n_stages <= {num_layers} (the layers)")
    base, extra = divmod(num_layers, n_stages)
    sizes = [base + (s < extra) for s in range(n_stages)]
    starts = [sum(sizes[:s]) for s in range(n_stages)]
    return [(start, start + size) for start, size in zip(starts, sizes)]


class Shard(nn.Module):
    """Decoder layers ``[start, end)`` of ``model``; the first shard embeds token ids, the last
    applies the final norm and the LM head. Shares the model's parameters (no copy)."""

    def __init__(self, model: LlamaForCausalLM, start: int, end: int) -> None:
        super().__init__()
        num_layers = model.config.num_hidden_layers
        if not 0 <= start < end <= num_layers:
            raise ValueError(f"shard [{start}, {end}) is invalid: allowed 0 <= start < end <= {num_layers}")
        self.config = model.config
        self.start, self.end = start, end
        self.layers = nn.ModuleList(model.model.layers[start:end])
        self.rotary = model.model.rotary_emb
        self.embed = model.model.embed_tokens if start == 0 else None
        self.norm = model.model.norm if end == num_layers else None
        self.head = model.lm_head if end == num_layers else None

    @property
    def is_first(self) -> bool:
        return self.embed is not None

    @property
    def is_last(self) -> bool:
        return self.head is not None

    def new_cache(self, max_len: int | None = None) -> DynamicCache | StaticCache:
        """An empty KV cache for this shard: growing (``DynamicCache``), or preallocated for
        ``max_len`` tokens (``StaticCache``: fixed addresses, written in place at the tokens'
        positions, which a CUDA graph's replay needs; only this shard's layers are allocated)."""
        if max_len is None:
            return DynamicCache(config=self.config)
        if max_len < 1:
            raise ValueError(f"max_len = {max_len} is invalid: allowed >= 1 (tokens)")
        return StaticCache(config=self.config, max_cache_len=max_len)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, position: int,
                cache: DynamicCache | StaticCache | None = None) -> torch.Tensor:
        """Token ids (first shard) or hidden states ``(batch, tokens, hidden)`` of the tokens at
        positions ``position, position + 1, ...``; returns hidden states, or logits from the last
        shard. ``cache`` (this shard's own) is extended in place."""
        hidden = self.embed(inputs) if self.is_first else inputs
        positions = torch.arange(position, position + hidden.shape[1], device=hidden.device)
        position_ids = positions.unsqueeze(0).expand(hidden.shape[0], -1)
        embeddings = self.rotary(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=position_ids, past_key_values=cache,
                           use_cache=cache is not None, cache_position=positions, position_embeddings=embeddings)
        if self.is_last:
            hidden = self.head(self.norm(hidden))
        return hidden


def split(model: LlamaForCausalLM, bounds: list[tuple[int, int]]) -> list[Shard]:
    """Shards for consecutive layer spans that tile the model."""
    ends = [0] + [end for _, end in bounds]
    if [start for start, _ in bounds] != ends[:-1] or ends[-1] != model.config.num_hidden_layers:
        raise ValueError(f"bounds = {bounds} is invalid: allowed consecutive spans tiling "
                         f"[0, {model.config.num_hidden_layers})")
    return [Shard(model, start, end) for start, end in bounds]


def run_chain(shards: list[Shard], input_ids: torch.Tensor, position: int = 0,
              caches: list[DynamicCache] | None = None, hook=None) -> torch.Tensor:
    """Logits of ``input_ids`` passed through ``shards`` in order (with their ``caches``, if
    given); ``hook(shard_index, hidden)`` sees every hand-over between shards."""
    hidden = input_ids
    for index, shard in enumerate(shards):
        hidden = shard(hidden, position, caches[index] if caches is not None else None)
        if hook is not None and not shard.is_last:
            hook(index, hidden)
    return hidden
