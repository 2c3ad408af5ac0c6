"""The HTTP edge guard of the LangGraph server (``graph.server.RemoteSettingsGuard``), driven as
an ASGI app in-process: it buffers a body to read its settings, so that buffer must be bounded."""

from __future__ import annotations

import asyncio
import json

import graph.server as server
from graph.server import RemoteSettingsGuard


def call(guard, chunks):
    """Send ``chunks`` as one POST body; (status, chunks the guard read, whether the app ran)."""
    sent, replies, ran = list(chunks), [], []

    async def receive():
        if not sent:
            return {"type": "http.disconnect"}
        body = sent.pop(0)
        read.append(body)
        return {"type": "http.request", "body": body, "more_body": bool(sent)}

    async def send(message):
        replies.append(message)

    read: list[bytes] = []
    scope = {"type": "http", "method": "POST", "path": "/runs", "headers": [], "query_string": b""}
    asyncio.run(guard(scope, receive, send))
    status = next((m["status"] for m in replies if m["type"] == "http.response.start"), None)
    return status, len(read), ran


def test_a_body_over_the_servers_limit_is_refused_without_being_buffered_whole(monkeypatch):
    monkeypatch.setattr(server, "MAX_BODY_BYTES", 1000, raising=False)
    ran = []

    async def app(scope, receive, send):
        ran.append(True)

    chunks = [b'{"input": "' + b"x" * 500] + [b"x" * 500] * 50 + [b'"}']
    status, read, _ = call(RemoteSettingsGuard(app), chunks)
    assert status == 413 and not ran
    assert read <= 3  # it stopped reading at the limit


def test_a_body_under_the_limit_reaches_the_server_whole():
    got = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        got.append(json.loads(body))

    body = json.dumps({"context": {"seed": 1}, "input": {"request": "x" * 3000}}).encode()
    status, _, _ = call(RemoteSettingsGuard(app), [body[i : i + 100] for i in range(0, len(body), 100)])
    assert status is None and got == [json.loads(body)]
