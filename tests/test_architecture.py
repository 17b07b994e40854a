"""The layout the docs promise: core never imports backends, engines, app or a policy; no backend
imports another, and neither the file formats nor the shared worker kernels import a backend;
no import cycles; the top-level models/ folder installs as ``hogwild_mts.models`` and never as
``models``."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hogwild_mts

PACKAGE_DIR = Path(hogwild_mts.__file__).parent
ROOT = PACKAGE_DIR.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """Every hogwild_mts module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("hogwild_mts")}


def _graph() -> dict:
    modules = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_core_imports_no_backend_engine_or_app():
    for module, imported in _graph().items():
        if module.startswith("hogwild_mts.core"):
            outside = {m for m in imported
                       if m.split(".")[1] in ("backends", "engines", "app", "data")}
            assert not outside, f"{module} imports {sorted(outside)}"


def _package(module: str) -> str:
    """``hogwild_mts.backends.shm.worker`` -> ``backends.shm``; ``hogwild_mts.job`` -> ``job``."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts and parts[0] == "backends" else (parts[0] if parts else "")


def test_core_imports_no_policy():
    for module, imported in _graph().items():
        if module.startswith("hogwild_mts.core"):
            policies = {m for m in imported if _package(m) == "policies"}
            assert not policies, f"{module} imports {sorted(policies)}"


def test_no_backend_imports_another():
    for module, imported in _graph().items():
        own = _package(module)
        if own.startswith("backends."):
            others = {m for m in imported if _package(m).startswith("backends.") and _package(m) != own}
            assert not others, f"{module} imports {sorted(others)}"


@pytest.mark.parametrize("prefix", ["hogwild_mts.checkpoint", "hogwild_mts.model_file",
                                    "hogwild_mts.kernels", "hogwild_mts.job", "hogwild_mts.policies"])
def test_file_formats_kernels_and_the_job_import_no_backend(prefix):
    for module, imported in _graph().items():
        if module == prefix or module.startswith(prefix + "."):
            backends = {m for m in imported if _package(m).startswith("backends")}
            assert not backends, f"{module} imports {sorted(backends)}"


def test_no_import_cycles():
    graph = _graph()
    state = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycle = path[path.index(imported):] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_install_does_not_claim_the_name_models(tmp_path):
    code = "import importlib.util, hogwild_mts.models.linear; print(importlib.util.find_spec('models'))"
    printed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
    assert printed.strip() == "None"


def test_a_built_wheel_holds_and_imports_hogwild_mts_models(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "models", source / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGE_DIR, source / "hogwild_mts", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist"), str(source)], check=True,
                   capture_output=True)
    wheel = next((tmp_path / "dist").glob("hogwild_mts-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hogwild_mts/models/linear.py" in names and "hogwild_mts/models/nets.py" in names
    assert not any(name.startswith("models/") for name in names)
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    code = ("import hogwild_mts, hogwild_mts.models.linear as linear; "
            "print(hogwild_mts.__file__); print(linear.LinearModel('logreg').name)")
    printed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=str(installed))).stdout.split()
    assert printed == [str(installed / "hogwild_mts" / "__init__.py"), "logreg"]
