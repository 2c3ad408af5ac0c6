"""Tests for tools.doubles.scripted_chat: the OpenAI-compatible test double at the model boundary.

They drive the server with the real clients the product uses (openai, langchain-openai).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tools.doubles.scripted_chat import ScriptedChatServer, count_images, message_text

PNG_DATA_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def echo_server():
    seen: list[dict] = []

    def responder(body: dict) -> str:
        seen.append(body)
        last = body["messages"][-1]
        return f"plan: {message_text(last)} with {count_images(body)} image(s)"

    with ScriptedChatServer(responder) as server:
        server.seen = seen  # type: ignore[attr-defined]
        yield server


def test_openai_client_gets_text_and_responder_sees_image(echo_server):
    client = openai.OpenAI(base_url=echo_server.base_url, api_key="x", max_retries=0)
    messages = [
        {"role": "system", "content": "You are a planner."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "draw a cat"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            ],
        },
    ]
    resp = client.chat.completions.create(model="planner-vlm", messages=messages)

    assert resp.choices[0].message.content == "plan: draw a cat with 1 image(s)"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "planner-vlm"
    assert resp.id.startswith("chatcmpl-")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    (seen,) = echo_server.seen
    parts = seen["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    assert echo_server.requests == [seen]
    assert echo_server.requests[0]["model"] == "planner-vlm"

    models = client.models.list()
    assert [m.id for m in models.data] == ["planner-vlm"]


def test_langchain_invoke_and_stream():
    with ScriptedChatServer(lambda body: "one two three four five") as server:
        llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="m", max_retries=0)
        msg = HumanMessage(
            content=[
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            ]
        )
        assert llm.invoke([msg]).content == "one two three four five"

        chunks = list(llm.stream([msg]))
        assert len(chunks) > 1
        assert "".join(c.content for c in chunks) == "one two three four five"

        assert len(server.requests) == 2
        assert server.requests[1]["stream"] is True
        assert count_images(server.requests[1]) == 1


def test_stream_include_usage_with_openai_client():
    with ScriptedChatServer(lambda body: "a b c") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x y"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a b c"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.prompt_tokens == 2


def test_max_tokens_truncates_with_length_finish_reason():
    with ScriptedChatServer(lambda body: "alpha beta gamma delta epsilon") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], max_tokens=2)
        assert resp.choices[0].finish_reason == "length"
        assert resp.choices[0].message.content == "alpha beta"
        assert resp.usage.completion_tokens == 2

        resp = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "go"}], max_completion_tokens=10
        )
        assert resp.choices[0].finish_reason == "stop"
        assert resp.choices[0].message.content == "alpha beta gamma delta epsilon"


def test_n_two_returns_two_choices():
    counter = iter(range(100))
    with ScriptedChatServer(lambda body: f"candidate {next(counter)}") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], n=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.message.content for c in resp.choices] == ["candidate 0", "candidate 1"]


def test_responder_error_becomes_internal_server_error(caplog):
    def responder(body: dict) -> str:
        raise ValueError("planner exploded")

    with ScriptedChatServer(responder) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with caplog.at_level("ERROR", logger="tools.doubles.scripted_chat"):
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])
    assert info.value.status_code == 500
    assert "planner exploded" in str(info.value)
    assert any("planner exploded" in (r.exc_text or "") for r in caplog.records)


def test_after_stop_requests_fail_with_connection_error():
    server = ScriptedChatServer(lambda body: "ok").start()
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=2.0)
    ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])
    assert ok.choices[0].message.content == "ok"

    server.stop()
    server.stop()  # idempotent
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_malformed_body_and_unknown_path():
    with ScriptedChatServer(lambda body: "never") as server:
        status, payload = _post(server.base_url + "/chat/completions", b"{not json")
        assert status == 400
        assert payload["error"]["type"] == "invalid_request_error"
        assert payload["error"]["message"]

        status, payload = _post(server.base_url + "/nope", b"{}")
        assert status == 404
        assert payload["error"]["type"] == "invalid_request_error"

        assert server.requests == []


def test_message_text_and_count_images():
    assert message_text({"role": "user", "content": "plain"}) == "plain"
    assert message_text({"role": "assistant", "content": None}) == ""
    msg = {
        "role": "user",
        "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            {"type": "text", "text": "b"},
        ],
    }
    assert message_text(msg) == "a\nb"
    assert count_images({"messages": [msg, msg, {"role": "user", "content": "x"}]}) == 2
