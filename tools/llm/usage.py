"""Counting what chat requests cost: requests and, where the server reports them, tokens.

A LangChain callback handler, so it works for any chat model the same way: the benchmark
harness attaches one to each item's planner and critic clients (its cost columns) and the judge
one to each question it asks (``tools.judge.judge``). Thread-safe: one handler may see the
requests of several threads.
"""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler


class Usage(BaseCallbackHandler):
    """Counts chat requests and, where the server reports them, input and output tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.tokens_known = True

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        with self._lock:
            self.requests += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                with self._lock:
                    if not usage:
                        self.tokens_known = False
                        continue
                    self.input_tokens += usage.get("input_tokens", 0)
                    self.output_tokens += usage.get("output_tokens", 0)

    def as_dict(self) -> dict[str, Any]:
        """{requests, input_tokens, output_tokens}; the token counts are None when any reply
        came without them (or nothing was asked)."""
        known = self.tokens_known and self.requests > 0
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens if known else None,
            "output_tokens": self.output_tokens if known else None,
        }
