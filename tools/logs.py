"""Text and log records without credentials: the ``user:password@`` of a URL, one mechanism.

``redact`` masks it as ``***@`` (messages and logs: the reader sees something was there);
``without_credentials`` removes it (settings stored with a run: the URL still works where the
server asks for no password).

httpx and httpcore log every request's full URL at INFO (seen with ``-v``), so a password put in
a base URL (``http://user:pass@host/v1``) would reach the terminal and log files. Every entry
point that configures logging (the ``interleave`` CLI, the benchmark, training and perf
scripts, the LangGraph server's app) calls ``configure_logging`` or ``install``, which put one
``RedactCredentials`` filter on the root logger's handlers: every record that reaches them,
from any library, is redacted first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

# scheme://userinfo@ — userinfo runs to the last "@" before the host's end (a path, a query,
# whitespace or a quote), so a password holding a raw "@" is covered whole.
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#'\"<>]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    >>> redact('HTTP Request: POST http://alice:hunter2@127.0.0.1:8000/v1/chat "200 OK"')
    'HTTP Request: POST http://***@127.0.0.1:8000/v1/chat "200 OK"'
    >>> redact("mail bob@example.com about https://example.com/a@b")
    'mail bob@example.com about https://example.com/a@b'
    """
    return _URL_CREDENTIALS.sub(r"\1***@", text) if "@" in text else text


def without_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed.

    >>> without_credentials("https://me:hunter2@api.example.com/v1")
    'https://api.example.com/v1'
    >>> without_credentials("http://127.0.0.1:8000/v1")
    'http://127.0.0.1:8000/v1'
    """
    return _URL_CREDENTIALS.sub(r"\1", text) if "@" in text else text


def _redacted_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    # URL objects (httpx.URL, yarl.URL, ...) and exceptions print their URL: redact their text,
    # and keep the object itself when nothing in it needed hiding.
    if isinstance(value, BaseException) or "url" in type(value).__name__.lower():
        text = str(value)
        cleaned = redact(text)
        return value if cleaned == text else cleaned
    return value


class RedactCredentials(logging.Filter):
    """Redacts URL credentials in a record's message, arguments and traceback; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted_arg(record.msg)  # text, or an exception / URL logged as the message
        if isinstance(record.args, Mapping):
            record.args = {k: _redacted_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(a) for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(handler: logging.Handler | None = None) -> None:
    """Put the filter on ``handler``, or on every handler of the root logger (once each)."""
    for target in [handler] if handler is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactCredentials) for f in target.filters):
            target.addFilter(RedactCredentials())


def configure_logging(level: int, fmt: str | None = None) -> None:
    """``logging.basicConfig(level=..., format=...)`` with credentials redacted from every record.
    A later call (a script mounted in the ``interleave`` CLI, which configured logging first)
    still sets the level: the script's own ``-v`` takes effect."""
    logging.basicConfig(level=level, **({"format": fmt} if fmt else {}))
    logging.getLogger().setLevel(level)
    install()
