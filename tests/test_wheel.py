"""The wheel: built from this checkout and installed into a fresh venv, it runs ``p2pllm-sim`` (a run,
a multirun, a plug-in) and ``p2pllm-analysis`` from a directory outside the checkout, with its
configs, profiles, fingerprints and Vyper sources inside the package and no generic top-level name
(``conf``, ``analysis``, ``experiments``) installed.

The fresh venv reaches the third-party dependencies through a ``.pth`` line naming this
environment's site-packages (installing jax & co. from the index would take minutes); the
package itself, the thing under test, comes only from the wheel: this environment's editable
install of the checkout is not on that venv's path. Building and installing takes about half a
minute: the two tests that do are marked slow (``make test-slow``, which CI runs too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from p2pllm_abm import __version__

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """``(wheel, venv)``: the wheel built from the checkout, installed with no dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: setuptools builds in the tree, and a stale build/ could leak into the wheel
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "outputs", "multirun", ".pytest_cache", ".hypothesis", "*.egg-info",
        "__pycache__", "golden", "readme_figures"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("p2pllm_abm-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, venv


def run(venv: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_holds_the_package_data_and_no_generic_top_level_name(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"p2pllm_abm", "torch_backend"}
    for data in ("p2pllm_abm/conf/config.yaml", "p2pllm_abm/conf/devices.yaml",
                 "p2pllm_abm/conf/experiment/paper_table1.yaml", "p2pllm_abm/conf/sweep/alpha.yaml",
                 "p2pllm_abm/conf/profiles/llama-134m_4stages_cpu.json",
                 "p2pllm_abm/conf/fingerprints/llama-134m_4stages_cpu.json", "p2pllm_abm/analysis/__main__.py",
                 "p2pllm_abm/examples/plugin.py"):
        assert data in names
    assert any(name.startswith("p2pllm_abm/ledger/contracts_vy/") and name.endswith(".vy") for name in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {__version__}" in metadata
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "p2pllm-sim = p2pllm_abm.cli:main" in entry_points
    assert "p2pllm-analysis = p2pllm_abm.analysis.__main__:main" in entry_points


@pytest.mark.slow
def test_the_installed_wheel_runs_from_any_directory(installed, tmp_path):
    _, venv = installed
    where = run(venv, "python", "-c", "import p2pllm_abm; print(p2pllm_abm.__file__, p2pllm_abm.__version__)",
                cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)) and where.stdout.split()[1] == __version__
    fast = ["experiment=paper_28", "run.steps=20", "run.record_interval=10", "run.progress=false"]
    single = run(venv, "p2pllm-sim", *fast, "run.plugins=[p2pllm_abm.examples.plugin]",
                 "market.update_rule=partial_best_response", "hydra.run.dir=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["steps"] == 20
    multi = run(venv, "p2pllm-sim", "-m", *fast, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert multi.returncode == 0, multi.stderr
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 2
    analysis = run(venv, "p2pllm-analysis", "collect", "sweep", cwd=tmp_path)
    assert analysis.returncode == 0, analysis.stderr
    assert (tmp_path / "sweep" / "runs.parquet").stat().st_size > 0


def test_one_version_number():
    """pyproject.toml's version is the package's and the citation's."""
    import tomllib

    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
    assert yaml.safe_load((REPO / "CITATION.cff").read_text())["version"] == project["version"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
