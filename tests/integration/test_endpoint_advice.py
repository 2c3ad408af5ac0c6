"""The advice given when a planner/critic endpoint does not answer matches the cause, over real
sockets on 127.0.0.1: a timeout (server up but silent) is not called unreachable, a refused
connection names the port and model the user gave, and library messages speak in setting names
(the CLI turns them into its flags)."""

import socket
import threading

import pytest
from langchain_core.messages import HumanMessage

from graph.context import Context
from graph.runs.preflight import EndpointUnreachableError, check_endpoints
from tools.llm.chat import EndpointError, complete, openai_model


@pytest.fixture
def silent_server():
    """Accepts connections and never answers (a server busy with a long reply)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_timeout_is_called_a_timeout_not_unreachable(silent_server):
    model = openai_model(silent_server, "k", "my-critic-8b", 64, 0.0, 1.0, 0)
    with pytest.raises(EndpointError) as caught:
        complete(model, [HumanMessage("hi")], "critic")
    text = str(caught.value)
    assert "did not answer within 1 s" in text and "reachable but slow" in text
    assert "vlm_timeout_s" in text
    assert "vllm serve" not in text and "unreachable" not in text
    assert "interleave resume" not in text and "--" not in text  # no CLI wording in the library


def test_a_refused_connection_names_the_users_port_and_model():
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    model = openai_model(url, "k", "acme/critic-7b", 64, 0.0, 5.0, 0)
    with pytest.raises(EndpointError) as caught:
        complete(model, [HumanMessage("hi")], "critic")
    text = str(caught.value)
    assert f"nothing listens at 127.0.0.1:{port}" in text
    assert f"`vllm serve acme/critic-7b --port {port}`" in text and "8000" not in text
    assert "critic_base_url" in text


def test_preflight_says_the_same_for_the_port_given():
    port = closed_port()
    context = Context(planner_base_url=f"http://127.0.0.1:{port}/v1", planner_model="my-planner")
    with pytest.raises(EndpointUnreachableError) as caught:
        check_endpoints(context)
    text = str(caught.value)
    assert f"`vllm serve my-planner --port {port}`" in text and "Nothing was written" in text


def test_preflight_timeout(silent_server, monkeypatch):
    monkeypatch.setattr("graph.runs.preflight.PREFLIGHT_TIMEOUT_S", 1.0)
    with pytest.raises(EndpointUnreachableError) as caught:
        check_endpoints(Context(planner_base_url=silent_server, critic_base_url=silent_server))
    assert "did not answer within 1 s" in str(caught.value)


def test_the_advice_never_prints_a_password_of_the_base_url():
    port = closed_port()
    context = Context(planner_base_url=f"http://alice:pw-secret-9@127.0.0.1:{port}/v1", planner_model="my-planner")
    with pytest.raises(EndpointUnreachableError) as caught:
        check_endpoints(context)
    text = str(caught.value)
    assert "pw-secret-9" not in text and f"http://***@127.0.0.1:{port}/v1" in text
    assert f"nothing listens at 127.0.0.1:{port}" in text
