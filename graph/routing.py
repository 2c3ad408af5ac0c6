"""Routers: pure functions of the state, typed with ``Literal`` so Studio draws every edge."""

from __future__ import annotations

from typing import Literal

from graph.state import State, attempts_for, current_step


def after_generate(state: State) -> Literal["critique", "accept"]:
    """The last allowed attempt is accepted as is: no critic call is spent on it."""
    latest = attempts_for(state, current_step(state)["step_number"])[-1]
    return "accept" if latest["last_allowed"] else "critique"


def after_critique(state: State) -> Literal["accept", "generate"]:
    """Accept only an explicit pass; a failure or an unusable verdict regenerates."""
    latest = attempts_for(state, current_step(state)["step_number"])[-1]
    verdict = latest["verdict"]
    return "accept" if verdict is not None and verdict["success"] is True else "generate"


def after_accept(state: State) -> Literal["generate", "compose"]:
    return "generate" if state["step_index"] < len(state["plan"]) else "compose"
