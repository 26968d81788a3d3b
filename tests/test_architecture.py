"""The package's layering: no import cycles, config and registries at the bottom, and no
process-wide side effects when a library module is imported."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p2pllm_abm"


def module_imports() -> dict[str, set[str]]:
    """Each library module -> the package modules it imports at module level (not under
    ``if TYPE_CHECKING``, not inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent)
        if relative.parts[1] in ("analysis", "conf"):  # links to the repository's analysis/ and conf/
            continue
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
                target = ".".join([*base, node.module] if node.module else base) if node.level else node.module
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {candidate for candidate in candidates if candidate in modules and candidate != name}
    return graph


def test_the_package_has_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, module, target])}"
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_registries_import_nothing_of_the_package_and_config_no_implementation():
    graph = module_imports()
    assert graph["p2pllm_abm.registries"] == set()
    # config reads names and ranges from the registries; paths and the cost-profile files are data access
    assert graph["p2pllm_abm.config"] <= {"p2pllm_abm.registries", "p2pllm_abm.paths", "p2pllm_abm.profiles"}
    assert graph["p2pllm_abm.profiles"] <= {"p2pllm_abm.paths"}


def test_the_mesa_model_sits_above_the_engine_and_the_phases():
    graph = module_imports()
    for lower in ("p2pllm_abm.engine", "p2pllm_abm.phases", "p2pllm_abm.recorder", "p2pllm_abm.dynamics",
                  "p2pllm_abm.equilibrium", "p2pllm_abm.verification", "p2pllm_abm.behaviours"):
        assert "p2pllm_abm.model" not in graph[lower], f"{lower} imports the Mesa model"


def test_importing_the_library_changes_no_process_wide_state():
    """Importing every library module sets no matplotlib backend, stores no Hydra schema and
    changes no XLA flag: entry points (p2pllm-sim, p2pllm-analysis) and explicit calls do that."""
    modules = sorted(module for module in module_imports() if module not in ("p2pllm_abm.app", "p2pllm_abm.cli"))
    script = (
        "import importlib, json, os, sys\n"
        "flags = os.environ.get('XLA_FLAGS')\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "import matplotlib\n"
        "from hydra.core.config_store import ConfigStore\n"
        "print(json.dumps({'backend': matplotlib.rcParams._get_backend_or_none(),\n"
        "                  'schema': 'p2pllm_schema.yaml' in ConfigStore.instance().repo,\n"
        "                  'xla_flags_unchanged': os.environ.get('XLA_FLAGS') == flags,\n"
        "                  'pyplot': 'matplotlib.pyplot' in sys.modules}))\n")
    env = {key: value for key, value in os.environ.items() if key not in ("MPLBACKEND",)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["pyplot"]  # the figures modules were imported, so the check means something
    assert state["backend"] is None and not state["schema"] and state["xla_flags_unchanged"], state


def small_model():
    from p2pllm_abm.config import load_config
    from p2pllm_abm.model import P2PLLMModel

    model = P2PLLMModel(load_config("paper_table1", overrides=["clients.count=4",
                                                              "allocation.period=5", "seed=2"]))
    model.run(12)
    return model


def test_summary_reads_the_recorders_snapshot_not_the_model():
    """summary.json is a function of the recorder's snapshot: a snapshot that has travelled through
    pickle (so it holds no reference to the model) gives the model's summary."""
    import pickle

    from p2pllm_abm.metrics import summary

    model = small_model()
    snapshot = pickle.loads(pickle.dumps(model.recorder.snapshot()))
    machine = ("wall_time_s", "steps_per_s", "peak_memory_mb")
    from_snapshot, from_model = summary(snapshot, 2.0), summary(model, 2.0)
    assert {k: v for k, v in from_snapshot.items() if k not in machine} == \
        {k: v for k, v in from_model.items() if k not in machine}
    assert from_snapshot["steps"] == 12


def test_the_models_earlier_names_answer_from_its_parts():
    model = small_model()
    assert model.environment is model.engine.environment
    assert model.stage_stats is model.recorder.stage_stats and model.certificate is model.recorder.certificate
    assert model.churn_counts is model.membership.counts and model.moves == model.reallocation.moves
    assert model.fusable == model.engine.fusable and model.reported is model.recorder.reported
    assert model.record_due() == model.recorder.due() is False  # step 12 was recorded by run
