"""The packaging a user and LangGraph Studio rely on."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.mmd"


@pytest.mark.parametrize("package", ["graph", "nodes", "tools", "training", "checkpoints", "evals"])
def test_top_level_packages_resolve_inside_the_repo(package):
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == REPO / package


def test_langgraph_json_exports_a_graph_without_checkpointer():
    spec = json.loads((REPO / "langgraph.json").read_text())
    module_name, attr = spec["graphs"]["interleave"].split(":")
    assert not module_name.startswith("."), "langgraph dev needs the module form"
    exported = getattr(importlib.import_module(module_name), attr)
    assert exported.checkpointer is None  # langgraph dev refuses a graph with its own
    assert set(exported.get_graph().nodes) >= {"plan", "generate", "critique", "accept", "compose"}


def test_graph_topology_matches_snapshot():
    from graph.builder import graph

    drawing = graph.get_graph().draw_mermaid()
    assert SNAPSHOT.exists(), (
        f"the topology snapshot {SNAPSHOT} is missing; write it with "
        f"graph.get_graph().draw_mermaid(), review it and commit it"
    )
    assert drawing == SNAPSHOT.read_text()
    for edge in (
        "generate -.-> critique;",
        "critique -.-> generate;",
        "generate -.-> accept;",
        "accept -.-> generate;",
        "accept -.-> compose;",
        "accept -.-> accept;",
        "review -.-> accept;",
    ):
        assert edge in drawing


def test_importing_the_graph_loads_no_torch_or_diffusers():
    code = (
        "import sys, graph.builder; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
