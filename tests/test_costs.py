"""Grounded compute costs from the shipped cost profile (no torch needed)."""

import numpy as np
import pytest

from p2pllm_abm import ConfigError, P2PLLMModel, load_config
from p2pllm_abm.config import validate
from p2pllm_abm.costs import PROFILED, device_estimates, devices, load_profile, span_costs, stage_times
from p2pllm_abm.paths import CONF_DIR

PROFILE = "llama-134m_4stages_cpu.json"
#: every profile shipped in conf/profiles/: the CPU one, and those measured on an NVIDIA H200 and H100
SHIPPED = sorted(path.name for path in (CONF_DIR / "profiles").glob("*.json"))
#: the GPU profiles' names: ``<preset>_4stages_<gpu>_<dtype>[_graphs].json``, and each GPU's datasheet
#: bandwidth (GB/s) and dense bf16 peak (GFLOP/s), which no measurement on it can exceed
GPUS = {"h200": ("H200", 4800, 989_400), "h100": ("H100", 3350, 989_400)}
GPU_PROFILES = [name for name in SHIPPED if name.split("_")[2] in GPUS]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_are_measured_with_metadata(name):
    profile = load_profile(name)
    meta = profile["metadata"]
    for key in ("device", "torch", "transformers", "dtype", "threads", "date", "shapes", "reference_gflops",
                "memory_bandwidth_gbs", "execution"):
        assert key in meta
    assert name.startswith(f"{meta['preset']}_4stages_")
    assert meta["execution"] == ("cuda_graph" if name.endswith("_graphs.json") else "eager")
    assert [s["source"] for s in profile["stages"]] == ["measured"] * 4
    assert all(e["source"] == "estimated" for stages in profile["estimates"].values() for e in stages)
    assert device_estimates(profile) == profile["estimates"]  # the stored estimates are what the code computes
    # the last stage carries the LM head: more bytes per decode step, more time; where a GPU's step
    # is launched eagerly it is bound by the launches (README), so only not faster beyond the spreads
    last, before = profile["stages"][3], profile["stages"][2]
    assert last["weight_bytes"] > before["weight_bytes"]
    launch_bound = meta["device_type"] == "cuda" and meta["execution"] == "eager"
    slack = last["decode_iqr_ms"] + before["decode_iqr_ms"] if launch_bound else 0.0
    assert last["decode_ms"] > before["decode_ms"] - slack
    assert all(s["decode_over_memory_bound"] > 1 for s in profile["stages"])  # nothing beats the memory bound


def test_gpu_profiles_were_measured_on_the_gpu_in_their_dtype():
    """The GPU profiles: a CUDA device named as in the file name, the dtype in the name, the
    reference probe an 8192^3 matmul in that dtype, and a bandwidth and probe that GPU can give
    (under its datasheet's bandwidth and dense bf16 peak)."""
    assert len(GPU_PROFILES) == 11
    for name in GPU_PROFILES:
        meta = load_profile(name)["metadata"]
        gpu, dtype = name.removesuffix(".json").removesuffix("_graphs").split("_")[2:]
        label, bandwidth, peak = GPUS[gpu]
        dtype = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
        assert meta["device_type"] == "cuda" and label in meta["device"] and meta["dtype"] == dtype
        assert meta["reference_probe"] == f"8192^3 matmul in {dtype}"
        assert 1000 < meta["memory_bandwidth_gbs"] < bandwidth and meta["reference_gflops"] < peak


def test_cuda_graphs_remove_the_launch_overhead():
    """On the one H100, each preset's decode step replayed as a CUDA graph is faster than launched
    eagerly, stage by stage, and llama-7b's comes within 2x of its memory-bound minimum."""
    for preset in ("llama-134m", "llama-1b", "llama-7b"):
        eager, graphs = (load_profile(f"{preset}_4stages_h100_bf16{suffix}.json")["stages"]
                         for suffix in ("", "_graphs"))
        for launched, replayed in zip(eager, graphs):
            assert replayed["decode_ms"] < launched["decode_ms"] and replayed["prefill_ms"] < launched["prefill_ms"]
    graphs_7b = load_profile("llama-7b_4stages_h100_bf16_graphs.json")["stages"]
    assert all(stage["decode_over_memory_bound"] < 2 for stage in graphs_7b)


def test_a_gpu_profile_grounds_the_experiment():
    """With the llama-7b H200 profile, a peer on the profiled device costs its stage's measured
    decode time, and one on an RTX 4090 that time scaled by the bandwidths."""
    name = "llama-7b_4stages_h200_bf16.json"
    model = P2PLLMModel(load_config("grounded_costs", overrides=[
        f"network.cost_profile={name}",
        "network.device_mix={rtx4090: 1.0, profiled: 1.0, h100_sxm: 0, a100_sxm: 0, rtx3060: 0, apple_m2: 0}"]))
    profile, peers = load_profile(name), model.peers
    measured = np.array([s["decode_ms"] for s in profile["stages"]])
    scaled = measured * profile["metadata"]["memory_bandwidth_gbs"] / devices()["rtx4090"]["bandwidth_gbs"]
    for stage in range(4):
        assert set(np.round(peers.cost[peers.stage == stage], 12)) == set(np.round([measured[stage], scaled[stage]], 12))


def test_device_scaling_follows_the_roofline():
    profile = load_profile(PROFILE)
    measured = stage_times(profile, PROFILED, "decode")
    bandwidth = profile["metadata"]["memory_bandwidth_gbs"]
    for name, spec in devices().items():
        np.testing.assert_allclose(stage_times(profile, name, "decode"), measured * bandwidth / spec["bandwidth_gbs"])
        assert spec["source"]
    decode = {name: stage_times(profile, name, "decode")[0] for name in devices()}
    assert decode["h100_sxm"] < decode["a100_sxm"] < decode["rtx4090"] < decode["rtx3060"] < decode["apple_m2"]
    prefill = {name: stage_times(profile, name, "prefill")[0] for name in devices()}
    assert prefill["h100_sxm"] < prefill["rtx4090"] < prefill["apple_m2"]
    estimates = device_estimates(profile)
    assert estimates["a100_sxm"][1]["decode_ms"] == pytest.approx(stage_times(profile, "a100_sxm", "decode")[1])
    stage = profile["stages"][1]
    assert estimates["a100_sxm"][1]["decode_roofline_ms"] == pytest.approx(
        (stage["weight_bytes"] + stage["kv_bytes"]) / 2039e9 * 1e3)
    first = profile["stages"][0]
    assert estimates["h100_sxm"][0]["prefill_roofline_ms"] == pytest.approx(first["prefill_flops"] / 989.4e12 * 1e3)
    assert estimates == profile["estimates"]  # what the shipped file stores


def test_span_cost_is_the_sum_of_its_stages():
    profile = load_profile(PROFILE)
    times = stage_times(profile, "rtx4090", "decode")
    costs = span_costs(profile, np.array([0, 1, 0]), np.array([1, 3, 4]), np.array(["rtx4090"] * 3), "decode")
    np.testing.assert_allclose(costs, [times[0], times[1] + times[2], times.sum()])
    assert costs[2] > costs[1] > costs[0]


def test_grounded_costs_experiment_draws_devices_from_the_mix():
    only = "network.device_mix={rtx4090: 1.0, profiled: 1.0, h100_sxm: 0, a100_sxm: 0, rtx3060: 0, apple_m2: 0}"
    model = P2PLLMModel(load_config("grounded_costs", overrides=[only]))
    peers = model.peers
    profile = load_profile(PROFILE)
    for stage in range(4):
        options = {stage_times(profile, d, "decode")[stage] for d in ("rtx4090", PROFILED)}
        costs = peers.cost[peers.stage == stage]
        assert set(np.round(costs, 12)) == set(np.round(list(options), 12))
    model.run(20)
    assert np.all(np.isfinite(model.peers.price))


@pytest.mark.parametrize(("override", "field"), [
    ("network.cost_profile=missing.json", "network.cost_profile"),
    ("network.stages=3", "network.cost_profile"),
    ("network.device_mix={rtx4090: -1.0}", "network.device_mix"),
    ("network.cost_metric=energy", "network.cost_metric"),
    ("network.cost_source=magic", "network.cost_source"),
])
def test_bad_cost_settings_are_rejected(override, field):
    overrides = [override] + (["network.initial_distribution=null"] if "stages" in override else [])
    with pytest.raises(ConfigError) as err:
        load_config("grounded_costs", overrides=overrides)
    assert err.value.field == field


def test_unknown_device_is_rejected():
    config = load_config("grounded_costs")
    config.network.device_mix = {"tpu_v9": 1.0}
    with pytest.raises(ConfigError, match="network.device_mix"):
        validate(config)


def test_reallocation_with_stage_dependent_costs():
    """Profiled costs depend on the stage (c_i(s), a device's time for that stage's layers):
    reallocation runs eq. 7-8 with c_i(s), every peer's cost is its device's time where it now is,
    and no peer can raise its eq.-7 share c_i(l)^-1 / (C_l + c_i(l)^-1) by more than rounding."""
    model = P2PLLMModel(load_config("grounded_costs", overrides=[
        "allocation.enabled=true", "allocation.move_fraction=1.0", "network.device_mix={rtx4090: 1.0, profiled: 1.0}",
        "run.steps=60"]))
    stage_cost = model.peers.stage_cost.copy()
    assert not np.allclose(stage_cost, stage_cost[:, :1])  # the stages really differ
    model.run(60)
    peers = model.peers
    assert model.moves > 0
    np.testing.assert_array_equal(peers.cost, stage_cost[np.arange(len(peers)), peers.stage])
    capacity = np.bincount(peers.stage, weights=1 / peers.cost, minlength=peers.n_stages)
    for i in range(len(peers)):
        mine = 1 / stage_cost[i]
        shares = mine / (capacity + mine)
        shares[peers.stage[i]] = mine[peers.stage[i]] / capacity[peers.stage[i]]
        assert shares.max() <= shares[peers.stage[i]] * (1 + 1e-9)
