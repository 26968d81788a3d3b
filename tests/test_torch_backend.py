"""The optional torch backend (skipped without torch): shards, profile, routed forward, commitments."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from p2pllm_abm import P2PLLMModel, load_config  # noqa: E402
from p2pllm_abm.costs import PROFILED, span_costs  # noqa: E402
from torch_backend.model import build_model, layer_bounds, run_chain, split  # noqa: E402
from torch_backend.profile import profile_shards  # noqa: E402
from torch_backend.route import commitment, forward_along_path  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0)


@pytest.mark.parametrize("bounds", [[(0, 4)], [(0, 1), (1, 4)], [(0, 2), (2, 3), (3, 4)], layer_bounds(4, 4)])
def test_chained_shards_equal_the_whole_model(model, bounds):
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(ids, use_cache=True)
    shards = split(model, bounds)
    caches = [shard.new_cache() for shard in shards]
    torch.testing.assert_close(run_chain(shards, ids, 0, caches), whole.logits)
    step = torch.randint(0, 512, (2, 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(step, past_key_values=whole.past_key_values, use_cache=True).logits
    torch.testing.assert_close(run_chain(shards, step, 9, caches), expected)


def test_bad_splits_are_rejected(model):
    with pytest.raises(ValueError, match="tiling"):
        split(model, [(0, 2), (3, 4)])
    with pytest.raises(ValueError, match="n_stages"):
        layer_bounds(4, 5)


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    profile = profile_shards("tiny", 2, batch=1, seq_len=16, kv_len=16, threads=1, min_run_time=0.05)
    path = tmp_path_factory.mktemp("profile") / "tiny.json"
    path.write_text(json.dumps(profile))
    return path


def test_profile_round_trips_into_the_simulation(tiny_profile):
    profile = json.loads(tiny_profile.read_text())
    assert [s["layers"] for s in profile["stages"]] == [[0, 2], [2, 4]]
    assert all(s["decode_ms"] > 0 and s["prefill_ms"] > 0 and s["decode_over_memory_bound"] > 0
               for s in profile["stages"])
    assert profile["metadata"]["threads"] == 1 and profile["metadata"]["dtype"] == "float32"
    config = load_config("paper_28", overrides=[
        "network.stages=2", "network.initial_distribution=[14,14]", "network.cost_source=profile",
        f"network.cost_profile={tiny_profile}", "allocation.enabled=false"])
    peers = P2PLLMModel(config).peers
    expected = span_costs(profile, peers.stage_start, peers.stage_end, np.full(len(peers), PROFILED), "decode")
    np.testing.assert_array_equal(peers.cost, expected)


def test_longer_spans_and_slower_devices_cost_more(tiny_profile):
    profile = json.loads(tiny_profile.read_text())
    one, both = span_costs(profile, np.array([0, 0]), np.array([1, 2]), np.array([PROFILED] * 2), "prefill")
    assert both > one
    fast, slow = span_costs(profile, np.array([0, 0]), np.array([2, 2]), np.array(["h100_sxm", "apple_m2"]), "decode")
    assert fast < slow


def test_routed_forward_commits_to_every_hop(model):
    sim = P2PLLMModel(load_config("paper_28", overrides=["seed=2"]))
    _, path = sim.route(alpha=0.5)
    ids = torch.tensor([[5, 17, 42, 7]])
    logits, hops = forward_along_path(model, sim.peers, path, ids)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids).logits)
    assert [hop.peer for hop in hops] == path and [hop.layers for hop in hops] == layer_bounds(4, 4)
    _, again = forward_along_path(model, sim.peers, path, ids)
    assert [h.commitment for h in again] == [h.commitment for h in hops]

    def tamper(index, hidden):
        return hidden + 0.5 * torch.randn_like(hidden) if index == 1 else hidden

    _, tampered = forward_along_path(model, sim.peers, path, ids, tamper=tamper)
    assert tampered[0].commitment == hops[0].commitment
    assert tampered[1].commitment != hops[1].commitment


def test_commitment_ignores_rounding_noise(model):
    hidden = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    assert commitment(hidden + 1e-7 * torch.randn_like(hidden)) == commitment(hidden)
    assert commitment(hidden.flip(-1)) != commitment(hidden)


def test_referee_catches_a_lazy_hop_and_clears_honest_batches(model):
    from torch_backend.route import first_disagreement

    sim = P2PLLMModel(load_config("paper_28", overrides=["seed=2"]))
    _, path = sim.route(alpha=0.5)
    request = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    for batch in (1, 8, 32):  # the request served inside batches of others: honest, never accused
        others = torch.randint(0, 512, (batch - 1, 12), generator=torch.Generator().manual_seed(batch))
        _, hops = forward_along_path(model, sim.peers, path, torch.cat([request, others]), row=0)
        assert first_disagreement(model, sim.peers, path, request, hops) is None
    for lazy_hop in range(len(path)):
        _, hops = forward_along_path(model, sim.peers, path, request, lazy=frozenset({lazy_hop}))
        assert first_disagreement(model, sim.peers, path, request, hops) == lazy_hop


class _Timing:
    """A stand-in for torch.utils.benchmark.Measurement: median and interquartile range."""

    def __init__(self, median: float, iqr: float):
        self.median, self.iqr = median, iqr


def test_a_spread_timing_is_measured_again_with_a_warning():
    from torch_backend.profile import MAX_TRIES, least_spread

    timings = iter([_Timing(1.0, 0.5), _Timing(1.0, 0.3), _Timing(1.0, 0.1), _Timing(1.0, 0.0)])
    with pytest.warns(UserWarning) as caught:
        kept = least_spread(lambda: next(timings), "stage 0 decode")
    assert kept.iqr == 0.1 and len(caught) == 2  # the third was steady: no more tries
    assert "stage 0 decode: the spread is 50% of the median" in str(caught[0].message)
    always = [_Timing(1.0, 0.4), _Timing(1.0, 0.3), _Timing(1.0, 0.5)]
    with pytest.warns(UserWarning) as caught:
        kept = least_spread(iter(always).__next__, "stage 1 prefill")
    assert kept.iqr == 0.3 and len(caught) == MAX_TRIES
    assert "keeping the least spread (30%)" in str(caught[-1].message)
    steady = least_spread(lambda: _Timing(2.0, 0.2), "steady")  # 10%: no warning, one measurement
    assert steady.median == 2.0


def test_a_shipped_profile_is_not_overwritten_without_force(capsys):
    from torch_backend.profile import PROFILES_DIR, main

    shipped = next(PROFILES_DIR.glob("*.json"))
    before = shipped.read_bytes()
    with pytest.raises(SystemExit) as error:
        main(["--preset", "tiny", "--stages", "2", "--out", str(shipped)])
    assert error.value.code == 2 and "is a shipped profile" in capsys.readouterr().err
    assert shipped.read_bytes() == before


def test_the_profile_is_measured_in_the_dtype_asked_for(tmp_path):
    """``--dtype bfloat16``: the shards and the reference probe in bf16, said in the metadata."""
    from torch_backend.profile import main

    out = tmp_path / "tiny_bf16.json"
    main(["--preset", "tiny", "--stages", "2", "--seq-len", "16", "--kv-len", "16", "--threads", "1",
          "--min-run-time", "0.05", "--dtype", "bfloat16", "--out", str(out)])
    profile = json.loads(out.read_text())
    assert profile["metadata"]["dtype"] == "bfloat16"
    assert profile["metadata"]["reference_probe"] == "1024^3 matmul in bfloat16"
    float32 = profile_shards("tiny", 2, seq_len=16, kv_len=16, threads=1, min_run_time=0.05)
    assert [s["weight_bytes"] for s in profile["stages"]] == [s["weight_bytes"] // 2 for s in float32["stages"]]


def test_a_static_cache_gives_the_growing_caches_logits(model):
    """The static caches the CUDA-graph profile replays: the prompt written at 0.. and a decode
    step at ``kv_len`` give the growing cache's outputs, and repeating that step (as a replay
    does) rewrites the same slot with the same result."""
    first, last = split(model, layer_bounds(model.config.num_hidden_layers, 2))
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, 12), generator=generator)
    token = torch.randint(0, model.config.vocab_size, (1, 1), generator=generator)
    growing = [first.new_cache(), last.new_cache()]
    static = [first.new_cache(13), last.new_cache(13)]
    for caches in (growing, static):
        run_chain([first, last], prompt, 0, caches)
    expected = run_chain([first, last], token, 12, growing)
    for _ in range(2):
        torch.testing.assert_close(run_chain([first, last], token, 12, static), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_len = 0 is invalid"):
        first.new_cache(0)


def test_cuda_graphs_are_refused_off_a_gpu(capsys):
    from torch_backend.profile import main

    with pytest.raises(SystemExit) as error:
        main(["--preset", "tiny", "--stages", "2", "--device", "cpu", "--cuda-graphs", "--out", "/tmp/x.json"])
    assert error.value.code == 2 and "--cuda-graphs is invalid with --device = 'cpu'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="allowed on a CUDA device only"):
        profile_shards("tiny", 2, device="cpu", cuda_graphs=True)
