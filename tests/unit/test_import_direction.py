"""Imports point one way: state/context and tools at the bottom, nodes above them, the graph's
wiring and run lifecycle above the nodes, the command line, training and evaluation on top.

The test reads every module's imports (module-level and inside functions) from its syntax tree,
so an upward import fails here even when nothing imports the module during the test run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("graph", "nodes", "tools", "training", "checkpoints", "evals")

# (importing package or module prefix, forbidden imported prefixes, why)
RULES = [
    (
        "tools",
        ("graph", "nodes", "training", "evals", "checkpoints.saver", "checkpoints.registry"),
        "tools are the bottom layer (they may open SQLite through checkpoints.sqlite)",
    ),
    ("checkpoints", ("graph", "nodes", "training", "evals"), "persistence knows nothing of the graph above it"),
    (
        "nodes",
        ("graph.cli", "graph.runs", "graph.builder", "training", "evals"),
        "nodes are wired by the graph, never the other way round",
    ),
    (
        "graph.state",
        ("graph.context", "graph.builder", "graph.runs", "graph.cli", "nodes"),
        "the state is the lowest layer of the graph",
    ),
    (
        "graph.context",
        ("graph.state", "graph.builder", "graph.runs", "graph.cli", "nodes"),
        "the run settings are the lowest layer of the graph",
    ),
    ("graph.builder", ("graph.runs", "graph.cli", "training", "evals"), "the graph's wiring does not know who runs it"),
    (
        "graph.served",
        ("graph.runs", "graph.cli", "training", "evals"),
        "the served graph's bookkeeping is part of the wiring",
    ),
    (
        "graph.runs",
        ("graph.cli", "training", "evals"),
        "the run lifecycle is a library API; the command line sits above it",
    ),
    ("training", ("evals",), "training builds on the shared judge in tools, not on the benchmark harnesses"),
]

#: Imports a rule above would forbid but that are right by design, each with its reason.
PERMITTED = {
    ("tools.doubles", "nodes.prompts"): "a scripted model reads the prompts the product writes, "
    "through the product's own reader, so editing a prompt "
    "cannot break the demo",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


#: Upward imports not yet removed, each with the reason it is still here. Adding to this list needs
#: the same justification; the test fails when an entry is no longer needed, so it only shrinks.
KNOWN: dict[str, str] = {}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = _module_name(path)
            for importer, forbidden, why in RULES:
                if not _within(module, importer):
                    continue
                for name in sorted(_imports(path)):
                    if any(_within(module, a) and _within(name, b) for a, b in PERMITTED):
                        continue
                    if any(_within(name, bad) for bad in forbidden) and not _within(name, importer):
                        found.append(f"{module} imports {name}")
    return sorted(set(found))


def _unexplained(violations: list[str]) -> list[str]:
    return [v for v in violations if not any(v == k or v.startswith(k + ".") for k in KNOWN)]


def test_imports_point_one_way():
    violations = _violations()
    unexplained = _unexplained(violations)
    assert not unexplained, "upward imports:\n" + "\n".join(unexplained)
    stale = [k for k in KNOWN if not any(v == k or v.startswith(k + ".") for v in violations)]
    assert not stale, f"these known upward imports are gone; remove them from KNOWN: {stale}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import graph.state\n", {"graph.state"}),
        ("def f():\n    from evals.judge import Judge\n", {"evals.judge", "evals.judge.Judge"}),
        ("from . import x\n", set()),
    ],
)
def test_the_scan_sees_function_level_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path) == expected
