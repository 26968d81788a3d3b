"""p2pllm_abm.compile_cache: compiled programs kept on disk, loaded by later processes, the same outputs."""

from pathlib import Path

import pandas as pd
import pytest

from p2pllm_abm.compile_cache import cache_directory, enable_compilation_cache
from p2pllm_abm.config import ConfigError, load_config
from tests.test_cli import FAST, sim


def test_where_each_setting_keeps_the_cache(monkeypatch, tmp_path):
    assert cache_directory(None) is None
    monkeypatch.setenv("P2PLLM_ABM_COMPILATION_CACHE", str(tmp_path / "jax"))
    assert cache_directory("auto") == tmp_path / "jax"
    monkeypatch.delenv("P2PLLM_ABM_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory("auto") == tmp_path / "xdg" / "p2pllm-abm" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_directory("auto") == Path.home() / ".cache" / "p2pllm-abm" / "jax"
    assert cache_directory("~/compiled") == Path.home() / "compiled"


def test_a_cache_directory_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"run.compilation_cache = '.*a-file/jax' is invalid: allowed null, 'auto' or a directory"):
        enable_compilation_cache(str(blocker / "jax"))
    with pytest.raises(ConfigError, match=r"run.compilation_cache = '' is invalid"):
        load_config("paper_28", ["run.compilation_cache=''"])


def test_a_later_process_loads_every_compiled_program_and_writes_the_same_outputs(tmp_path):
    cache = tmp_path / "cache"

    def run(name: str, setting: str) -> pd.DataFrame:
        result = sim("experiment=paper_table1", *FAST, "run.figures=false", f"run.compilation_cache={setting}",
                     f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        return pd.read_parquet(tmp_path / name / "metrics.parquet")

    def entries() -> set[str]:
        return {path.name for path in cache.glob("*-cache")}

    cold = run("cold", str(cache))
    written = entries()
    assert len(written) >= 5  # the steps, the certificate, the welfare, ...
    warm = run("warm", str(cache))
    assert entries() == written  # nothing compiled again
    pd.testing.assert_frame_equal(warm, cold, check_exact=True)
    pd.testing.assert_frame_equal(run("none", "null"), cold, check_exact=True)
