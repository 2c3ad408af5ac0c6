"""Routers: pure functions of the state, typed with ``Literal`` so Studio draws every edge."""

from __future__ import annotations

from typing import Literal

from graph.state import State, attempts_for, current_step


def next_step(state: State) -> Literal["generate", "accept", "compose"]:
    """Where the next step starts: drawn steps are generated; a guidance step that answers about
    a given image (no prompt) is accepted with that image at once; after the last step, compose."""
    if state.get("step_index", 0) >= len(state["plan"]):
        return "compose"
    return "generate" if current_step(state)["prompt"] else "accept"


def after_generate(state: State) -> Literal["critique", "accept"]:
    """The last allowed attempt is accepted as is: no critic call is spent on it."""
    latest = attempts_for(state, current_step(state)["step_number"])[-1]
    return "accept" if latest["last_allowed"] else "critique"


def after_critique(state: State) -> Literal["accept", "generate"]:
    """Accept an explicit pass; a failure regenerates. An unusable verdict follows the policy the
    critic recorded with it (``critic_unparsed``; regenerate unless it says accept)."""
    latest = attempts_for(state, current_step(state)["step_number"])[-1]
    verdict = latest["verdict"]
    if verdict is None:
        return "generate"
    if verdict["success"] is None:
        return "accept" if verdict.get("fallback") == "accept" else "generate"
    return "accept" if verdict["success"] else "generate"
