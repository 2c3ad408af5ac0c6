"""Using the graph inside larger agent systems.

Two ways, both documented in the README:
- as a node: ``parent.add_node("illustrate", build_graph())`` in a parent ``StateGraph`` whose
  state shares the keys ``request`` (in) and ``document`` / ``document_dir`` (out); the child
  inherits the parent's checkpointer and runtime context;
- as a tool: ``interleave_tool(context)`` gives a LangChain tool that a tool-calling agent can
  call with a request; it returns the finished document as JSON (step texts and image paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from graph.builder import build_graph
from graph.context import Context
from graph.runs.runner import new_run_id, validate_request
from nodes.generator import check_generator_settings
from tools.llm.chat import ChatModels

TOOL_DESCRIPTION = (
    "Create an illustrated, step-by-step answer (text with one image per step) for a request such "
    "as a how-to guide, a visual story or a process. Input: the request in plain words. Output: "
    "JSON with the steps, each with its text and the path of its image file."
)


def document_json(result: dict[str, Any], runs_dir: str) -> str:
    """The graph's output as the JSON a tool returns: steps with text and absolute image paths."""
    steps = [
        {
            "step": e["step_number"],
            "title": e["step_name"],
            "text": e["text"],
            "image": str((Path(runs_dir) / e["image"]["path"]).resolve()) if e["image"] else None,
        }
        for e in result["document"]
    ]
    return json.dumps(
        {
            "run_id": result["run_id"],
            "steps": steps,
            "document_html": str(Path(result["document_dir"]) / "document.html"),
        }
    )


def interleave_tool(
    context: Context,
    *,
    checkpointer: Any = None,
    models: ChatModels | None = None,
    name: str = "make_interleaved_document",
) -> BaseTool:
    """A tool that runs the whole planner -> generator -> critic loop for one request.

    With a checkpointer every call is a resumable run (thread id = run id) and is written with
    ``durability="sync"``. ``models`` passes your own LangChain chat models for planner/critic.

    Everything is checked before anything is written (no checkpoint, file or folder): settings
    the generator cannot serve when the tool is made, and each call's request (not empty, at
    most ``MAX_REQUEST_CHARS`` characters, no control characters, no ``<image>`` markers since
    the tool takes no images) before its run starts; both raise ValueError naming the fix.
    """
    if not isinstance(context, Context):
        raise TypeError(f"context must be a graph.context.Context, not {type(context).__name__}")
    check_generator_settings(context)
    app = build_graph(checkpointer, models=models)
    options: dict[str, Any] = {"context": context}
    if checkpointer is not None:
        options["durability"] = "sync"

    def new_call(request: str) -> tuple[dict[str, Any], dict[str, Any]]:
        request = validate_request(request, [])  # before the run's first checkpoint
        run_id = new_run_id()
        return {"request": request, "run_id": run_id}, {"configurable": {"thread_id": run_id}}

    def run(request: str) -> str:
        return document_json(app.invoke(*new_call(request), **options), context.runs_dir)

    async def arun(request: str) -> str:
        return document_json(await app.ainvoke(*new_call(request), **options), context.runs_dir)

    return StructuredTool.from_function(func=run, coroutine=arun, name=name, description=TOOL_DESCRIPTION)
