"""A scripted, OpenAI-compatible chat-completions server for offline demos and tests.

The product's planner and critic VLMs are reached over the OpenAI chat API
(normally a ``vllm serve`` endpoint).  To exercise that boundary without a GPU or
network, this module runs a *real* HTTP server on localhost that speaks the same
protocol, but whose assistant replies come from a plain Python function (the
"responder").  Because it is a real socket server, the production clients
(``openai.OpenAI``, ``langchain_openai.ChatOpenAI``) run unmodified against it, so
tests cover request serialisation, streaming, truncation, error mapping and
connection failures exactly as they occur against vLLM.

Standard library only: ``http.server.ThreadingHTTPServer`` in a daemon thread.

Example::

    with ScriptedChatServer(lambda body: "hello") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        client.chat.completions.create(model="m", messages=[...])
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

__all__ = ["Responder", "ScriptedChatServer", "message_text", "count_images"]

logger = logging.getLogger(__name__)

Responder = Callable[[dict], str]
"""Gets the parsed request body (model, messages, ...); returns the assistant text."""


# --------------------------------------------------------------------------- helpers


def message_text(message: dict) -> str:
    """Return the text of one chat message.

    String content is returned as is; for a list of content parts the ``text`` of
    every ``{"type": "text"}`` part is joined with newlines.  Missing/None content
    gives ``""``.
    """
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, str):
            texts.append(part)
    return "\n".join(texts)


def request_text(body: dict) -> str:
    """The text of every message of a chat-completion request, one message a line."""
    return "\n".join(message_text(m) for m in body["messages"])


def count_images(body: dict) -> int:
    """Count ``image_url`` content parts across all messages of a request body."""
    n = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            n += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return n


def _word_count(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict) -> int:
    return sum(_word_count(message_text(m)) for m in body.get("messages") or [] if isinstance(m, dict))


def _truncate(text: str, limit: Optional[int]) -> tuple[str, str]:
    """Truncate ``text`` to ``limit`` whitespace words; return (text, finish_reason)."""
    if limit is None:
        return text, "stop"
    words = text.split()
    if len(words) <= limit:
        return text, "stop"
    return " ".join(words[: max(limit, 0)]), "length"


def _stream_pieces(text: str) -> list[str]:
    """Split text into word-ish pieces (whitespace kept) so that ''.join == text."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        current += ch
        if ch.isspace():
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, err_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type


# --------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    server_version = "ScriptedChat/1.0"
    protocol_version = "HTTP/1.1"
    # Set per server subclass (see ScriptedChatServer.start).
    owner: "ScriptedChatServer"

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._untrack(self.connection)

    # Route the default per-request stderr logging to logging.debug.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s - %s", self.address_string(), format % args)

    # -- plumbing
    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, err_type: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": err_type, "param": None, "code": None}})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- verbs
    def do_GET(self) -> None:  # noqa: N802
        if self._path() == "/v1/models":
            names = self.owner._model_names() or ["scripted"]
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": n, "object": "model", "created": 0, "owned_by": "scripted"} for n in names],
                },
            )
        else:
            self._send_error(404, f"Unknown path: GET {self.path}", "invalid_request_error")

    def do_POST(self) -> None:  # noqa: N802
        raw = self._read_body()  # always drain the body so keep-alive stays in sync
        if self._path() != "/v1/chat/completions":
            self._send_error(404, f"Unknown path: POST {self.path}", "invalid_request_error")
            return
        try:
            body = json.loads(raw.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            self._send_error(400, f"Malformed JSON body: {exc}", "invalid_request_error")
            return
        self.owner._record(body)
        try:
            self._chat_completion(body)
        except _HTTPError as exc:
            self._send_error(exc.status, exc.message, exc.err_type)

    # -- chat completions
    def _responses(self, body: dict) -> list[tuple[str, str]]:
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        try:
            n = int(body.get("n") or 1)
        except (TypeError, ValueError):
            raise _HTTPError(400, "n must be an integer", "invalid_request_error") from None
        out = []
        for _ in range(max(n, 1)):
            try:
                text = self.owner.responder(body)
            except Exception as exc:  # the responder is user code: report, don't crash
                logger.exception("scripted responder raised")
                raise _HTTPError(500, f"Responder raised {type(exc).__name__}: {exc}", "server_error") from exc
            if not isinstance(text, str):
                text = "" if text is None else str(text)
            out.append(_truncate(text, limit))
        return out

    def _chat_completion(self, body: dict) -> None:
        model = body.get("model") or "scripted"
        choices = self._responses(body)
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = sum(_word_count(t) for t, _ in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(cid, created, model, choices, usage if include_usage else None)
            return
        self._send_json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": reason,
                    }
                    for i, (text, reason) in enumerate(choices)
                ],
                "usage": usage,
            },
        )

    def _stream(
        self,
        cid: str,
        created: int,
        model: str,
        choices: list[tuple[str, str]],
        usage: Optional[dict],
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # body ends when the socket closes
        self.end_headers()
        self.close_connection = True

        def chunk(choice_list: list, extra: Optional[dict] = None) -> None:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choice_list,
            }
            if extra:
                obj.update(extra)
            self.wfile.write(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        def delta(i: int, d: dict, finish: Optional[str] = None) -> dict:
            return {"index": i, "delta": d, "logprobs": None, "finish_reason": finish}

        for i, (text, reason) in enumerate(choices):
            chunk([delta(i, {"role": "assistant", "content": ""})])
            for piece in _stream_pieces(text):
                chunk([delta(i, {"content": piece})])
            chunk([delta(i, {}, reason)])
        if usage is not None:
            chunk([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Default prints a traceback to stderr (e.g. a client hanging up mid-stream).
        logger.debug("error while handling request from %s", client_address, exc_info=True)


class ScriptedChatServer:
    """Real HTTP server on ``host`` speaking OpenAI chat completions; replies from ``responder``.

    ``port=0`` picks a free port; :attr:`base_url` reports the bound one.  Every
    chat-completion request body is appended to :attr:`requests` (in order).
    """

    def __init__(self, responder: Responder, host: str = "127.0.0.1", port: int = 0) -> None:
        self.responder = responder
        self.host = host
        self.port = port
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: set[socket.socket] = set()

    # -- public API
    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1`` with the real bound port (still valid after stop())."""
        if self.port == 0:
            raise RuntimeError("ScriptedChatServer has not been started (no port bound yet)")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "ScriptedChatServer":
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"owner": self})
        httpd = _QuietHTTPServer((self.host, self.port), handler)  # binds + listens now
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-chat-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("scripted chat server listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = None
        self._thread = None
        httpd.shutdown()  # stop serve_forever
        httpd.server_close()  # close the listening socket -> later connects are refused
        # Also cut open keep-alive connections, otherwise a client's pooled
        # connection would still be served by its handler thread after stop().
        with self._lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "ScriptedChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler
    def _record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _model_names(self) -> list[str]:
        with self._lock:
            seen: list[str] = []
            for body in self.requests:
                m = body.get("model")
                if isinstance(m, str) and m not in seen:
                    seen.append(m)
            return seen
