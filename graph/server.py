"""The HTTP app ``langgraph.json`` mounts into the LangGraph server (``"http": {"app": ...}``).

It adds no routes, only a guard in front of the server's own endpoints: the server stores a
run's ``context`` and ``config`` in its run, thread and assistant records as soon as the request
arrives, before the graph (``RemoteContext``) refuses settings a remote caller may not set. So
any request whose JSON body holds, in ``context`` or ``config.configurable``, a name outside
``REMOTE_SETTINGS`` (an API key, a base URL, a model, the runs folder) is refused here with 422,
naming the fields and never echoing a value, and the server records nothing of it. With
``"middleware_order": "auth_first"`` the guard runs after the server's authentication and inside
its CORS handling (so a browser sees the error). The app also puts the log filter that redacts
URL credentials (``tools.logs``) on the server's log handlers.
"""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graph.context import REMOTE_SETTINGS, remote_refusal
from tools import logs


def _server_body_limit() -> int:
    """The LangGraph server's request body limit (``HTTP_MAX_REQUEST_BODY_BYTES``), which the
    guard, reading a body before the server does, must hold to as well."""
    config = sys.modules.get("langgraph_api.config")  # loaded by the server before its app
    return int(getattr(config, "HTTP_MAX_REQUEST_BODY_BYTES", 300 * 1024 * 1024))


MAX_BODY_BYTES = _server_body_limit()

# Keys of ``config.configurable`` that address LangGraph's own checkpoints, not our settings.
LANGGRAPH_CONFIGURABLE = ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")


def refused_settings(payload: Any) -> list[str]:
    """Names in ``payload`` (a request body, or a batch: a list of them) that a remote caller may
    not set, as ``context.NAME`` / ``config.configurable.NAME``.

    >>> refused_settings({"context": {"seed": 1, "planner_api_key": "sk-x"}})
    ['context.planner_api_key']
    >>> refused_settings([{"config": {"configurable": {"thread_id": "t", "runs_dir": "/"}}}])
    ['config.configurable.runs_dir']
    """
    bodies = payload if isinstance(payload, list) else [payload]
    refused: set[str] = set()
    for body in bodies:
        if not isinstance(body, dict):
            continue
        context = body.get("context")
        if isinstance(context, dict):
            refused |= {f"context.{k}" for k in context if k not in REMOTE_SETTINGS}
        config = body.get("config")
        configurable = config.get("configurable") if isinstance(config, dict) else None
        if isinstance(configurable, dict):
            allowed = (*REMOTE_SETTINGS, *LANGGRAPH_CONFIGURABLE)
            refused |= {f"config.configurable.{k}" for k in configurable if k not in allowed}
    return sorted(refused)


class RemoteSettingsGuard:
    """ASGI middleware: reads a POST/PUT/PATCH body whole, refuses it (422) when it sets what a
    remote caller may not, else hands the same bytes on to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away
                break
            size += len(message.get("body", b""))
            if size > MAX_BODY_BYTES:  # the server's own limit: refuse before buffering it all
                detail = f"Request body too large (limit: {MAX_BODY_BYTES} bytes)"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        # One join, not ``+=`` per chunk (quadratic on a body of many chunks, on the event loop).
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        refused = []
        if body.lstrip()[:1] in (b"{", b"["):
            try:
                refused = refused_settings(json.loads(body))
            except ValueError:  # not JSON after all: the server's own validation answers
                refused = []
        if refused:
            names = ", ".join(refused)
            detail = remote_refusal(sorted({n.rsplit(".", 1)[1] for n in refused}), where=f"the request ({names})")
            await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


@asynccontextmanager
async def _lifespan(_app: Starlette):
    logs.install()  # the server has configured its log handlers by now
    yield


logs.install()
app = Starlette(middleware=[Middleware(RemoteSettingsGuard)], lifespan=_lifespan)
