"""How the planner and critic are reached: separate endpoints per role, chat models passed in by an
embedding application, bounded concurrency, and retries that back off and re-sample."""

import json
import threading
import time
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from conftest import REQUEST
from graph.runs.demo import demo_context
from graph.runs.runner import start_run
from tools.doubles import demo_script
from tools.llm.chat import ChatModels, EndpointError, ask_until_parsed, complete, openai_model
from tools.replies.parsing import parse_verdict
from tools.doubles.scripted_chat import ScriptedChatServer

GOOD_VERDICT = '<think>fine</think><answer>{"previous_step_success": true, "refine_prompt": "p"}</answer>'


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model at the model boundary: answers like the demo's scripted server."""

    calls: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted-test"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        body = {"model": self.role_model, "messages": [{"role": "user", "content": m.content} for m in messages]}
        self.calls.append(body)
        text = demo_script.respond(body)
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(content=text, response_metadata={"finish_reason": "stop"}))]
        )

    role_model: str = demo_script.PLANNER_MODEL


def test_planner_and_critic_on_different_endpoints(runs_dir, tiny_pipeline):
    with ScriptedChatServer(demo_script.respond) as planner, ScriptedChatServer(demo_script.respond) as critic:
        context = demo_context(runs_dir, planner.base_url, tiny_pipeline, critic_base_url=critic.base_url)
        outcome = start_run(REQUEST, context)
        assert outcome.status == "finished", outcome.error
        assert {r["model"] for r in planner.requests} == {demo_script.PLANNER_MODEL}
        assert {r["model"] for r in critic.requests} == {demo_script.CRITIC_MODEL}
        assert len(critic.requests) == 4  # one per step, plus one for step 2's regeneration


def test_chat_models_passed_in_replace_the_endpoints(runs_dir, tiny_pipeline):
    planner = ScriptedChatModel(role_model=demo_script.PLANNER_MODEL)
    critic = ScriptedChatModel(role_model=demo_script.CRITIC_MODEL)
    planner.calls, critic.calls = [], []
    # The endpoints point at a closed port: only the models passed in can answer.
    context = demo_context(runs_dir, "http://127.0.0.1:9/v1", tiny_pipeline)
    outcome = start_run(REQUEST, context, models=ChatModels(planner=planner, critic=critic))
    assert outcome.status == "finished", outcome.error
    assert len(planner.calls) == 1 and len(critic.calls) == 4


def test_a_chat_model_that_raises_stops_the_run_with_the_role_named(runs_dir, tiny_pipeline):
    class Broken(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            raise RuntimeError("quota exceeded")

    context = demo_context(runs_dir, "http://127.0.0.1:9/v1", tiny_pipeline)
    outcome = start_run(REQUEST, context, models=ChatModels(planner=Broken()))
    assert outcome.status == "failed"
    assert isinstance(outcome.error, EndpointError)
    assert "planner model (Broken) failed: RuntimeError: quota exceeded" in str(outcome.error)


def test_models_must_be_chat_models():
    with pytest.raises(TypeError, match="ChatModels.critic must be a LangChain chat model"):
        ChatModels(critic="gpt-4o")


def critic_messages():
    return [HumanMessage(content="Original instruction: p\nRewritten prompt: p\n")]


def test_unusable_replies_are_retried_with_growing_pauses_and_resampled():
    replies = iter(["I think it looks fine.", '{"previous_step_success": "maybe"}', GOOD_VERDICT])
    with ScriptedChatServer(lambda body: next(replies)) as server:
        pauses = []
        model = openai_model(server.base_url, "k", "critic", 64, 0.0, 5.0, 0)
        answer = ask_until_parsed(
            model,
            critic_messages(),
            "critic",
            parse_verdict,
            retries=2,
            backoff_s=0.25,
            temperature=0.0,
            sleep=pauses.append,
        )
        assert answer.value[1] is True
        assert pauses == [0.25, 0.5]
        assert len(answer.failures) == 2 and all(f["reason"] for f in answer.failures)
        temperatures = [r.get("temperature") for r in server.requests]
        assert temperatures[0] == 0.0 and temperatures[1:] == [0.7, 0.7]


def test_retries_are_bounded_and_every_reply_is_kept():
    with ScriptedChatServer(lambda body: "no verdict here") as server:
        model = openai_model(server.base_url, "k", "critic", 64, 0.7, 5.0, 0)
        answer = ask_until_parsed(
            model, critic_messages(), "critic", parse_verdict, retries=1, backoff_s=0, temperature=0.7
        )
        assert answer.value is None
        assert len(server.requests) == 2
        assert [f["reply"] for f in answer.failures] == ["no verdict here"] * 2


def test_requests_to_one_endpoint_are_limited_to_the_concurrency_setting():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.15)
        with lock:
            in_flight[0] -= 1
        return GOOD_VERDICT

    with ScriptedChatServer(slow) as server:
        model = openai_model(server.base_url, "k", "critic-limited", 64, 0.7, 5.0, 0)
        options = {"retries": 0, "backoff_s": 0, "temperature": 0.7, "max_concurrency": 2}
        threads = [
            threading.Thread(
                target=ask_until_parsed, args=(model, critic_messages(), "critic", parse_verdict), kwargs=options
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(server.requests) == 6
        assert peak[0] == 2


def test_an_in_process_batcher_gets_every_concurrent_call_not_the_endpoint_cap():
    """The cap is for servers; the in-process batcher queues its own calls, so 12 concurrent
    critics with vlm_max_concurrency=2 still reach it together and share one batch."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from tools.llm.batcher import BatchingChatModel

    batcher = BatchingChatModel(inner=FakeListChatModel(responses=[GOOD_VERDICT]), max_batch=16, gather_s=0.5)
    options = {"retries": 0, "backoff_s": 0, "temperature": 0.7, "max_concurrency": 2}
    answers = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                ask_until_parsed(batcher, critic_messages(), "critic", parse_verdict, **options)
            )
        )
        for _ in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 12 and all(a.value is not None for a in answers)
    assert sum(batcher.batch_sizes) == 12
    assert max(batcher.batch_sizes) > 2  # more in flight than the endpoint cap


@pytest.mark.parametrize("mode", ["json", "regex"])
def test_structured_output_is_requested_and_a_bare_json_answer_is_used(runs_dir, tiny_pipeline, mode):
    """With structured outputs the server constrains the reply; in json mode the reply is the bare
    answer object (no <think>), which the parsers take as it is."""

    def constrained(body):
        text = demo_script.respond(body)
        return text.split("<answer>", 1)[1].split("</answer>", 1)[0] if mode == "json" else text

    with ScriptedChatServer(constrained) as server:
        context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_structured_output=mode)
        outcome = start_run(REQUEST, context)
        assert outcome.status == "finished", outcome.error
        planner_body = next(r for r in server.requests if r["model"] == demo_script.PLANNER_MODEL)
        critic_body = next(r for r in server.requests if r["model"] == demo_script.CRITIC_MODEL)
        if mode == "json":
            assert planner_body["response_format"]["json_schema"]["name"] == "interleave_plan"
            assert critic_body["response_format"]["json_schema"]["name"] == "critic_verdict"
        else:
            assert "<answer>" in planner_body["structured_outputs"]["regex"]
            assert "previous_step_success" in critic_body["structured_outputs"]["regex"]


@pytest.mark.parametrize("status", [400, 500])  # vLLM refuses with 400, llama.cpp's server with 500
def test_a_server_that_refuses_structured_output_says_how_to_turn_it_off(runs_dir, tiny_pipeline, status):
    import http.server
    import json as jsonlib
    import threading as th

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = jsonlib.dumps(
                {"error": {"message": "unknown field response_format", "type": "invalid_request_error"}}
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    th.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        outcome = start_run(REQUEST, demo_context(runs_dir, url, tiny_pipeline, vlm_structured_output="json"))
        assert outcome.status == "failed"
        assert "vlm_structured_output off" in str(outcome.error)
        assert "response_format type 'json_schema'" in str(outcome.error)
    finally:
        server.shutdown()


def test_auto_structured_output_moves_to_the_form_a_llamacpp_style_server_accepts(runs_dir, tiny_pipeline):
    """Like llama.cpp's server: json_schema answers HTTP 500, json_object + schema is honoured."""

    def llamacpp_like(body):
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            raise ValueError("response_format type json_schema is not supported")
        text = demo_script.respond(body)
        return text.split("<answer>", 1)[1].split("</answer>", 1)[0] if kind else text

    events = []
    with ScriptedChatServer(llamacpp_like) as server:
        context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_structured_output="auto", vlm_retries=0)
        outcome = start_run(REQUEST, context, on_event=events.append)
        assert outcome.status == "finished", outcome.error
        planner = [r["response_format"]["type"] for r in server.requests if r["model"] == demo_script.PLANNER_MODEL]
        assert planner[:2] == ["json_schema", "json_object"]
        assert (
            "schema"
            in next(r for r in server.requests if r.get("response_format", {}).get("type") == "json_object")[
                "response_format"
            ]
        )
    ready = next(e for e in events if e["event"] == "plan_ready")
    assert ready["structured_output"] == "json_object"


def test_the_auto_choice_is_stored_with_the_run_and_a_resume_in_a_new_process_starts_from_it(
    runs_dir, tiny_pipeline, capsys
):
    """The form ``auto`` settled on is kept in the run's state: a resume (here after a plan
    review, with this process's memory of the endpoint wiped, as in a new process) asks the
    critic in json_object at once, and ``show`` and document.json say which form was used."""
    from graph.cli.main import main
    from graph.runs.runner import resume_run
    from nodes import adapters

    def llamacpp_like(body):
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            raise ValueError("response_format type json_schema is not supported")
        text = demo_script.respond(body)
        return text.split("<answer>", 1)[1].split("</answer>", 1)[0] if kind else text

    with ScriptedChatServer(llamacpp_like) as server:
        context = demo_context(
            runs_dir, server.base_url, tiny_pipeline, vlm_structured_output="auto", vlm_retries=0, review_plan=True
        )
        paused = start_run(REQUEST, context)
        assert paused.status == "awaiting_review", paused.error
        adapters._auto_choice.clear()
        asked = len(server.requests)
        outcome = resume_run(paused.run_id, runs_dir, review={"approve": True})
        assert outcome.status == "finished", outcome.error
        critic = [r["response_format"]["type"] for r in server.requests[asked:]]
    assert critic and set(critic) == {"json_object"}  # no json_schema tried again
    document = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    assert document["structured_output"] == {server.base_url: "json_object"}
    assert main(["--runs-dir", runs_dir, "show", paused.run_id]) == 0
    assert f"structured output at {server.base_url}: json_object (auto)" in capsys.readouterr().out


def test_a_critic_endpoint_that_takes_no_images_is_named_and_auto_learns_no_form(runs_dir, tiny_pipeline):
    """Like llama.cpp's server with a text-only model: any message with an image fails in its chat
    template (HTTP 500), whatever the response_format. ``auto`` tries each form and then stops with
    an error that says the server takes no images and what to serve; it learns nothing."""
    from nodes import adapters
    from tools.doubles.scripted_chat import count_images

    def text_only(body):
        if count_images(body):
            raise TypeError('can only concatenate str (not "list") to str')
        return demo_script.respond(body)

    with ScriptedChatServer(text_only) as critic, ScriptedChatServer(demo_script.respond) as planner:
        context = demo_context(
            runs_dir,
            planner.base_url,
            tiny_pipeline,
            critic_base_url=critic.base_url,
            vlm_structured_output="auto",
            vlm_retries=0,
        )
        outcome = start_run(REQUEST, context)
        tried = [(r.get("response_format") or {}).get("type") for r in critic.requests]
    assert outcome.status == "failed"
    assert tried == ["json_schema", "json_object", None]
    message = str(outcome.error)
    assert "the server takes none" in message and "critic_base_url" in message and "--clip_model_path" in message
    assert "refused response_format" not in message  # the form was not the problem
    assert critic.base_url not in adapters._auto_choice


def test_the_plan_schema_sent_carries_max_plan_steps_as_max_items(runs_dir):
    from graph.context import Context
    from nodes.adapters import structured_output

    for form in ("json", "json_object"):
        call = structured_output(Context(vlm_structured_output=form, runs_dir=runs_dir, max_plan_steps=4), "plan")
        fmt = call["response_format"]
        schema = fmt["json_schema"]["schema"] if form == "json" else fmt["schema"]
        assert schema["properties"]["execution_plan"]["maxItems"] == 4


def test_a_structured_reply_cut_at_its_budget_is_returned_not_raised():
    """With a json_schema response_format the OpenAI client raises at finish_reason "length"
    (found by evals/perf/planner_validity.py on transformers serve): it must come back as a cut
    reply that the retry loop records."""
    with ScriptedChatServer(lambda body: GOOD_VERDICT) as server:
        model = openai_model(server.base_url, "k", "critic-cut", 3, 0.0, 5.0, 0)
        from tools.replies.schemas import structured_output_kwargs

        call = structured_output_kwargs("verdict", "json")["model_kwargs"]
        text, finish = complete(model, critic_messages(), "critic", **call)
        assert finish == "length" and text and len(text.split()) <= 3
