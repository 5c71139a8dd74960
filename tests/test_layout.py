"""The layout's rules, read from the imports of every module (at its top or inside a function):
packages depend downward only, and the API process's packages never reach torch or the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kairos"
ENGINE_SIDE = {"engine", "sched", "kv", "worker", "layers", "models", "kernels"}
# package -> the kairos packages it may import (besides itself); "torch": whether it may import torch
ALLOWED = {
    "wire": ({"wire"}, False),  # what both processes share
    "grammar": ({"wire"}, False),
    "detok": ({"wire"}, False),
    "server": ({"wire", "grammar", "detok", "config", "loader", "heap", "kairos"}, False),
    "kv": ({"wire"}, False),  # (block hashes: the names the router knows cached blocks by)
    "sched": ({"wire", "kv", "config"}, True),
    "worker": ({"wire", "kv", "sched", "layers", "models", "kernels", "config", "loader"}, True),
    "layers": ({"kernels"}, True),
    "models": ({"layers", "kernels"}, True),
    "kernels": ({"layers", "loader"}, True),
    "loader": ({"config", "models", "kernels"}, True),
    "engine": ({"wire", "grammar", "detok", "sched", "kv", "worker", "config", "loader", "heap"}, True),
    "bench": ({"loader"}, False),
    # the router: an API-side process (the server's request models, errors and tokenizing)
    "cluster": ({"wire", "server", "grammar", "detok", "config", "loader", "heap", "kairos"}, False),
    # the policy names' registry is the scheduler's: config checks a name against it, lazily
    "config": ({"sched"}, False),
}


def imports(path: Path) -> set[str]:
    """What ``path`` imports, anywhere in it: "torch", or kairos's packages ("kairos": its root;
    ``from kairos import sched`` is "sched")."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import (the rules read absolute ones)"
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "kairos" else [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "torch":
                out.add("torch")
            elif parts[0] == "kairos":
                sub = parts[1] if len(parts) > 1 else "kairos"
                out.add(sub if (SRC / sub).is_dir() or (SRC / f"{sub}.py").is_file() else "kairos")
    return out


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package):
    allowed, torch_ok = ALLOWED[package]
    files = sorted((SRC / package).rglob("*.py")) if (SRC / package).is_dir() else [SRC / f"{package}.py"]
    assert files
    wrong = {}
    for f in files:
        bad = {m for m in imports(f) - {package} - allowed if m != "torch" or not torch_ok}
        if bad:
            wrong[str(f.relative_to(SRC))] = sorted(bad)
    assert wrong == {}


def test_every_package_has_rules():
    packages = {package_of(p) for p in SRC.rglob("*.py")} - {"__init__", "cli"}
    assert packages <= set(ALLOWED) | {"heap"}, packages - set(ALLOWED)
    assert imports(SRC / "heap.py") <= set()  # (both processes import it)


def test_the_api_process_reaches_nothing_of_the_engine_at_import():
    """From the API process's packages, the modules imported at their top, followed through
    kairos, never reach the engine's side or torch (lazy imports in functions may: the config's
    registry check, the loader's model code, run in the engine process)."""
    def top_level(path: Path) -> set[str]:
        out = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                out |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "kairos" else {node.module}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        return out

    def file_of(module: str) -> Path | None:
        rel = SRC.parent.joinpath(*module.split("."))
        return rel.with_suffix(".py") if rel.with_suffix(".py").is_file() else \
            rel / "__init__.py" if (rel / "__init__.py").is_file() else None

    seen, todo = set(), [f"kairos.{p}" for p in ("server.launch", "server.app", "wire.messages", "detok.output_processor",
                                                 "grammar.structured", "bench.main", "cli",
                                                 "cluster.launch", "cluster.app", "cluster.router", "cluster.local")]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = file_of(module)
        if path is None:
            continue
        for name in top_level(path):
            assert name.split(".")[0] != "torch", f"{module} imports {name}"
            if name.startswith("kairos."):
                assert name.split(".")[1] not in ENGINE_SIDE, f"{module} imports {name}"
                todo.append(name)
    assert "kairos.server.validate" in seen and "kairos.wire.checks" in seen
