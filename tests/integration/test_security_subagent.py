"""The graph as a tool (``graph.subagent.interleave_tool``) checks the whole request before it
writes anything: a bad request or bad settings give a clear error, and the runs folder and its
database are unchanged (no new thread, no new file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from checkpoints.saver import open_checkpointer
from conftest import REQUEST
from graph.subagent import interleave_tool


def files_of(folder: str) -> dict[str, str]:
    """Every file under ``folder`` (but SQLite's shared-memory index) with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


BAD_REQUESTS = [
    ("", "the request is empty"),
    ("x" * 20_001, "20001 characters long; at most 20000"),
    ("Fold a crane\x00 now", r"control characters \(\\x00\); remove them"),
    ("What changed in <image>?", "1 <image> marker"),
    (["not", "text"], "the request is text, not list"),
]


def test_a_bad_request_to_the_tool_writes_nothing(make_context, runs_dir):
    context = make_context()
    with open_checkpointer(runs_dir) as saver:
        tool = interleave_tool(context, checkpointer=saver)
        assert json.loads(tool.invoke({"request": REQUEST}))["steps"]  # a good call, for contrast
        threads, files = list(saver.list(None)), files_of(runs_dir)
        for request, expected in BAD_REQUESTS:
            with pytest.raises(ValueError, match=expected):
                tool.func(request)
            assert list(saver.list(None)) == threads, request[:40]
            assert files_of(runs_dir) == files, request[:40]


def test_settings_the_generator_cannot_serve_are_refused_when_the_tool_is_made(make_context, runs_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="does not exist; check the path"):
        interleave_tool(make_context(generator_model=str(missing)))
    assert not Path(runs_dir).exists()
    with pytest.raises(TypeError, match="must be a graph.context.Context"):
        interleave_tool({"seed": 1})
