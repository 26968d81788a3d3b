"""A request through the real shards of a routed path, with a commitment to every hop's activation.

    from p2pllm_abm import P2PLLMModel, load_config
    from torch_backend.model import build_model
    from torch_backend.route import forward_along_path

    sim = P2PLLMModel(load_config("paper_28"))
    _, path = sim.route(alpha=0.5)
    logits, hops = forward_along_path(build_model("tiny"), sim.peers, path, torch.tensor([[1, 2, 3]]))

Each peer on the path runs the decoder layers of its span of stages (the model's layers split
evenly over the network's stages) as a separate :class:`~torch_backend.model.Shard` and hands its
hidden state to the next. Every hop commits to its output by :func:`commitment`, what a ledger's
proof of computation can later check.

Why a fingerprint and not the raw bytes: the same computation on another batch size, kernel or
device gives floats that differ in their last bits (bitwise equality holds only on one machine
and setup), so a hash of the raw tensor would accuse honest peers. The fingerprint is the set of
indices of the ``k`` largest-magnitude entries of the last token's hidden state (per sequence):
rounding noise of 1e-6 does not reorder entries that are apart by more than that, while any
real change to the computation (other weights, a skipped layer, a tampered activation) moves
them. Near-ties between the k-th and (k+1)-th magnitude can still flip; the ledger should compare
the index sets with a tolerance (their overlap), which this hash of the sorted set makes exact
and cheap for the common case.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaForCausalLM

from p2pllm_abm.network import PeerTable

from .model import Shard, layer_bounds

#: entries in a fingerprint
TOP_K = 32


def fingerprint(hidden: torch.Tensor, k: int = TOP_K) -> np.ndarray:
    """Sorted indices of the ``k`` largest ``|hidden|`` entries of the last position, per sequence."""
    last = hidden[:, -1, :].abs()
    return np.sort(torch.topk(last, min(k, last.shape[-1]), dim=-1).indices.cpu().numpy(), axis=-1)


def commitment(hidden: torch.Tensor, k: int = TOP_K) -> str:
    """SHA-256 of the shape and :func:`fingerprint` of an activation."""
    digest = hashlib.sha256(str(tuple(hidden.shape)).encode())
    digest.update(fingerprint(hidden, k).astype(np.int32).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Hop:
    peer: int
    layers: tuple[int, int]  #: decoder layers [start, end) the peer ran
    commitment: str  #: of the activation (logits for the last hop) it handed on


def peer_layers(peers: PeerTable, peer: int, num_layers: int) -> tuple[int, int]:
    """Decoder layers of ``peer``'s span of stages."""
    bounds = layer_bounds(num_layers, peers.n_stages)
    return bounds[int(peers.stage_start[peer])][0], bounds[int(peers.stage_end[peer]) - 1][1]


def forward_along_path(model: LlamaForCausalLM, peers: PeerTable, path: list[int], input_ids: torch.Tensor,
                       tamper=None, lazy: frozenset[int] = frozenset(), row: int | None = None
                       ) -> tuple[torch.Tensor, list[Hop]]:
    """Logits of ``input_ids`` computed hop by hop by the peers of ``path`` and each hop's
    commitment. ``tamper(hop_index, hidden) -> hidden``, if given, alters what a hop hands on
    (for tests of the commitments); the hops in ``lazy`` skip their layers and hand their input
    on (the first hop its token embeddings). ``row``: commit to that sequence of the batch only
    (a request served inside a batch of others); default the whole batch."""
    num_layers = model.config.num_hidden_layers
    hidden, hops = input_ids, []
    for index, peer in enumerate(path):
        start, end = peer_layers(peers, peer, num_layers)
        shard = Shard(model, start, end)
        if index in lazy:
            hidden = shard.embed(hidden) if shard.is_first else hidden
        else:
            hidden = shard(hidden, 0)
        if tamper is not None:
            hidden = tamper(index, hidden)
        hops.append(Hop(int(peer), (start, end), commitment(hidden if row is None else hidden[row:row + 1])))
    if not hops or hops[-1].layers[1] != num_layers or hops[0].layers[0] != 0:
        raise ValueError(f"path = {path} does not cover the model's {num_layers} layers")
    return hidden, hops


def first_disagreement(model: LlamaForCausalLM, peers: PeerTable, path: list[int], input_ids: torch.Tensor,
                       hops: list[Hop]) -> int | None:
    """The referee: re-execute the request (one sequence, batch 1) along ``path`` and return the
    index of the first hop whose committed fingerprint differs from the re-execution's, or None
    when every hop agrees. The fingerprint tolerates the float noise of other batch sizes and
    kernels, so honest hops agree; a hop that skipped its layers does not."""
    _, honest = forward_along_path(model, peers, path, input_ids)
    return next((k for k, (mine, theirs) in enumerate(zip(honest, hops)) if mine.commitment != theirs.commitment), None)
