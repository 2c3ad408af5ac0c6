"""Planner and critic chat models: OpenAI-compatible endpoints (vLLM, any OpenAI-style API)
through LangChain's ``ChatOpenAI``, with images sent inline as data URLs.

Endpoint failures become ``EndpointError`` whose message says which role's endpoint failed and
how to fix it; they propagate out of the node so the run stops at its last checkpoint and can be
resumed once the endpoint is back.
"""

from __future__ import annotations

import base64
import functools
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

if TYPE_CHECKING:  # imported lazily: openai + langchain_openai cost ~0.3 s, paid on first use only
    from langchain_openai import ChatOpenAI


class EndpointError(RuntimeError):
    """The planner or critic endpoint could not answer."""


@functools.lru_cache(maxsize=16)
def chat_model(base_url: str, api_key: str, model: str, max_tokens: int, temperature: float,
               timeout_s: float, retries: int) -> ChatOpenAI:
    """One client per endpoint and setting set, reused across nodes and runs (keeps connections)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, api_key=api_key, model=model, max_tokens=max_tokens,
                      temperature=temperature, timeout=timeout_s, max_retries=retries)


def png_part(data: bytes) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding PNG bytes as a data URL (stored images are
    sent as they are: decoding and re-encoding a 1024² PNG costs ~130 ms, this ~2 ms)."""
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def complete(model: ChatOpenAI, messages: list[BaseMessage], role: str) -> tuple[str, str | None]:
    """Send ``messages`` and return (reply text, finish reason).

    ``role`` ("planner" or "critic") names the endpoint in error messages.
    """
    import openai

    where = f"{role} endpoint {model.openai_api_base} (model {model.model_name!r})"
    setting = f"--{role}-base-url (or INTERLEAVE_{role.upper()}_BASE_URL)"
    try:
        reply = model.invoke(messages)
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise EndpointError(
            f"{where} is unreachable ({exc.__class__.__name__}). Start it (e.g. `vllm serve "
            f"{model.model_name}`) or point {setting} at a running server; the run is saved and "
            f"`interleave resume` continues it.") from exc
    except openai.NotFoundError as exc:
        raise EndpointError(
            f"{where} does not serve that model ({exc}). Set INTERLEAVE_{role.upper()}_MODEL or "
            f"--{role}-model to a model the server lists at /v1/models.") from exc
    except openai.APIStatusError as exc:
        raise EndpointError(f"{where} answered HTTP {exc.status_code}: {exc.message}") from exc
    content = reply.content
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content), reply.response_metadata.get("finish_reason")
