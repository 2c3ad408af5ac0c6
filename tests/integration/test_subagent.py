"""Embedding the graph in larger agent systems: as a node of a parent graph, as a tool of a
tool-calling agent (a scripted chat model calls it), and asynchronously with AsyncSqliteSaver."""

import asyncio
import json
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from conftest import REQUEST
from graph.builder import build_graph
from graph.context import Context
from graph.subagent import interleave_tool


class ParentState(TypedDict, total=False):
    topic: str
    request: str  # shared with the child graph (input)
    document: list  # shared with the child graph (output)
    summary: str


def test_graph_as_a_node_of_a_parent_graph(make_context, tmp_path):
    def ask(state):
        return {"request": f"How do I {state['topic']}?"}

    def summarise(state):
        return {"summary": " / ".join(entry["step_name"] for entry in state["document"])}

    parent = StateGraph(ParentState, context_schema=Context)
    parent.add_node("ask", ask)
    parent.add_node("illustrate", build_graph())  # the child inherits the parent's checkpointer
    parent.add_node("summarise", summarise)
    parent.add_edge(START, "ask")
    parent.add_edge("ask", "illustrate")
    parent.add_edge("illustrate", "summarise")
    parent.add_edge("summarise", END)
    with SqliteSaver.from_conn_string(str(tmp_path / "parent.sqlite")) as saver:
        app = parent.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "parent-1"}}
        out = app.invoke({"topic": "fold a paper crane"}, config, context=make_context(), durability="sync")
        assert out["summary"] == "Get ready / Halfway there / Finished"
        assert len(out["document"]) == 3 and all(e["image"] for e in out["document"])
        assert app.get_state(config).values["summary"] == out["summary"]


class AgentState(TypedDict):
    messages: Annotated[list, add_messages]


def test_graph_as_a_tool_of_a_tool_calling_agent(make_context):
    context = make_context()
    tool = interleave_tool(context)
    scripted = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": tool.name, "args": {"request": REQUEST}, "id": "call-1"}]),
                AIMessage("Here is your illustrated guide."),
            ]
        )
    )

    agent = StateGraph(AgentState)
    agent.add_node("agent", lambda state: {"messages": [scripted.invoke(state["messages"])]})
    agent.add_node("tools", ToolNode([tool]))
    agent.add_edge(START, "agent")
    agent.add_conditional_edges("agent", tools_condition)
    agent.add_edge("tools", "agent")
    messages = agent.compile().invoke({"messages": [HumanMessage("Teach me origami")]})["messages"]

    tool_reply = json.loads(messages[2].content)
    assert [s["title"] for s in tool_reply["steps"]] == ["Get ready", "Halfway there", "Finished"]
    assert all(Path(s["image"]).is_file() for s in tool_reply["steps"])
    assert Path(tool_reply["document_html"]).is_file()
    assert messages[-1].content == "Here is your illustrated guide."


def test_async_use_with_async_sqlite_saver(make_context, tmp_path):
    context = make_context()

    async def scenario():
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "async.sqlite")) as saver:
            app = build_graph(saver)
            config = {"configurable": {"thread_id": "async-1"}}
            events = [
                chunk
                async for mode, chunk in app.astream(
                    {"request": REQUEST}, config, context=context, stream_mode=["updates", "custom"], durability="sync"
                )
                if mode == "custom"
            ]
            state = await app.aget_state(config)
            tool_reply = await interleave_tool(context, checkpointer=saver).ainvoke({"request": REQUEST})
            return events, state, json.loads(tool_reply)

    events, state, tool_reply = asyncio.run(scenario())
    assert events[-1]["event"] == "run_finished" and len(state.values["document"]) == 3
    assert len(tool_reply["steps"]) == 3
