"""Separate cores for the host's Python and XLA's CPU threads during a small market's fused run."""

import os

import jax.numpy as jnp
import pandas as pd
import pytest

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.cores import allowed_threads, separate_cores, xla_threads

linux_with_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and two cores")


def affinities() -> dict[int, set[int]]:
    """The affinity of this thread (key 0) and of each XLA pool thread."""
    return {0: os.sched_getaffinity(0), **{thread: os.sched_getaffinity(thread) for thread in xla_threads()}}


@linux_with_two_cores
def test_the_caller_and_xla_threads_get_separate_cores_and_are_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jnp.ones(1000).sum().block_until_ready()  # XLA's client and its pool exist
    before = affinities()
    cores = sorted(before[0])
    with separate_cores() as separated:
        assert separated
        inside = affinities()
        assert inside[0] == {cores[0]}
        assert len(inside) > 1 and all(affinity == set(cores[1:]) for thread, affinity in inside.items() if thread)
    assert affinities() == before


@linux_with_two_cores
def test_a_job_given_one_thread_or_a_disabled_run_keeps_its_affinities(monkeypatch):
    before = affinities()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a sweep's job given one core's share
    assert allowed_threads() == 1
    with separate_cores() as separated:
        assert not separated and affinities() == before
    monkeypatch.delenv("OMP_NUM_THREADS")
    with separate_cores(enabled=False) as separated:
        assert not separated and affinities() == before


@linux_with_two_cores
def test_a_fused_run_separates_the_cores_only_while_it_runs_and_computes_the_same(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    overrides = ["clients.count=16", "allocation.period=10", "report.table_steps=[0]", "run.record_interval=20"]
    seen = []
    frames = []
    for separate in (True, False):
        model = P2PLLMModel(load_config("paper_table1", overrides=[*overrides, f"run.separate_cores={separate}"]))
        model.run(5)  # XLA's pool exists
        before = affinities()
        original = model.recorder.finish
        monkeypatch.setattr(model.recorder, "finish", lambda state: (
            seen.append((separate, model.steps, affinities()[0])), original(state)))
        model.run(60)
        assert affinities() == before
        frames.append(model.metrics_frame())
    # the records inside the run (steps 20, 40, 60) on the first core; the run's last (65) after it
    assert [(step, affinity == {min(os.sched_getaffinity(0))}) for separate, step, affinity in seen if separate] == [
        (20, True), (40, True), (60, True), (65, False)]
    assert all(affinity == os.sched_getaffinity(0) for separate, _, affinity in seen if not separate)
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
