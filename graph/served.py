"""Runs made through a LangGraph server (``langgraph dev``, Studio, the SDK): what the remote
graph's nodes run inside (``build_graph(remote=True)`` wraps each node in ``served``).

- Settings. A thread's first run takes the server's settings (its ``INTERLEAVE_*``) with what
  the caller set on top; they are stored with the run. Every later run of the thread (a resume
  after a plan review or a failure) takes the stored settings again, as ``interleave resume``
  does, with on top where the models are now (those of ``RESUME_OVERRIDES`` that the server's
  environment sets: the operator's word, as the CLI's flags) and what the caller sets now
  (remote settings only). A resume without context therefore goes on as the run started; what
  a later run changed is stored in turn, for the next one.
- Registry. The run gets its row in the runs folder's registry, the one the CLI uses, so
  ``interleave list`` and ``interleave show`` see it (``origin`` "server": its checkpoints are
  the server's, so it is continued there, not with ``interleave resume``).
- Cancel. A run cancelled through the server (Studio's cancel, ``client.runs.cancel``) has its
  row marked ``interrupted`` (``server_node``). The server cancels the task awaiting the node,
  but a node that does blocking work runs on an executor thread that the cancel cannot reach,
  so without this the row would read ``running`` for as long as the server lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
from contextlib import closing
from typing import Any

from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.config import run_in_executor
from langgraph.errors import GraphInterrupt
from langgraph.runtime import get_runtime

from graph.context import RESUME_OVERRIDES, Context, RemoteContext, environment_settings
from graph.state import State, append_accepted, merge_attempts
from tools.logs import redact

SERVER_ORIGIN = "server"
CANCELLED = "cancelled through the LangGraph server; continue it there"


def _caller_context(runtime: Any) -> RemoteContext:
    given = getattr(runtime, "context", None)
    if given is None:
        return RemoteContext()
    if isinstance(given, dict):
        return RemoteContext(**given)
    return given


def run_context(stored: dict[str, Any] | None, caller: RemoteContext) -> Context:
    """The settings a node of a served run uses (see the module's docstring)."""
    if stored is None:
        return caller
    # One dict, the caller's word last: a setting may be both a resume override and a remote
    # one (vlm_retries), and two ``**`` of the same name would be a TypeError.
    overrides = {
        **environment_settings(RESUME_OVERRIDES),
        **caller.caller_settings(),
        "runs_dir": caller.runs_dir,  # the server's runs folder, where the row was found
    }
    return Context.from_record(stored, **overrides)


def _after(state: State, result: dict[str, Any]) -> dict[str, Any]:
    """The state once ``result`` (a node's writes) is applied, as far as the counters need it."""
    values = {**state, **result}
    if "attempts" in result:
        values["attempts"] = merge_attempts(state.get("attempts"), result["attempts"])
    if "accepted" in result:
        values["accepted"] = append_accepted(state.get("accepted"), result["accepted"])
    return values


def served(node: Any, name: str) -> Any:
    """``node`` as the remote graph runs it: with the run's settings, keeping its registry row.
    ``cancelled``: set once the server cancelled the run while this node ran (``server_node``);
    the row then stays ``interrupted`` whatever the node's end writes."""

    @functools.wraps(node)
    def run(state: State, runtime: Any, cancelled: threading.Event | None = None) -> dict[str, Any]:
        from checkpoints.registry import RunRegistry, counters
        from checkpoints.saver import connect
        from nodes.planner import run_id_of

        caller = _caller_context(runtime)
        run_id = run_id_of(state)
        with closing(connect(caller.runs_dir)) as conn:
            registry = RunRegistry(conn)
            row = registry.get(run_id) if registry.exists(run_id) else None
            if row is not None and row.get("origin") != SERVER_ORIGIN:
                # The caller chose the run id (input ``run_id``): never the row, the stored
                # settings or the folder of a run made outside the server.
                raise ValueError(
                    f"run id {run_id!r} belongs to a run made with the interleave CLI, not through "
                    f"this server; leave run_id out (the thread id is used) or choose a new one"
                )
            ctx = run_context(row["settings"] if row else None, caller)
            if row is None:
                images = [p for p in state.get("images", []) if not str(p).startswith("data:")]
                # origin in the same insert: a row without it would be taken for a CLI run's
                registry.create(run_id, state.get("request") or "", images, ctx.to_record(), origin=SERVER_ORIGIN)
            else:  # a later run of the thread: remember what it changed, for the next one too
                changes: dict[str, Any] = {}
                if ctx.to_record() != row["settings"]:
                    changes["settings"] = json.dumps(ctx.to_record())
                if row["status"] != "running" or row.get("pid") != os.getpid():
                    changes.update(status="running", error=None, pid=os.getpid())
                if changes:
                    registry.update(run_id, **changes)
            try:
                result = node(state, runtime.override(context=ctx))
            except GraphInterrupt:  # paused for plan review: Studio's resume form continues it
                registry.update(run_id, status="awaiting_review")
                raise
            except Exception as exc:  # the server keeps the run at its last checkpoint
                registry.update(
                    run_id, status="failed", error=redact(f"{type(exc).__name__}: {exc}")
                )  # a URL's password, never stored
                raise
            done: dict[str, Any] = counters(_after(state, result))
            if name == "plan" and result.get("images"):
                done["images"] = json.dumps(result["images"])
            if name == "compose":
                done.update(status="finished", document_dir=result.get("document_dir"))
            elif cancelled is not None and cancelled.is_set():  # the row may not have existed then
                done.update(status="interrupted", error=CANCELLED)
            registry.update(run_id, **done)
        return result

    return run


def _mark_cancelled(state: State, runtime: Any) -> None:
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect
    from nodes.planner import run_id_of

    run_id = run_id_of(state)
    with closing(connect(_caller_context(runtime).runs_dir)) as conn:
        registry = RunRegistry(conn)
        if registry.exists(run_id) and registry.get(run_id).get("origin") == SERVER_ORIGIN:
            registry.update(run_id, status="interrupted", error=CANCELLED)


def server_node(node: Any, name: str) -> Any:
    """``served(node, name)`` as a node of the remote graph, runnable both ways. Invoked
    synchronously it simply runs. Under the server (async) it runs on an executor thread, as
    LangGraph runs any sync node, and a cancel of the run marks its row ``interrupted``: the
    thread goes on to the end of the node (nothing can stop it), and what it writes then leaves
    that status alone."""
    run = served(node, name)

    def invoke(state: State) -> dict[str, Any]:
        return run(state, get_runtime())

    async def ainvoke(state: State) -> dict[str, Any]:
        runtime = get_runtime()
        cancelled = threading.Event()
        try:
            # the context travels to the thread: the node's progress writer and interrupt()
            return await run_in_executor(None, run, state, runtime, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            # SQLite off the event loop (the server forbids blocking calls there); shielded, so
            # a second cancel cannot stop the row's update halfway
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.to_thread(_mark_cancelled, state, runtime))
            raise

    return RunnableLambda(invoke, afunc=ainvoke, name=name)
