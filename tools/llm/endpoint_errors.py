"""What to tell a person whose planner or critic endpoint did not answer, by cause.

Three causes need three different fixes, so they get three messages:
- a timeout: the server is there but slow (a long reply on a busy server); more time or a
  faster server helps, starting another server does not;
- connection refused: nothing listens at that host and port; start the server there (the
  advice names the port and the model the user gave, not a default);
- anything else (unknown host, no route, reset): the address or the network is wrong.

Messages name run settings by their setting names (``critic_base_url``, ``vlm_timeout_s``), which
hold for every way of running the graph (Python, Studio, the CLI); the command line turns them
into its flags when it prints them (``graph.cli.parser.as_cli``).
"""

from __future__ import annotations

import errno
from urllib.parse import urlsplit

from tools.logs import redact

TIMEOUT, REFUSED, UNREACHABLE = "timeout", "refused", "unreachable"


def cause_of(exc: BaseException) -> str:
    """``timeout``, ``refused`` or ``unreachable`` for an OpenAI client connection error."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return TIMEOUT
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return REFUSED
        if "refused" in str(seen).lower():
            return REFUSED
        if "timed out" in str(seen).lower() or isinstance(seen, TimeoutError):
            return TIMEOUT
        seen = seen.__cause__ or seen.__context__
    return UNREACHABLE


def host_and_port(url: str) -> tuple[str, int]:
    """Host and port of an endpoint URL, with the scheme's default port.

    >>> host_and_port("http://gpu-box:8011/v1"), host_and_port("https://api.example.com/v1")
    (('gpu-box', 8011), ('api.example.com', 443))"""
    parts = urlsplit(url)
    return parts.hostname or "?", parts.port or (443 if parts.scheme == "https" else 80)


def describe(
    role: str,
    url: str,
    model: str,
    exc: BaseException,
    timeout_s: float,
    *,
    start: str = "vllm serve {model} --port {port}",
    slow: str = "Allow more time (vlm_timeout_s) or use a less busy server.",
) -> str:
    """One sentence of what happened and one of what to do, for this cause. ``start``: the
    command that starts such a server (``{model}``, ``{port}`` filled in); ``slow``: the advice
    for a timeout. Any ``user:password@`` of a URL is masked: the text is printed and stored."""
    cause = cause_of(exc)
    host, port = host_and_port(url)
    where = f"the {role} endpoint {redact(url)} (model {model!r})"
    if cause == TIMEOUT:
        within = f"within {timeout_s:g} s" if timeout_s else "in time"
        return f"{where} did not answer {within}: the server is reachable but slow or overloaded. {slow}"
    if cause == REFUSED:
        return (
            f"{where} refused the connection: nothing listens at {host}:{port}. Start the model "
            f"server there (e.g. `{start.format(model=model, port=port)}`) or set {role}_base_url to "
            f"a server that runs."
        )
    return (
        f"{where} cannot be reached ({type(exc).__name__}: {redact(str(exc))}). Check the host name "
        f"{host!r} and the network, or set {role}_base_url to a server that runs."
    )
