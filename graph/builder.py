"""All the wiring of the planner -> generator -> critic loop, in one place.

    START -> plan -> review -> generate -> (critique -> generate)* -> accept -> ... -> compose -> END

``review`` pauses for a human only when the run's ``review_plan`` setting is on. A guidance step
that only answers about an image the user gave goes straight to ``accept`` (nothing is drawn).

``graph`` (compiled without a checkpointer) is what ``langgraph.json`` exports to LangGraph
Studio / ``langgraph dev``, which bring their own persistence. The CLI and embedding code call
``build_graph(checkpointer=...)``. Importing this module loads no weights and no diffusers.
"""

from __future__ import annotations

import functools
from typing import Any

from langgraph.graph import END, START, StateGraph

from checkpoints.saver import RunSaver
from checkpoints.shape import StateShape
from graph.context import Context, RemoteContext
from graph.routing import after_critique, after_generate, next_step
from graph.served import server_node
from graph.state import InputState, OutputState, State
from nodes.compose import accept, compose
from nodes.critic import critique
from nodes.generator import generate
from nodes.planner import plan
from nodes.review import review
from tools.llm.chat import ChatModels


#: What a checkpoint of this graph may hold, checked by the runs database's saver on every read.
STATE_SHAPE = StateShape(State)


def build_graph(checkpointer: Any = None, *, models: ChatModels | None = None, remote: bool = False) -> Any:
    """Compile the interleaved-generation graph; pass a checkpointer to make runs resumable, and
    ``models`` to use LangChain chat models of your own for the planner and/or the critic.
    ``remote``: the graph serves untrusted callers (a LangGraph server): they may set only the
    remote settings (``RemoteContext``) and give input images only as data URLs; its runs are
    registered in the runs folder and resumed with their stored settings (``graph.served``)."""
    builder = StateGraph(
        State, context_schema=RemoteContext if remote else Context, input_schema=InputState, output_schema=OutputState
    )
    if models is not None and not isinstance(models, ChatModels):
        raise TypeError("models must be tools.llm.chat.ChatModels(planner=..., critic=...)")
    nodes = {
        "plan": functools.partial(plan, models=models, remote=remote) if models or remote else plan,
        "review": review,
        "generate": generate,
        "critique": functools.partial(critique, models=models) if models else critique,
        "accept": accept,
        "compose": compose,
    }
    for name, node in nodes.items():
        # A served run keeps its stored settings and its registry row (graph.served).
        builder.add_node(name, server_node(node, name) if remote else node)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "review")
    builder.add_conditional_edges("review", next_step)
    builder.add_conditional_edges("generate", after_generate)
    builder.add_conditional_edges("critique", after_critique)
    builder.add_conditional_edges("accept", next_step)
    builder.add_edge("compose", END)
    if isinstance(checkpointer, RunSaver) and checkpointer.shape is None:
        # a tampered row of the wrong shape is refused with the run and the field named,
        # instead of failing later inside a node (checkpoints.shape)
        checkpointer.shape = STATE_SHAPE
    return builder.compile(checkpointer=checkpointer, name="interleave")


graph = build_graph(remote=True)
