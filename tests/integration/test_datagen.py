"""The data pipeline through the real CLI: teacher runs of a prompt file, judging every attempt,
and exporting planner SFT, critic SFT and critic RL datasets whose counts follow from the
scripted judge's scores."""

import base64
import hashlib
import json
from pathlib import Path

import pytest

from graph.cli.main import main
from tools.doubles import demo_script
from tools.replies.parsing import parse_verdict
from tools.doubles.scripted_chat import count_images

REQUESTS = ["How do I fold a paper boat?", "How do I plant a tulip bulb?", "How do I wrap a gift?"]


def image_hashes(body):
    urls = [
        part["image_url"]["url"]
        for m in body["messages"]
        if isinstance(m["content"], list)
        for part in m["content"]
        if part.get("type") == "image_url"
    ]
    return [hashlib.sha256(base64.b64decode(u.split(",", 1)[1])).hexdigest() for u in urls]


@pytest.fixture
def teacher_settings(chat_server, tiny_pipeline):
    return [
        "--planner-base-url",
        chat_server.base_url,
        "--planner-model",
        demo_script.PLANNER_MODEL,
        "--critic-base-url",
        chat_server.base_url,
        "--critic-model",
        demo_script.CRITIC_MODEL,
        "--generator-model",
        str(tiny_pipeline),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--width",
        "128",
        "--height",
        "128",
        "--num-inference-steps",
        "2",
    ]


def test_prompts_to_runs_to_scores_to_datasets(tmp_path, runs_dir, teacher_settings, judge_server, capsys):
    import datasets

    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"id": f"r{n}", "request": r}) for n, r in enumerate(REQUESTS)]
    lines.insert(1, '{"id": "broken", "request": ')  # malformed: reported, skipped
    prompts.write_text("\n".join(lines) + "\n")

    code = main(
        [
            "--runs-dir",
            runs_dir,
            "datagen",
            "run",
            "--prompts",
            str(prompts),
            "--name",
            "t",
            "--concurrency",
            "2",
            *teacher_settings,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "skipped:" in err and "line 2" in err
    assert "batch t: 3 finished" in out

    # Which attempt made which image: the rejected first try of step 2 scores low, the rest high.
    documents = [json.loads((Path(runs_dir) / f"t-r{n}" / "document.json").read_text()) for n in range(3)]
    low = {d["steps"][1]["attempts"][0]["image"]["sha256"] for d in documents}
    assert all(len(d["steps"][1]["attempts"]) == 2 for d in documents)

    def by_image(body):  # SC and PQ alike
        score = 3 if image_hashes(body)[-1] in low else 9
        return f'Looks as it does.<answer>{{"scores": [{score}, {score}], "reasoning": "ok"}}</answer>'

    judge = judge_server(sc=by_image, pq=by_image)
    score = [
        "--runs-dir",
        runs_dir,
        "datagen",
        "score",
        "--batch",
        "t",
        "--judge-base-url",
        judge.base_url,
        "--judge-model",
        "scripted-judge",
    ]
    assert main(score) == 0
    out, _ = capsys.readouterr()
    assert "attempts 12: 0 scored before, 12 scored now" in out
    asked = len(judge.requests)
    assert asked == 12 * 2  # SC and PQ per attempt
    assert {count_images(r) for r in judge.requests} == {1, 2}
    assert main(score) == 0  # again: nothing new is asked
    assert len(judge.requests) == asked
    assert "12 scored before, 0 scored now" in capsys.readouterr()[0]

    target = tmp_path / "datasets"
    assert (
        main(
            [
                "--runs-dir",
                runs_dir,
                "datagen",
                "export",
                "--batch",
                "t",
                "--out",
                str(target),
                "--judge-model",
                "scripted-judge",
            ]
        )
        == 0
    )
    report = capsys.readouterr()[0]
    assert "samples dropped to balance (true) 6" in report

    planner = datasets.load_from_disk(str(target / "planner_sft"))
    assert sorted(planner["kind"]) == ["full"] * 3 + ["truncated"] * 3
    truncated = next(row for row in planner if row["kind"] == "truncated")
    given = len(truncated["images"])
    plan = json.loads(truncated["completion"][0]["content"][0]["text"].split("<answer>")[1][:-9])
    assert plan["execution_plan"][0]["step_number"] == given + 1  # the rest of the plan, numbered on
    assert sum(p["type"] == "image" for p in truncated["prompt"][1]["content"]) == given

    critic = datasets.load_from_disk(str(target / "critic_sft"))
    assert len(critic) == 6 and sorted(critic["verdict"]) == [False] * 3 + [True] * 3
    sample = next(row for row in critic if not row["verdict"])
    assert [image.size for image in sample["images"]] == [(128, 128), (128, 128)]
    user_text = sample["prompt"][1]["content"][2]["text"]
    assert f"Rewritten prompt: {demo_script.SECOND_STEP_PROMPT}" in user_text
    _, success, refine = parse_verdict(sample["completion"][0]["content"][0]["text"])
    assert success is False and refine == demo_script.REFINED_SECOND_STEP_PROMPT

    rl = datasets.load_from_disk(str(target / "critic_rl"))
    assert len(rl) == 6  # step 2 of each run: scores 3 then 9 vary enough
    assert sorted(zip(rl["success"], rl["semantics"])) == [(False, 3.0)] * 3 + [(True, 9.0)] * 3
    assert set(rl["origin_prompt"]) == {demo_script.SECOND_STEP_PROMPT}
    assert not any(rl["from_scratch"]) and set(rl["width"]) == {128}


def test_export_without_finished_runs_says_what_to_do(tmp_path, runs_dir, capsys):
    from checkpoints.saver import connect

    connect(runs_dir).close()
    code = main(["--runs-dir", runs_dir, "datagen", "export", "--out", str(tmp_path / "d"), "--judge-model", "j"])
    assert code == 2
    assert "run `interleave datagen run` first" in capsys.readouterr()[1]


def test_export_refuses_to_replace_datasets_and_strict_mode_names_what_is_missing(
    tmp_path, runs_dir, teacher_settings, capsys
):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "request": REQUESTS[0]}) + "\n")
    assert (
        main(["--runs-dir", runs_dir, "datagen", "run", "--prompts", str(prompts), "--name", "s", *teacher_settings])
        == 0
    )
    target = tmp_path / "out"
    (target / "critic_sft").mkdir(parents=True)
    (target / "critic_sft" / "mine.txt").write_text("keep me")
    export = [
        "--runs-dir",
        runs_dir,
        "datagen",
        "export",
        "--batch",
        "s",
        "--out",
        str(target),
        "--judge-model",
        "nobody",
    ]
    assert main(export) == 2
    assert "already holds critic_sft" in capsys.readouterr()[1]
    assert (target / "critic_sft" / "mine.txt").read_text() == "keep me"
    assert main(export + ["--overwrite", "--strict"]) == 2  # nothing was scored by "nobody"
    assert "have no score from nobody" in capsys.readouterr()[1]
    assert (target / "critic_sft" / "mine.txt").exists()  # refused before writing anything


def test_a_strict_batch_refuses_a_prompt_file_with_a_bad_line(tmp_path, runs_dir, teacher_settings, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "request": "x"}) + "\n" + "{not json\n")
    code = main(["--runs-dir", runs_dir, "datagen", "run", "--prompts", str(prompts), "--strict", *teacher_settings])
    assert code == 2
    err = capsys.readouterr()[1]
    assert "bad:" in err and "line 2" in err and "drop --strict" in err
    assert not (Path(runs_dir) / "interleave.sqlite").exists()


def test_a_datagen_run_killed_midway_resumes_without_redoing_finished_requests(
    tmp_path, runs_dir, teacher_settings, chat_server, capsys
):
    import os
    import signal
    import subprocess
    import sys
    import time

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"k{n}", "request": f"How do I make a thing {n}?"}) + "\n" for n in range(4))
    )
    command = [
        "--runs-dir",
        runs_dir,
        "datagen",
        "run",
        "--prompts",
        str(prompts),
        "--name",
        "k",
        "--concurrency",
        "1",
        *teacher_settings,
    ]
    child = subprocess.Popen(
        [str(Path(sys.executable).with_name("interleave")), *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def finished():
        if not (Path(runs_dir) / "interleave.sqlite").exists():
            return []
        conn = connect(runs_dir)
        try:
            return [r["run_id"] for r in RunRegistry(conn).list(100) if r["status"] == "finished"]
        finally:
            conn.close()

    deadline = time.time() + 240
    while len(finished()) < 1 and time.time() < deadline and child.poll() is None:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_before = finished()
    assert 1 <= len(done_before) < 4, done_before

    def planner_calls_for(run_text):
        return sum(
            r["model"] == demo_script.PLANNER_MODEL and run_text in str(r["messages"]) for r in chat_server.requests
        )

    before = {run: planner_calls_for(f"thing {run[-1]}?") for run in done_before}
    assert main(command) == 0
    out = capsys.readouterr()[0]
    assert f"{len(done_before)} already finished" in out
    assert sorted(finished()) == [f"k-k{n}" for n in range(4)]
    assert {run: planner_calls_for(f"thing {run[-1]}?") for run in done_before} == before
