"""The benchmark harnesses end to end through ``interleave eval``'s entry point: the real graph
(tiny random klein, scripted planner and critic) or the bare generator makes each item, a
scripted judge on a real HTTP server answers so that every expected score is exact, and the
report's numbers, costs, links and submission file are checked. Last, an evaluation killed
mid-way in a child process is resumed without asking the judge any stored question again."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals.benchmarks.cli import main
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer, count_images, message_text, request_text

DATA = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
REPO = Path(__file__).resolve().parents[2]
JUDGE = "judge-m"


def judge_reply(body: dict) -> str:
    """Scores read off markers in the data: [met]/[unmet]/[unsure] in a rubric, [scores c r a] in
    a WISE explanation, [cons N reas N] in a RISE instruction; [garbage] gets prose, no answer."""
    text = request_text(body)
    if "[garbage]" in text:
        return "I would rather not say."
    rubric = re.search(r"<rubric>\n(.*?)\n</rubric>", text, re.S)
    if rubric:
        verdict = "true" if "[met]" in rubric.group(1) else "false" if "[unmet]" in rubric.group(1) else '"not sure"'
        return f'Checked.\n<answer>{{"criteria_met": {verdict}, "explanation": "scripted"}}</answer>'
    scores = re.search(r"\[scores (\d) (\d) (\d)\]", text)
    if scores:
        return '<answer>{"consistency": %s, "realism": %s, "aesthetic_quality": %s}</answer>' % scores.groups()
    if "realism and generation quality" in text:
        return '<answer>{"score": 5}</answer>'
    kind = "cons" if "keeps everything" in text or "keeps the first image" in text else "reas"
    return '<answer>{"score": %s}</answer>' % re.search(kind + r" (\d)", text).group(1)


def judge_requests(server) -> list[dict]:
    return [b for b in server.requests if b["model"] == JUDGE]


@pytest.fixture
def server():
    def respond(body):
        return judge_reply(body) if body["model"] == JUDGE else demo_script.respond(body)

    with ScriptedChatServer(respond) as running:
        yield running


def cli_args(bench, data, out, runs_dir, server, pipeline, *configs, extra=()):
    return [
        bench,
        "--data",
        str(data),
        "--out",
        str(out),
        "--runs-dir",
        str(runs_dir),
        *[a for c in configs for a in ("--config", c)],
        "--planner-base-url",
        server.base_url,
        "--planner-model",
        demo_script.PLANNER_MODEL,
        "--critic-base-url",
        server.base_url,
        "--critic-model",
        demo_script.CRITIC_MODEL,
        "--generator-model",
        str(pipeline),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--width",
        "64",
        "--height",
        "64",
        "--num-inference-steps",
        "2",
        "--judge",
        JUDGE,
        "--judge-base-url",
        server.base_url,
        "--judge-retries",
        "1",
        "--quiet",
        *extra,
    ]


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def section(report, name):
    return next(s for s in report["configs"] if s["name"] == name)


def items(sec):
    return {row["id"]: row for row in sec["items"]}


def test_wise_configurations_side_by_side(tmp_path, server, tiny_pipeline):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = cli_args(
        "wise",
        DATA / "wise",
        out,
        runs,
        server,
        tiny_pipeline,
        "bare",
        "full",
        "critic-off",
        extra=["--judge-version", "judge-m-2026-11", "--wise-protocol", "legacy"],
    )
    assert main(args) == 1  # one item's judge reply is unreadable: reported, exit 1
    report = load_report(out)
    assert report["complete"] and report["judge"]["model"] == JUDGE
    assert report["judge"]["version"] == "judge-m-2026-11"
    expected = {"1": 0.8, "401": 1.0, "568": 0.5, "701": 0.25, "801": 0.45, "901": 0.7}
    for name in ("bare", "full", "critic-off"):
        sec = section(report, name)
        head = sec["metrics"]["headline"]
        # Item 2 could not be scored: like Calculate.py with a prompt id missing, no overall.
        assert head["overall"] is None and head["unscorable"] == 1 and head["items"] == 7
        assert (head["culture"], head["time"], head["chemistry"]) == pytest.approx((0.8, 1.0, 0.7))
        rows = items(sec)
        for pid, value in expected.items():
            assert rows[pid]["scores"]["wiscore"] == pytest.approx(value)
            assert (out / rows[pid]["trajectory"]).is_file()
        assert rows["2"]["status"] == "judge_failed" and "no_answer" in rows["2"]["error"]
        assert rows["2"]["cost"]["judge_requests"] == 2  # asked, then re-asked once; no score
        assert sec["counts"] == {
            "scored": 6,
            "partial": 0,
            "judge_failed": 1,
            "generation_failed": 0,
            "generated": 0,
            "pending": 0,
        }
    # Cost per item: the demo critic rejects step 2 once, so the full loop makes 4 images.
    bare, full, off = (section(report, n)["cost_per_item"] for n in ("bare", "full", "critic-off"))
    assert (bare["generator_calls"], bare["critic_calls"], bare["vlm_requests"]) == (1, 0, 0)
    assert (full["generator_calls"], full["critic_calls"], full["vlm_requests"]) == (4, 4, 5)
    assert (off["generator_calls"], off["critic_calls"], off["vlm_requests"]) == (3, 0, 1)
    assert full["vlm_tokens"] > off["vlm_tokens"] > 0 and full["wall_s"] > 0
    # Each judge request shows one image with the prompt and its explanation.
    asked = judge_requests(server)
    assert all(count_images(b) == 1 for b in asked)
    assert any("A bunch of carnations" in request_text(b) for b in asked)
    markdown = (out / "report.md").read_text()
    assert "`judge-m`, version `judge-m-2026-11`" in markdown and "| critic-off | graph |" in markdown

    # Running it again finds everything stored: no new generation, no new judge request.
    before = len(server.requests)
    assert main(args) == 1
    assert len(server.requests) == before


def test_ueval_rubrics_submission_and_a_planner_variant(tmp_path, server, tiny_pipeline):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = cli_args(
        "ueval", DATA / "ueval.jsonl", out, runs, server, tiny_pipeline, "full", "planner-b:planner_model=planner-b"
    )
    assert main(args) == 1  # life_1 has an unreadable text rubric
    report = load_report(out)
    assert any(b["model"] == "planner-b" for b in server.requests)
    for name in ("full", "planner-b"):
        sec = section(report, name)
        rows = items(sec)
        assert rows["art_1"]["scores"]["text_rate"] == pytest.approx(1 / 3)  # "not sure" unmet
        assert rows["art_1"]["scores"]["image_rate"] == 1.0
        assert rows["space_1"]["scores"]["text_rate"] == 1.0
        assert rows["space_1"]["scores"]["image_rate"] == 0.5
        assert rows["life_1"]["status"] == "partial"
        assert rows["life_1"]["scores"]["text_rate"] is None
        assert rows["life_1"]["scores"]["image_rate"] == 0.5
        head = sec["metrics"]["headline"]
        assert head["text_avg_rate"] == pytest.approx(100 * (1 / 3 + 1) / 2)
        assert head["image_avg_rate"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
        assert head["task_avg"] == pytest.approx((75 + 100 * (1 / 3 + 1) / 2 + 50) / 3)
        submission = json.loads((out / sec["submission"]).read_text())
        assert [row["id"] for row in submission] == ["art_1", "space_1", "life_1"]
        for row in submission:
            assert set(row) == {"id", "text_answer", "image_answer"}
            assert len(row["image_answer"]) == 3 and all(Path(p).is_file() for p in row["image_answer"])
            # Laid out as ueval_klein.py: each step's instruction (no auxiliary text), joined.
            assert row["text_answer"].startswith("Lay out everything needed for: ")
            assert row["text_answer"].endswith("The work is about half done.The finished result, neat and complete.")
    asked = judge_requests(server)
    orbit = [b for b in asked if "elliptical orbit" in request_text(b)]
    materials = [b for b in asked if "the paints and brushes" in request_text(b)]
    wet = [b for b in asked if "wet the paper" in request_text(b)]
    assert orbit and all(
        count_images(b) == 3 and "<text_answer>" not in request_text(b) for b in orbit
    )  # closed task: images alone
    assert materials and all(
        count_images(b) == 3 and "Lay out everything" in request_text(b) for b in materials
    )  # open task: images with the text answer
    assert wet and all(count_images(b) == 0 for b in wet)  # text rubric: the text alone


def test_rise_edits_scores_and_accuracy(tmp_path, server, tiny_pipeline):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = cli_args("rise", DATA / "rise" / "data.json", out, runs, server, tiny_pipeline, "bare", "full")
    assert main(args) == 0
    report = load_report(out)
    for name in ("bare", "full"):
        sec = section(report, name)
        head = sec["metrics"]["headline"]
        # Rule 2026-04: the consistency-free causal sample (reasoning 5, plausibility 5) counts.
        assert head["accuracy"] == 50 and head["unscorable"] == 0
        assert (head["temporal"], head["causal"], head["spatial"], head["logical"]) == (100, 100, 0, 0)
        assert head["score_pct"] == pytest.approx(25 * ((5 + 5 + 3.7 + 1.1) / 4 - 1))
        rows = items(sec)
        assert rows["spatial_reasoning_1"]["scores"]["score"] == pytest.approx(3.7)
        assert rows["logical_reasoning_1"]["scores"]["reasoning"] == 1
        assert rows["logical_reasoning_1"]["scores"]["plausibility"] is None
        assert rows["causal_reasoning_1"]["scores"]["consistency"] is None
    assert "2026-04" in report["protocol"]["scoring_rule"]
    assert "ce8cba3" in (out / "report.md").read_text()
    full = section(report, "full")["cost_per_item"]
    assert (full["generator_calls"], full["vlm_requests"]) == (2, 3)  # guidance: two new steps
    # The paper's rule from the same stored judgments: no judge request, consistency-free fails.
    before = len(server.requests)
    assert main(args + ["--stage", "judge", "--rise-rule", "pre-2026-04"]) == 0
    assert len(server.requests) == before
    old = load_report(out)
    assert "pre-2026-04" in old["protocol"]["scoring_rule"]
    assert section(old, "full")["metrics"]["headline"]["accuracy"] == 25
    assert section(old, "full")["metrics"]["headline"]["causal"] == 0
    asked = judge_requests(server)
    assert not any(
        "ice cube" in request_text(b) and "keeps everything" in request_text(b) for b in asked
    )  # consistency-free: no consistency request
    banana = [b for b in asked if "banana" in request_text(b) and "<expected>" in request_text(b)]
    assert banana and all(count_images(b) == 2 for b in banana)  # reasoning_img: input + output
    left = [b for b in asked if "from the left" in request_text(b) and "expected result;" in request_text(b)]
    assert left and all(count_images(b) == 2 for b in left)  # reference image + output
    assert not any("pattern" in request_text(b) and "realism" in request_text(b) for b in asked)


def result_rows(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_an_evaluation_killed_mid_way_resumes_without_asking_again(tmp_path, tiny_pipeline):
    def slow(body):
        if body["model"] == JUDGE:
            time.sleep(0.3)
            return judge_reply(body)
        return demo_script.respond(body)

    out, runs = tmp_path / "out", tmp_path / "runs"
    with ScriptedChatServer(slow) as server:
        args = cli_args(
            "wise",
            DATA / "wise",
            out,
            runs,
            server,
            tiny_pipeline,
            "bare",
            extra=["--concurrency", "1", "--wise-protocol", "legacy"],
        )
        assert main(args + ["--stage", "generate"]) == 0
        assert not judge_requests(server)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from evals.benchmarks.cli import main; sys.exit(main(sys.argv[1:]))",
                *args,
                "--stage",
                "judge",
                "--report-every-s",
                "0",
            ],
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while result_rows(out / "results.sqlite") < 2 and child.poll() is None:
            assert time.monotonic() < deadline, "the child judged nothing within 60 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
        done_at_kill = result_rows(out / "results.sqlite")
        asked_before = len(judge_requests(server))
        assert 2 <= done_at_kill < 7 and asked_before < 8
        partial = load_report(out)  # written while it ran
        assert not partial["complete"]
        assert sum(r["status"] == "generated" for r in section(partial, "bare")["items"]) >= 1

        assert main(args) == 1  # the rerun finishes the rest (item 2 stays a judge failure)
        report = load_report(out)
        assert report["complete"]
        rows = items(section(report, "bare"))
        assert sum(r["status"] == "scored" for r in rows.values()) == 6
        by_item = {}
        for body in judge_requests(server):
            text = request_text(body)
            pid = next(pid for pid, marker in MARKERS.items() if marker in text)
            by_item[pid] = by_item.get(pid, 0) + 1
        # Every question was asked once (item 2: once plus its one re-ask), except at most the
        # single request that was in flight when the child was killed.
        extra = {pid: n - (2 if pid == "2" else 1) for pid, n in by_item.items()}
        assert set(by_item) == set(MARKERS) and sum(extra.values()) <= 1
        assert all(v >= 0 for v in extra.values())


MARKERS = {
    "1": "carnations",
    "2": "Zongzi",
    "401": "red and orange",
    "568": "square outline",
    "701": "caterpillar",
    "801": "looks bent",
    "901": "Bright blue",
}


def max_tokens_of(body: dict) -> int | None:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def test_benchmark_runs_honour_the_planner_and_critic_reply_budgets(tmp_path, server, tiny_pipeline):
    """The item's planner and critic clients come from the run's own factory, so the per-role
    reply budgets reach every request (they were once built by hand with vlm_max_tokens)."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = cli_args(
        "rise",
        DATA / "rise" / "data.json",
        out,
        runs,
        server,
        tiny_pipeline,
        "full",
        extra=["--stage", "generate", "--limit", "1", "--planner-max-tokens", "321", "--critic-max-tokens", "123"],
    )
    assert main(args) == 0
    planner = [b for b in server.requests if b["model"] == demo_script.PLANNER_MODEL]
    critic = [b for b in server.requests if b["model"] == demo_script.CRITIC_MODEL]
    assert planner and critic
    assert {max_tokens_of(b) for b in planner} == {321}
    assert {max_tokens_of(b) for b in critic} == {123}


FAKE_VLLM_EVAL = '''
def build_evaluation_messages(prompt_data, image_base64):
    return [
        {"role": "system", "content": [{"type": "text", "text": "FAKE SYSTEM {not a field}"}]},
        {"role": "user", "content": [
            {"type": "text", "text": f"""Judge it. Reply Score: 0 or Score: 1.
PROMPT: "{prompt_data['Prompt']}"
EXPLANATION: "{prompt_data['Explanation']}" """},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_base64}"}},
        ]},
    ]
'''


def fake_wise_repo(root: Path) -> Path:
    """A folder with the file layout of PKU-YuanGroup/WISE (our own texts, not the official)."""
    (root / "data_verified").mkdir(parents=True)
    (root / "vllm_eval.py").write_text(FAKE_VLLM_EVAL)
    files = {
        "cultural_common_sense_verified.json": [1, 2],
        "spatio-temporal_reasoning_verified.json": [401, 521],
        "natural_science_verified.json": [641, 761, 881],
    }
    for name, ids in files.items():
        (root / "data_verified" / name).write_text(
            json.dumps(
                [
                    {
                        "prompt_id": i,
                        "Prompt": f"prompt {i}",
                        "Subcategory": "s",
                        "Explanation": f"[verdict {int(i not in (2, 521))}] explanation {i}",
                    }
                    for i in ids
                ]
            )
        )
    return root


def test_wise_verified_reads_the_judge_prompt_from_the_official_repo(tmp_path, tiny_pipeline):
    repo = fake_wise_repo(tmp_path / "WISE")

    def respond(body):
        if body["model"] != JUDGE:
            return demo_script.respond(body)
        verdict = re.search(r"\[verdict (\d)\]", request_text(body)).group(1)
        return f"<think>weighing it</think>**Score**: {verdict}"

    out, runs = tmp_path / "out", tmp_path / "runs"
    with ScriptedChatServer(respond) as server:
        args = cli_args("wise", None, out, runs, server, tiny_pipeline, "bare", extra=["--wise-repo", str(repo)])
        args = [a for a in args if a not in ("--data", "None")]
        assert main(args) == 0
        asked = judge_requests(server)
    report = load_report(out)
    assert "WISE_Verified" in report["protocol"]["protocol"]
    assert report["protocol"]["judge_prompt"] == f"read from {repo / 'vllm_eval.py'}:build_evaluation_messages"
    head = section(report, "bare")["metrics"]["headline"]
    # Categories of calculate_verified.py: CULTURE 1-400 (1: 1, 2: 0), TIME 401-520 (1),
    # SPACE 521-640 (0), BIOLOGY, PHYSICS, CHEMISTRY (1 each); weights 0.40 and 0.12.
    assert (head["culture"], head["time"], head["space"]) == (0.5, 1.0, 0.0)
    assert head["overall"] == pytest.approx(0.4 * 0.5 + 0.12 * (1 + 0 + 1 + 1 + 1))
    assert len(asked) == 7
    for body in asked:
        system, user = body["messages"]
        assert message_text(system) == "FAKE SYSTEM {not a field}"
        assert [p["type"] for p in user["content"]] == ["text", "image_url"]  # text first
        assert body["temperature"] == 0.0 and max_tokens_of(body) == 500
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert 'PROMPT: "prompt 401"' in "".join(request_text(b) for b in asked)


def test_wise_verified_without_the_official_repo_is_refused_up_front(tmp_path, capsys):
    code = main(["wise", "--out", str(tmp_path / "out"), "--judge", JUDGE])
    assert code == 2
    assert "--wise-repo is required" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = main(["wise", "--wise-repo", str(tmp_path / "empty"), "--judge", JUDGE])
    assert code == 2 and "has no vllm_eval.py" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
