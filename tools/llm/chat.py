"""Planner and critic chat models, and asking them until a reply parses.

Three ways to get a model, per role (planner and critic are independent):
- ``openai`` backend (default): an OpenAI-compatible server (vLLM, or any OpenAI-style API)
  through LangChain's ``ChatOpenAI``; connection errors, 429s and 5xx answers are retried by the
  client with its own exponential backoff (``vlm_retries``), each request has ``vlm_timeout_s``;
- ``transformers`` backend: the model runs in this process (``tools.llm.local``);
- any LangChain chat model passed in by an embedding application (``ChatModels``).

``ask_until_parsed`` sends one message list and parses the reply; an unusable reply is retried
with a growing pause, re-sampled (a retry never asks at temperature 0, which would return the
same reply again). Reading a run's settings (``Context``) into these calls is
``nodes.adapters``' job: this module knows no run. Endpoint failures become ``EndpointError`` naming the role, the
endpoint and the fix; they stop the run at its last checkpoint, so it can be resumed.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

if TYPE_CHECKING:  # imported lazily: openai + langchain_openai cost ~0.3 s, paid on first use only
    from langchain_openai import ChatOpenAI

T = TypeVar("T")
ROLES = ("planner", "critic")
RETRY_MIN_TEMPERATURE = 0.7
MAX_BACKOFF_S = 30.0


class EndpointError(RuntimeError):
    """The planner or critic model could not answer. Its message names the endpoint without any
    ``user:password@`` (LangGraph stores a node's error in the checkpoint, the registry keeps it)."""

    def __init__(self, message: str) -> None:
        from tools.logs import redact

        super().__init__(redact(message))


@dataclass(frozen=True)
class ChatModels:
    """Chat models an application passes in when it embeds the graph; a role left None uses the
    run's settings (``<role>_backend``, ``<role>_model``, ...)."""

    planner: BaseChatModel | None = None
    critic: BaseChatModel | None = None

    def __post_init__(self) -> None:
        for role in ROLES:
            model = getattr(self, role)
            if model is not None and not isinstance(model, BaseChatModel):
                raise TypeError(
                    f"ChatModels.{role} must be a LangChain chat model (BaseChatModel), got {type(model).__name__}"
                )


@dataclass
class Answer:
    """What ``ask`` got: the parsed value (None when no try parsed) and every failed try."""

    value: Any
    reply: str
    failures: list[dict[str, Any]]


@functools.lru_cache(maxsize=16)
def openai_model(
    base_url: str, api_key: str, model: str, max_tokens: int, temperature: float, timeout_s: float, retries: int
) -> ChatOpenAI:
    """One client per endpoint and setting set, reused across nodes and runs (keeps connections).

    The reply budget travels twice: LangChain sends ``max_completion_tokens`` (the OpenAI API's
    current name; vLLM honours it too) and ``extra_body`` adds ``max_tokens``, the only name
    llama.cpp's server (llama-cpp-python 0.3.36) and other older OpenAI-style servers read:
    with ``max_completion_tokens`` alone a 5-token budget returned 607 tokens there (2026-12-02).
    """
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=base_url,
        api_key=api_key,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        timeout=timeout_s,
        max_retries=retries,
        extra_body={"max_tokens": max_tokens},
    )


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


_limits: dict[str, threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _limit_for(model: BaseChatModel, size: int) -> Any:
    """One semaphore per endpoint (or in-process model) for the whole process; none for a model
    that queues its own calls (``queues_own_calls``: the in-process batcher of
    ``tools.llm.batcher``, whose batch size and engine slots bound what runs at once). Capping
    those as well held 32 concurrent trajectories on one H200 to 8 planner/critic calls in
    flight, planner and critic together, which matches the 7.5 rows a round its engine decoded."""
    if getattr(model, "queues_own_calls", False):
        return contextlib.nullcontext()
    key = f"{getattr(model, 'openai_api_base', None) or type(model).__name__}:{size}"
    with _limits_lock:
        return _limits.setdefault(key, threading.BoundedSemaphore(size))


def is_openai(model: BaseChatModel) -> bool:
    """Whether ``model`` is LangChain's OpenAI client (the only one whose errors we translate)."""
    module = sys.modules.get("langchain_openai")
    return module is not None and isinstance(model, module.ChatOpenAI)


def can_resample(model: BaseChatModel) -> bool:
    """Whether a call to ``model`` takes a per-request ``temperature``, so a retry can re-sample
    instead of repeating a greedy reply: the OpenAI client, and our in-process models (they say so
    with ``accepts_call_temperature``). A chat model passed in by an application is called as is."""
    return is_openai(model) or bool(getattr(model, "accepts_call_temperature", False))


def _reply_text(content: Any) -> str:
    if isinstance(content, list):  # some servers and chat models return content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def plain_text_messages(messages: list[BaseMessage]) -> list[BaseMessage]:
    """Messages whose content is only text parts, with that content joined into one string.

    Why: chat templates of several OpenAI-style servers take string content only (llama.cpp's
    server answers HTTP 500 "can only concatenate str (not "list") to str" for a text-only list);
    every server accepts a string. Messages that carry an image keep their parts.
    """
    out = []
    for message in messages:
        content = message.content
        if isinstance(content, list) and all(
            isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text") for p in content
        ):
            text = "".join(p if isinstance(p, str) else p.get("text", "") for p in content)
            message = message.model_copy(update={"content": text})
        out.append(message)
    return out


def _structured_hint(call: dict[str, Any]) -> str:
    if "response_format" in call:
        kind = call["response_format"].get("type")
        return (
            f" The server refused response_format type {kind!r}: set vlm_structured_output off, "
            f"or the form it takes (json: vLLM/OpenAI; json_object: llama.cpp; auto: try each)."
        )
    if "extra_body" in call and set(call["extra_body"]) - {"max_tokens"}:
        fields = ", ".join(sorted(set(call["extra_body"]) - {"max_tokens"}))
        return (
            f" The server refused the structured-output field(s) {fields} (vLLM only): set "
            f"vlm_structured_output off, or json, json_object or auto."
        )
    return ""


def _image_hint(messages: list[BaseMessage], error: str, role: str) -> str:
    """Why a server refused a request with images, when its answer shows that it takes none:
    llama.cpp's server with a text-only model (no ``--clip_model_path``) fails in its chat template
    with "can only concatenate str (not "list") to str"; vLLM says "... is not a multimodal model"."""
    carries_images = any(
        isinstance(m.content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m.content)
        for m in messages
    )
    if not carries_images or not ('(not "list")' in error or "not a multimodal model" in error):
        return ""
    return (
        f" The request carries images and the server takes none: it serves a text-only model, or a "
        f"vision model without its image encoder. Point {role}_base_url at a vision-language model "
        f"(vLLM with Qwen3-VL; llama.cpp: --model with --clip_model_path and a vision --chat_format)."
    )


def _with_model_extra_body(model: BaseChatModel, call: dict[str, Any]) -> dict[str, Any]:
    """A per-call ``extra_body`` replaces the client's; keep the client's fields (the budget)."""
    own = getattr(model, "extra_body", None)
    if "extra_body" in call and own:
        call = {**call, "extra_body": {**own, **call["extra_body"]}}
    return call


def complete(model: BaseChatModel, messages: list[BaseMessage], role: str, **call: Any) -> tuple[str, str | None]:
    """Send ``messages`` once and return (reply text, finish reason). ``call`` holds extra request
    options (temperature of a retry, structured-output parameters) for models that take them."""
    if not is_openai(model):
        try:
            reply = model.invoke(messages, **call)
        except Exception as exc:  # a model passed in by the user may raise anything
            raise EndpointError(
                f"the {role} model ({type(model).__name__}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        return _reply_text(reply.content), reply.response_metadata.get("finish_reason")

    import openai

    where = f"{role} endpoint {model.openai_api_base} (model {model.model_name!r})"
    try:
        reply = model.invoke(plain_text_messages(messages), **_with_model_extra_body(model, call))
    except openai.LengthFinishReasonError as exc:
        # With a json_schema response_format the client parses the reply and raises when it was
        # cut at the budget; a cut reply is an unusable reply like any other, not a crash.
        choice = exc.completion.choices[0]
        return choice.message.content or "", "length"
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        from tools.llm.endpoint_errors import describe

        raise EndpointError(
            describe(role, model.openai_api_base, model.model_name, exc, float(model.request_timeout or 0))
        ) from exc
    except openai.NotFoundError as exc:
        raise EndpointError(
            f"{where} does not serve that model ({exc}). Set {role}_model to a model the server lists at /v1/models."
        ) from exc
    except openai.APIStatusError as exc:
        # Servers differ in how they refuse an option they do not know: vLLM answers 400,
        # llama.cpp's server 500. Name the option whatever the status.
        hint = _image_hint(messages, exc.message, role) or _structured_hint(call)
        raise EndpointError(f"{where} refused the request (HTTP {exc.status_code}): {exc.message}.{hint}") from exc
    text = _reply_text(reply.content)
    budget = model.max_tokens
    used = (reply.usage_metadata or {}).get("output_tokens") if budget else None
    if used is not None and used > budget:
        # A server that ignores both budget fields would otherwise hand back unbounded replies.
        raise EndpointError(
            f"{where} ignored the reply budget: {used} tokens for a budget of {budget} (sent as "
            f"max_tokens and max_completion_tokens). Configure the server's own limit (e.g. "
            f"llama.cpp --n_ctx, vLLM --max-model-len) or use another server."
        )
    return text, reply.response_metadata.get("finish_reason")


def ask_until_parsed(
    model: BaseChatModel,
    messages: list[BaseMessage],
    role: str,
    parse: Callable[[str], T],
    *,
    retries: int,
    backoff_s: float,
    temperature: float,
    max_concurrency: int = 8,
    call: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[dict[str, Any]], None] | None = None,
) -> Answer:
    """Ask until ``parse`` accepts a reply, at most ``1 + retries`` times: the one loop behind the
    planner, the critic, the judge and the benchmarks.

    ``parse`` raises ``ValueError`` (the typed ``ReplyParseError``s) for an unusable reply. Before
    retry *n* it sleeps ``backoff_s * 2**(n-1)`` (at most ``MAX_BACKOFF_S``); models that
    ``can_resample`` are re-asked at ``max(temperature, RETRY_MIN_TEMPERATURE)``, since a greedy
    retry returns the same reply. ``call`` holds request options for OpenAI endpoints
    (structured outputs). ``Answer.value`` is None when every try failed; ``failures`` keeps each
    raw reply. ``on_retry`` hears of each re-ask before its pause: ``{"role", "try" (the reply
    that failed, 1-based), "tries", "reason", "wait_s"}``, so a person waiting sees why.
    """
    resample = can_resample(model)
    options = dict(call or {}) if is_openai(model) else {}
    failures: list[dict[str, Any]] = []
    reply = ""
    for index in range(retries + 1):
        if index:
            sleep(retry_wait(backoff_s, index))
            if resample:
                options["temperature"] = max(temperature, RETRY_MIN_TEMPERATURE)
        with _limit_for(model, max_concurrency):
            reply, finish = complete(model, messages, role, **options)
        try:
            return Answer(parse(reply), reply, failures)
        except ValueError as exc:
            failures.append(
                {
                    "error": str(exc),
                    "reason": getattr(exc, "reason", "invalid"),
                    "finish_reason": finish,
                    "reply": reply,
                }
            )
            if on_retry is not None and index < retries:
                on_retry(
                    {
                        "role": role,
                        "try": index + 1,
                        "tries": retries + 1,
                        "reason": failures[-1]["reason"],
                        "wait_s": retry_wait(backoff_s, index + 1),
                    }
                )
    return Answer(None, reply, failures)


def retry_wait(backoff_s: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based): doubling from ``backoff_s``, capped.

    >>> retry_wait(1.0, 1), retry_wait(1.0, 3), retry_wait(10.0, 4)
    (1.0, 4.0, 30.0)
    """
    return min(backoff_s * 2 ** (retry - 1), MAX_BACKOFF_S)
