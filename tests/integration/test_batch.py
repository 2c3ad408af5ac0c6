"""Many requests at once through the real graph: concurrent, one failure never stops the others,
and running the batch again skips what finished and resumes what did not."""

import pytest

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
from graph.runs.batch import batch_run_id, run_batch
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer

ITEMS = [{"id": f"p{n}", "request": f"How do I make thing number {n}?"} for n in range(5)]


def statuses(runs_dir):
    conn = connect(runs_dir)
    try:
        return {r["run_id"]: r["status"] for r in RunRegistry(conn).list(limit=100)}
    finally:
        conn.close()


def test_a_batch_runs_every_request_and_a_rerun_resumes_only_what_did_not_finish(runs_dir, tiny_pipeline):
    from graph.runs.demo import demo_context

    broken = {"p2"}  # the planner fails for one request the first time

    def flaky(body):
        if body["model"] == demo_script.PLANNER_MODEL and any(
            f"number {n[1:]}?" in str(body["messages"]) for n in broken
        ):
            return "I cannot plan this."
        return demo_script.respond(body)

    progress = []
    with ScriptedChatServer(flaky) as server:
        context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_retries=0)
        report = run_batch(ITEMS, context, batch="b1", concurrency=3, on_progress=lambda *args: progress.append(args))
        assert sorted(report.finished) == [batch_run_id("b1", f"p{n}") for n in (0, 1, 3, 4)]
        assert list(report.failed) == ["b1-p2"] and "no usable plan" in report.failed["b1-p2"]
        assert [p[0] for p in progress] == [1, 2, 3, 4, 5] and {p[1] for p in progress} == {5}
        assert statuses(runs_dir)["b1-p2"] == "failed"
        planner_calls = sum(r["model"] == demo_script.PLANNER_MODEL for r in server.requests)

        broken.clear()
        again = run_batch(ITEMS, context, batch="b1", concurrency=3)
        assert again.finished == ["b1-p2"] and len(again.skipped) == 4 and not again.failed
        # Only the failed request was planned again.
        assert sum(r["model"] == demo_script.PLANNER_MODEL for r in server.requests) == planner_calls + 1
    assert set(statuses(runs_dir).values()) == {"finished"}


def test_bad_requests_are_reported_with_their_id_and_the_rest_run(runs_dir, tiny_pipeline, chat_server):
    from graph.runs.demo import demo_context

    items = [
        {"id": "ok", "request": "How do I tie a knot?"},
        {"id": "empty", "request": "   "},
        {"id": "no-image", "request": "Continue <image>", "images": ["/nope/missing.png"]},
    ]
    report = run_batch(items, demo_context(runs_dir, chat_server.base_url, tiny_pipeline), batch="b2", concurrency=2)
    assert report.finished == ["b2-ok"]
    assert "the request is empty" in report.failed["b2-empty"]
    assert "missing.png" in report.failed["b2-no-image"]


def test_repeated_ids_are_refused_before_anything_runs(runs_dir, make_context):
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        run_batch([{"id": "a", "request": "x"}, {"id": "a", "request": "y"}], make_context(), batch="b3")
