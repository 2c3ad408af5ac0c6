"""The data pipeline through the real CLI: teacher runs of a prompt file, judging every attempt,
and exporting planner SFT, critic SFT and critic RL datasets whose counts follow from the
scripted judge's scores."""

import base64
import hashlib
import json
from pathlib import Path

import pytest

from graph.cli import main
from tools import demo_script
from tools.parsing import parse_verdict
from tools.scripted_chat import ScriptedChatServer, count_images

REQUESTS = ["How do I fold a paper boat?", "How do I plant a tulip bulb?", "How do I wrap a gift?"]


def image_hashes(body):
    urls = [part["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for part in m["content"] if part.get("type") == "image_url"]
    return [hashlib.sha256(base64.b64decode(u.split(",", 1)[1])).hexdigest() for u in urls]


@pytest.fixture
def teacher_settings(chat_server, tiny_pipeline):
    return ["--planner-base-url", chat_server.base_url, "--planner-model", demo_script.PLANNER_MODEL,
            "--critic-base-url", chat_server.base_url, "--critic-model", demo_script.CRITIC_MODEL,
            "--generator-model", str(tiny_pipeline), "--device", "cpu", "--dtype", "float32",
            "--width", "128", "--height", "128", "--num-inference-steps", "2"]


def test_prompts_to_runs_to_scores_to_datasets(tmp_path, runs_dir, teacher_settings, capsys):
    import datasets

    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"id": f"r{n}", "request": r}) for n, r in enumerate(REQUESTS)]
    lines.insert(1, '{"id": "broken", "request": ')  # malformed: reported, skipped
    prompts.write_text("\n".join(lines) + "\n")

    code = main(["--runs-dir", runs_dir, "datagen", "run", "--prompts", str(prompts), "--name", "t",
                 "--concurrency", "2", *teacher_settings])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "skipped:" in err and "line 2" in err
    assert "batch t: 3 finished" in out

    # Which attempt made which image: the rejected first try of step 2 scores low, the rest high.
    documents = [json.loads((Path(runs_dir) / f"t-r{n}" / "document.json").read_text()) for n in range(3)]
    low = {d["steps"][1]["attempts"][0]["image"]["sha256"] for d in documents}
    assert all(len(d["steps"][1]["attempts"]) == 2 for d in documents)

    def judge(body):
        after = image_hashes(body)[-1]
        score = 3 if after in low else 9
        return f'Looks as it does.<answer>{{"scores": [{score}, {score}], "reasoning": "ok"}}</answer>'

    with ScriptedChatServer(judge) as judge_server:
        score = ["--runs-dir", runs_dir, "datagen", "score", "--batch", "t", "--judge-base-url",
                 judge_server.base_url, "--judge-model", "scripted-judge"]
        assert main(score) == 0
        out, _ = capsys.readouterr()
        assert "attempts 12: 0 scored before, 12 scored now" in out
        asked = len(judge_server.requests)
        assert asked == 12 * 2  # SC and PQ per attempt
        assert {count_images(r) for r in judge_server.requests} == {1, 2}
        assert main(score) == 0  # again: nothing new is asked
        assert len(judge_server.requests) == asked
        assert "12 scored before, 0 scored now" in capsys.readouterr()[0]

    target = tmp_path / "datasets"
    assert main(["--runs-dir", runs_dir, "datagen", "export", "--batch", "t", "--out", str(target),
                 "--judge-model", "scripted-judge"]) == 0
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
    code = main(["--runs-dir", runs_dir, "datagen", "export", "--out", str(tmp_path / "d"),
                 "--judge-model", "j"])
    assert code == 2
    assert "run `interleave datagen run` first" in capsys.readouterr()[1]
