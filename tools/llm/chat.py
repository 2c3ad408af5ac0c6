"""Planner and critic chat models, and asking them until a reply parses.

Three ways to get a model, per role (planner and critic are independent):
- ``openai`` backend (default): an OpenAI-compatible server (vLLM, or any OpenAI-style API)
  through LangChain's ``ChatOpenAI``; connection errors, 429s and 5xx answers are retried by the
  client with its own exponential backoff (``vlm_retries``), each request has ``vlm_timeout_s``;
- ``transformers`` backend: the model runs in this process (``tools.llm.local``);
- any LangChain chat model passed in by an embedding application (``ChatModels``).

``ask`` sends one message list and parses the reply; an unusable reply is retried up to
``vlm_retries`` times with a growing pause, re-sampled (a retry never asks at temperature 0, which
would return the same reply again). Endpoint failures become ``EndpointError`` naming the role, the
endpoint and the fix; they stop the run at its last checkpoint, so it can be resumed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from graph.context import Context

if TYPE_CHECKING:  # imported lazily: openai + langchain_openai cost ~0.3 s, paid on first use only
    from langchain_openai import ChatOpenAI

T = TypeVar("T")
ROLES = ("planner", "critic")
RETRY_MIN_TEMPERATURE = 0.7
MAX_BACKOFF_S = 30.0


class EndpointError(RuntimeError):
    """The planner or critic model could not answer."""


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
                raise TypeError(f"ChatModels.{role} must be a LangChain chat model (BaseChatModel), "
                                f"got {type(model).__name__}")


@dataclass
class Answer:
    """What ``ask`` got: the parsed value (None when no try parsed) and every failed try."""

    value: Any
    reply: str
    failures: list[dict[str, Any]]


@functools.lru_cache(maxsize=16)
def openai_model(base_url: str, api_key: str, model: str, max_tokens: int, temperature: float,
                 timeout_s: float, retries: int) -> ChatOpenAI:
    """One client per endpoint and setting set, reused across nodes and runs (keeps connections)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, api_key=api_key, model=model, max_tokens=max_tokens,
                      temperature=temperature, timeout=timeout_s, max_retries=retries)


def model_for(role: str, ctx: Context, injected: ChatModels | None = None) -> BaseChatModel:
    """The chat model a role uses in this run."""
    chosen = getattr(injected, role, None) if injected is not None else None
    if chosen is not None:
        return chosen
    name = getattr(ctx, f"{role}_model")
    budget = max_tokens(ctx, role)
    if getattr(ctx, f"{role}_backend") == "transformers":
        from tools.llm.local import TransformersChatModel
        from tools.llm.batcher import shared_batcher

        # Concurrent runs of this process share the model through one batching queue.
        return shared_batcher(TransformersChatModel(
            model_path=name, device=ctx.vlm_device, max_new_tokens=budget,
            temperature=ctx.vlm_temperature, fast_decode=ctx.vlm_fast_decode),
            max_batch=ctx.vlm_max_batch)
    return openai_model(getattr(ctx, f"{role}_base_url"), getattr(ctx, f"{role}_api_key"), name,
                        budget, ctx.vlm_temperature, ctx.vlm_timeout_s, ctx.vlm_retries)


def max_tokens(ctx: Context, role: str) -> int:
    """The reply budget of a role: its own setting, or ``vlm_max_tokens`` when that is 0."""
    return getattr(ctx, f"{role}_max_tokens") or ctx.vlm_max_tokens


def structured_output(ctx: Context, kind: str) -> dict[str, Any] | None:
    """Request options that constrain a ``kind`` ("plan" or "verdict") reply's shape, when the run
    asks for them (``vlm_structured_output``); they reach OpenAI-compatible servers only."""
    if ctx.vlm_structured_output == "off":
        return None
    from tools.replies.schemas import structured_output_kwargs

    # The schemas module gives ChatOpenAI constructor arguments; per request the same parameters
    # go straight into the call.
    given = structured_output_kwargs(kind, ctx.vlm_structured_output)
    call = dict(given.get("model_kwargs", {}))
    if "extra_body" in given:
        call["extra_body"] = given["extra_body"]
    return call


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


_limits: dict[str, threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _limit_for(model: BaseChatModel, size: int) -> threading.BoundedSemaphore:
    """One semaphore per endpoint (or in-process model) for the whole process."""
    key = f"{getattr(model, 'openai_api_base', None) or type(model).__name__}:{size}"
    with _limits_lock:
        return _limits.setdefault(key, threading.BoundedSemaphore(size))


def _is_openai(model: BaseChatModel) -> bool:
    return type(model).__name__ == "ChatOpenAI" and hasattr(model, "openai_api_base")


def _reply_text(content: Any) -> str:
    if isinstance(content, list):  # some servers and chat models return content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def complete(model: BaseChatModel, messages: list[BaseMessage], role: str,
             **call: Any) -> tuple[str, str | None]:
    """Send ``messages`` once and return (reply text, finish reason). ``call`` holds extra request
    options (temperature of a retry, structured-output parameters) for models that take them."""
    if not _is_openai(model):
        try:
            reply = model.invoke(messages, **call)
        except Exception as exc:  # a model passed in by the user may raise anything
            raise EndpointError(f"the {role} model ({type(model).__name__}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        return _reply_text(reply.content), reply.response_metadata.get("finish_reason")

    import openai

    where = f"{role} endpoint {model.openai_api_base} (model {model.model_name!r})"
    try:
        reply = model.invoke(messages, **call)
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        from tools.llm.endpoint_errors import describe

        raise EndpointError(describe(role, model.openai_api_base, model.model_name, exc,
                                     float(model.request_timeout or 0))) from exc
    except openai.NotFoundError as exc:
        raise EndpointError(
            f"{where} does not serve that model ({exc}). Set {role}_model to a model the server "
            f"lists at /v1/models.") from exc
    except openai.BadRequestError as exc:
        hint = (" The server may not support structured outputs: set vlm_structured_output off."
                if any(k in call for k in ("response_format", "extra_body")) else "")
        raise EndpointError(f"{where} refused the request: {exc.message}.{hint}") from exc
    except openai.APIStatusError as exc:
        raise EndpointError(f"{where} answered HTTP {exc.status_code}: {exc.message}") from exc
    return _reply_text(reply.content), reply.response_metadata.get("finish_reason")


def ask(model: BaseChatModel, messages: list[BaseMessage], role: str,
        parse: Callable[[str], T], ctx: Context, *, structured: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep) -> Answer:
    """Ask until ``parse`` accepts a reply, at most ``1 + ctx.vlm_retries`` times.

    ``parse`` raises ``ValueError`` (the typed ``ReplyParseError``s) for an unusable reply. The
    returned ``Answer.value`` is None when every try failed; ``failures`` keeps each raw reply.
    """
    ours = _is_openai(model) or type(model).__name__ in ("TransformersChatModel", "BatchingChatModel")
    call = dict(structured or {}) if _is_openai(model) else {}
    failures: list[dict[str, Any]] = []
    reply = ""
    for index in range(ctx.vlm_retries + 1):
        if index:
            sleep(min(ctx.vlm_retry_backoff_s * 2 ** (index - 1), MAX_BACKOFF_S))
            if ours:  # re-sample: never retry greedily
                call["temperature"] = max(ctx.vlm_temperature, RETRY_MIN_TEMPERATURE)
        with _limit_for(model, ctx.vlm_max_concurrency):
            reply, finish = complete(model, messages, role, **call)
        try:
            return Answer(parse(reply), reply, failures)
        except ValueError as exc:
            failures.append({"error": str(exc), "reason": getattr(exc, "reason", "invalid"),
                             "finish_reason": finish, "reply": reply})
    return Answer(None, reply, failures)
