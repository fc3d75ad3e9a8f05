"""The import graph of ``src/in21k`` flows one way, in the direction the data flows.

    base (errors, redact, config, storage, tarformat, dataset, progress) <- tree <- pipeline
    base <- tree <- loaders <- training <- predict

Every ``import`` statement counts, the ones inside functions included (plain ``ast``, nothing is imported).
Tools sit on top: ``synth`` and ``demo`` may use the stages, the benchmarks may use anything, and nothing
imports the benchmarks or a command-line module (``in21k.cli`` finds the latter by name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "in21k"
BASE = {
    "in21k",
    "in21k.errors",
    "in21k.redact",
    "in21k.config",
    "in21k.storage",
    "in21k.tarformat",
    "in21k.dataset",
    "in21k.progress",
}

# What each layer may import besides itself (and the base, which everything may import).
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "tree": set(),
    "pipeline": {"tree"},
    "loaders": {"tree"},
    "training": {"tree", "loaders"},
    "predict": {"tree", "loaders", "training"},
    "synth": {"tree"},
    "demo": {"tree", "synth", "training"},  # the run directory's names (training.rundir), read after `in21k train`
    "benchmarks": {"tree", "synth", "pipeline", "loaders", "training", "predict"},
}


def layer(module: str) -> str:
    if module in BASE or module.startswith("in21k.storage."):  # storage is a package of the base layer
        return "base"
    parts = module.split(".")
    if module == "in21k.demo":
        return "demo"
    if module in ("in21k.cli", "in21k.__main__"):
        return "cli"
    return parts[1]


def is_cli(module: str) -> bool:
    return module == "in21k.cli" or module.endswith(".cli")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Every in21k module ``module`` imports (absolute, relative, module-level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    known = modules()
    return {m for m in found if m in known and m != module}


def test_the_graph_is_found():
    graph = {m: imports_of(m, p) for m, p in modules().items()}
    # A sanity check of the parser itself: known edges are seen, function-level imports included.
    assert "in21k.storage" in graph["in21k.dataset"]
    assert "in21k.loaders" in graph["in21k.training.train"]  # imported inside build_loader
    assert len(graph) > 40


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_flow_one_way(module):
    path = modules()[module]
    mine = layer(module)
    bad = []
    for target in sorted(imports_of(module, path)):
        theirs = layer(target)
        if is_cli(target) and module != "in21k.__main__":
            bad.append(f"{target} (a command-line module: nothing imports it)")
        elif theirs == "benchmarks" and mine != "benchmarks":
            bad.append(f"{target} (a benchmark: tools are not imported by the library)")
        elif mine == "cli" or is_cli(module) or theirs in ("base", mine):
            continue
        elif theirs not in ALLOWED.get(mine, set()):
            bad.append(f"{target} ({mine} may not import {theirs}: against the data flow)")
    assert not bad, f"{module} imports " + "; ".join(bad)
