"""Context -> tools adapters: read a run's settings into the chat models and the ask loop.

Why here: ``tools`` must not know about runs (``tests/unit/test_import_direction.py``), and the
nodes are what holds a ``Context``. Each setting is read in one place, so the planner, the critic
and anything else asking a role's model get the same client, budget and retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from graph.context import Context
from tools.logs import without_credentials
from tools.llm.chat import Answer, ChatModels, EndpointError, ask_until_parsed, is_openai, openai_model

T = TypeVar("T")
logger = logging.getLogger(__name__)


def max_tokens(ctx: Context, role: str) -> int:
    """The reply budget of a role: its own setting, or ``vlm_max_tokens`` when that is 0."""
    return getattr(ctx, f"{role}_max_tokens") or ctx.vlm_max_tokens


def model_for(role: str, ctx: Context, injected: ChatModels | None = None) -> BaseChatModel:
    """The chat model a role uses in this run."""
    chosen = getattr(injected, role, None) if injected is not None else None
    if chosen is not None:
        return chosen
    name = getattr(ctx, f"{role}_model")
    budget = max_tokens(ctx, role)
    if getattr(ctx, f"{role}_backend") == "transformers":
        from tools.llm.batcher import shared_batcher
        from tools.llm.local import TransformersChatModel

        # Concurrent runs of this process share the model through one batching queue.
        return shared_batcher(
            TransformersChatModel(
                model_path=name,
                device=ctx.vlm_device,
                max_new_tokens=budget,
                temperature=ctx.vlm_temperature,
                fast_decode=ctx.vlm_fast_decode,
            ),
            max_batch=ctx.vlm_max_batch,
        )
    return openai_model(
        getattr(ctx, f"{role}_base_url"),
        getattr(ctx, f"{role}_api_key"),
        name,
        budget,
        ctx.vlm_temperature,
        ctx.vlm_timeout_s,
        ctx.vlm_retries,
    )


def structured_output(ctx: Context, kind: str, mode: str | None = None) -> dict[str, Any] | None:
    """Request options that constrain a ``kind`` ("plan" or "verdict") reply's shape, when the run
    asks for them (``vlm_structured_output``); they reach OpenAI-compatible servers only."""
    mode = mode or ctx.vlm_structured_output
    if mode == "off":
        return None
    from tools.replies.schemas import structured_output_kwargs

    # The schemas module gives ChatOpenAI constructor arguments; per request the same parameters
    # go straight into the call.
    given = structured_output_kwargs(kind, mode, max_steps=ctx.max_plan_steps if kind == "plan" else None)
    call = dict(given.get("model_kwargs", {}))
    if "extra_body" in given:
        call["extra_body"] = given["extra_body"]
    return call


#: ``auto``: the structured-output form each endpoint took in this process, learnt from its first
#: refusal. A run also keeps what it learnt in its state (``State.structured_output``), so a
#: resumed run, in whatever process, starts from the same form.
_auto_choice: dict[str, str] = {}

AUTO_ORDER = ("json", "json_object", "off")


def endpoint_of(model: BaseChatModel, role: str) -> str:
    """The key an ``auto`` choice is kept under: the endpoint's base URL (the role for a model
    that has none), without any ``user:password@``: the run's state stores it."""
    base = getattr(model, "openai_api_base", None)
    return without_credentials(base) if base else role


def structured_mode(ctx: Context, model: BaseChatModel, role: str, learnt: dict[str, str] | None = None) -> str:
    """The form a role's requests start with: the run's setting, or for ``auto`` the one this
    endpoint accepted: as the run stored it (``learnt``, endpoint -> form), else as this process
    learnt it, else ``json`` (then llama.cpp's ``json_object``, then ``off``, on refusals)."""
    if not is_openai(model):
        return "off"  # request options reach OpenAI endpoints only
    if ctx.vlm_structured_output != "auto":
        return ctx.vlm_structured_output
    key = endpoint_of(model, role)
    stored = (learnt or {}).get(key)
    if stored in AUTO_ORDER:
        return stored
    return _auto_choice.get(key, AUTO_ORDER[0])


def learnt_update(
    ctx: Context, model: BaseChatModel, role: str, mode: str, learnt: dict[str, str] | None
) -> dict[str, Any]:
    """The state update that keeps an ``auto`` choice with the run (``{}`` when the run already
    holds it, or the run does not use ``auto``)."""
    if ctx.vlm_structured_output != "auto" or not is_openai(model):
        return {}
    key = endpoint_of(model, role)
    return {} if (learnt or {}).get(key) == mode else {"structured_output": {key: mode}}


def ask(
    model: BaseChatModel,
    messages: list[BaseMessage],
    role: str,
    parse: Callable[[str], T],
    ctx: Context,
    *,
    kind: str,
    learnt: dict[str, str] | None = None,
    sleep: Callable[[float], Any] | None = None,
    on_retry: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Answer, str]:
    """Ask a role's model with the run's retry policy and structured-output setting; returns the
    answer and the structured-output form used (for ``auto``, what the endpoint accepted: a
    refusal moves to the next form in ``AUTO_ORDER``; the choice is kept per endpoint for the
    process, and ``learnt`` holds the run's own, which comes first). ``on_retry`` hears of each
    re-ask after an unusable reply (``ask_until_parsed``)."""
    extra = {} if sleep is None else {"sleep": sleep}
    key = endpoint_of(model, role)
    mode = structured_mode(ctx, model, role, learnt)
    while True:
        try:
            answer = ask_until_parsed(
                model,
                messages,
                role,
                parse,
                retries=ctx.vlm_retries,
                backoff_s=ctx.vlm_retry_backoff_s,
                temperature=ctx.vlm_temperature,
                max_concurrency=ctx.vlm_max_concurrency,
                call=structured_output(ctx, kind, mode),
                on_retry=on_retry,
                **extra,
            )
        except EndpointError as exc:
            refused = "refused the request" in str(exc)
            if ctx.vlm_structured_output != "auto" or mode == "off" or not refused:
                raise
            following = AUTO_ORDER[AUTO_ORDER.index(mode) + 1]
            logger.warning("%s: structured output %r refused; trying %r (%s)", key, mode, following, exc)
            # Learnt only once a form is answered: a request refused for another reason (images
            # sent to a text-only model) is refused in every form, and ``off``'s error says why.
            mode = following
            continue
        if ctx.vlm_structured_output == "auto":
            _auto_choice[key] = mode
        return answer, mode
