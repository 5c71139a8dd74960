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
    "kv": (set(), False),
    "sched": ({"wire", "kv", "config"}, True),
    "worker": ({"wire", "kv", "sched", "layers", "models", "kernels", "config", "loader"}, True),
    "layers": ({"kernels"}, True),
    "models": ({"layers", "kernels"}, True),
    "kernels": ({"layers", "loader"}, True),
    "loader": ({"config", "models", "kernels"}, True),
    "engine": ({"wire", "grammar", "detok", "sched", "kv", "worker", "config", "loader", "heap"}, True),
    "bench": ({"loader"}, False),
    # the policy names' registry is the scheduler's: config checks a name against it, lazily
    "config": ({"sched"}, False),
}


def imports(path: Path) -> set[str]:
    """The top-level names of what ``path`` imports: "torch", or kairos's packages ("kairos": the package's root)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "torch":
                out.add("torch")
            elif parts[0] == "kairos":
                out.add(parts[1] if len(parts) > 1 else "kairos")
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
