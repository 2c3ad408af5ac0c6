"""One queue in front of an in-process VLM, so concurrent runs share its batched ``generate``.

Concurrent graph runs in one process (``interleave batch``, datagen, an embedding application's
async runs) each call the planner or critic on their own thread. Against an in-process model
those calls would wait for each other behind the model's lock, one reply at a time, although
one padded ``generate`` over 8 prompts costs about as long as one (decode is memory-bound:
measured on the H200 with an 8B-sized model, 9.5-13 tokens/s at batch 1 vs 77-96 at batch 8).
``BatchingChatModel`` collects the calls that arrive together (within ``gather_s``, up to
``max_batch``, same per-call options) and answers them with one ``inner.batch(...)``; each
caller gets its own reply. A failure of one input is that caller's alone.

This is the same pattern as ``tools.generator.worker`` for the image model. Servers such as vLLM
batch on their own, so the OpenAI backend needs no batcher, and neither does an in-process model
with continuous batching (``tools.llm.continuous``, the fast-decode default): there each call goes
straight to the model's engine from its own thread and joins the running batch at the next step
(a queue here would only make newcomers wait for a whole batch); ``max_batch`` is handed to
the engine.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

GATHER_S = 0.01


@dataclass
class _Call:
    messages: list[BaseMessage]
    options: dict[str, Any]
    future: Future = field(default_factory=Future)


class BatchingChatModel(BaseChatModel):
    """Wraps a chat model whose ``batch`` runs one batched call; serves ``invoke``s in batches."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseChatModel
    max_batch: int = 8
    gather_s: float = GATHER_S

    _queue: queue.Queue = PrivateAttr(default_factory=queue.Queue)
    _thread: threading.Thread | None = PrivateAttr(default=None)
    _start_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    #: a call's options (``temperature`` too) reach the wrapped model
    accepts_call_temperature: ClassVar[bool] = True
    #: callers wait in this queue (or the engine's), not behind a per-endpoint cap
    #: (``tools.llm.chat._limit_for``): ``max_batch`` bounds what runs at once
    queues_own_calls: ClassVar[bool] = True
    batch_sizes: list[int] = []  # batches served, for tests and benchmarks

    @property
    def _llm_type(self) -> str:
        return f"batching-{self.inner._llm_type}"

    @property
    def model_name(self) -> str:
        return getattr(self.inner, "model_name", type(self.inner).__name__)

    def model_post_init(self, context: Any) -> None:
        if "max_batch" in type(self.inner).model_fields:  # the engine's rows, when it has one
            self.inner = self.inner.model_copy(update={"max_batch": self.max_batch})

    def _continuous(self) -> bool:
        check = getattr(self.inner, "batches_continuously", None)
        return bool(check is not None and check())

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        if self._continuous():
            return self.inner._generate(list(messages), stop=stop, **kwargs)
        options = dict(kwargs, **({"stop": stop} if stop else {}))
        call = _Call(list(messages), options)
        self._ensure_worker()
        self._queue.put(call)
        reply = call.future.result()
        message = reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self.batch_sizes = []
                self._thread = threading.Thread(target=self._serve, name="vlm-batcher", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            calls = [self._queue.get()]
            while len(calls) < self.max_batch:
                try:
                    calls.append(self._queue.get(timeout=self.gather_s))
                except queue.Empty:
                    break
            groups: dict[str, list[_Call]] = {}
            for call in calls:  # only calls with the same options share a generate
                groups.setdefault(json.dumps(call.options, sort_keys=True, default=str), []).append(call)
            for group in groups.values():
                self._answer(group)

    def _answer(self, group: list[_Call]) -> None:
        try:
            replies = self.inner.batch([c.messages for c in group], return_exceptions=True, **group[0].options)
        except Exception as exc:  # noqa: BLE001 -- handed to every caller of the group
            replies = [exc] * len(group)
        self.batch_sizes.append(len(group))
        for call, reply in zip(group, replies):
            if isinstance(reply, BaseException):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)


_batchers: dict[str, BatchingChatModel] = {}
_batchers_lock = threading.Lock()


def shared_batcher(inner: BaseChatModel, max_batch: int = 8) -> BatchingChatModel:
    """The process's one batcher for a model with these settings (created on first use)."""
    key = json.dumps([type(inner).__name__, inner._identifying_params, max_batch], sort_keys=True, default=str)
    with _batchers_lock:
        if key not in _batchers:
            _batchers[key] = BatchingChatModel(inner=inner, max_batch=max_batch)
        return _batchers[key]
