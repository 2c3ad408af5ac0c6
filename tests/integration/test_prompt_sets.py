"""`interleave datagen prompts` against a real OpenAI-compatible server on 127.0.0.1 whose
replies are scripted, and reading prompt files back as `datagen run` will."""

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from tools.doubles.scripted_chat import ScriptedChatServer, message_text
from training.data.prompt_sets import (
    PromptProblem,
    build_prompt_file,
    generate_prompts,
    load_taxonomy,
    main,
    make_parser,
    read_prompt_file,
)

TAXONOMY = """\
domains:
  - id: crafts
    name: Crafts
    description: Making things by hand.
    subcategories:
      - id: kites
        name: Kite making
        description: Building kites that fly.
        examples: ["Show how to build a diamond kite from paper and sticks."]
      - id: finish-sketch
        name: Finish my sketch
        description: The user gives a sketch and wants it finished.
        needs_images: true
  - id: science
    name: Science
    description: How nature works.
    subcategories:
      - id: broken
        name: Moon phases
        description: Why the moon changes shape.
"""

KITE_REPLY = json.dumps(
    {
        "requests": [
            "Show how to build a diamond kite from newspaper, bamboo skewers and tape, in six steps.",
            "show how to build a DIAMOND kite from newspaper, bamboo skewers and tape in six steps!",
            "Show how to build a diamond kite from newspaper, bamboo skewers and some tape, in six steps.",
            "Illustrate making a box kite for a windy beach day.",
            "Teach a child to decorate a kite tail with ribbons.",
        ]
    }
)
SKETCH_REPLY = (
    '```json\n["Here is my sketch of a harbour <image>. Ink it and colour it in three '
    'steps.", "Illustrate making a box kite for a windy beach day"]\n```'
)
MOON_REPLY = '{"requests": ["Explain the phases of the moon in eight pictures."]}'


class Teacher:
    """Scripted teacher: fixed replies per category; the moon category can be switched off."""

    def __init__(self):
        self.moon_broken = True

    def __call__(self, body):
        text = message_text(body["messages"][-1])
        if "Category: Kite making" in text:
            return KITE_REPLY
        if "Category: Finish my sketch" in text:
            assert "<image>" in text  # guidance-mode categories ask for image markers
            return SKETCH_REPLY
        return "Sorry, I would rather talk about the weather." if self.moon_broken else MOON_REPLY


@pytest.fixture
def teacher():
    script = Teacher()
    with ScriptedChatServer(script) as server:
        server.script = script
        yield server


@pytest.fixture
def taxonomy_file(tmp_path):
    path = tmp_path / "taxonomy.yaml"
    path.write_text(TAXONOMY, encoding="utf-8")
    return path


def run_cli(server, taxonomy_file, out, *extra):
    return main(
        [
            "--taxonomy",
            str(taxonomy_file),
            "--out",
            str(out),
            "--per-subcategory",
            "5",
            "--teacher-base-url",
            server.base_url,
            "--teacher-model",
            "teacher-7b",
            "--concurrency",
            "3",
            "--attempts",
            "2",
            "--seed",
            "11",
            *extra,
        ]
    )


def read_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_dedupes_reports_failures_and_resumes(teacher, taxonomy_file, tmp_path, capsys):
    out = tmp_path / "sets" / "prompts.jsonl"
    assert run_cli(teacher, taxonomy_file, out) == 1  # the moon category never parsed

    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["kites-0001", "kites-0002", "kites-0003", "finish-sketch-0001"]
    assert rows[0] == {
        "id": "kites-0001",
        "request": json.loads(KITE_REPLY)["requests"][0],
        "images": [],
        "needs_images": False,
        "domain": "crafts",
        "subcategory": "kites",
    }
    assert rows[3]["needs_images"] is True and rows[3]["images"] == []
    assert "<image>" in rows[3]["request"]
    # one exact and one near duplicate inside kites, one exact across subcategories
    err = capsys.readouterr().err
    assert "[1/3] kites: 3 kept of 5, 2 duplicate(s) dropped" in err
    assert "[2/3] finish-sketch: 1 kept of 2, 1 duplicate(s) dropped" in err
    assert "[3/3] broken: FAILED after 2 attempt(s)" in err
    assert "dropped 2 exact and 1 near duplicate(s)" in err
    assert "no usable teacher reply for 1 subcategories (broken)" in err

    bodies = teacher.requests
    assert len(bodies) == 4  # kites, sketch, and the broken one twice
    broken = [b for b in bodies if "Moon phases" in message_text(b["messages"][-1])]
    assert len({b["seed"] for b in broken}) == 2  # a retry re-samples with another seed
    assert all(b["model"] == "teacher-7b" and b["temperature"] == 1.0 for b in bodies)

    # rerun: complete subcategories are skipped; only the failed one is asked again
    teacher.script.moon_broken = False
    before = out.read_bytes()
    assert run_cli(teacher, taxonomy_file, out) == 0
    assert len(teacher.requests) == 5
    assert out.read_bytes().startswith(before)
    assert [r["id"] for r in read_rows(out)][-1] == "broken-0001"
    assert "2 subcategories skipped as complete" in capsys.readouterr().err

    # everything complete: no HTTP request at all, file unchanged
    after = out.read_bytes()
    assert run_cli(teacher, taxonomy_file, out) == 0
    assert len(teacher.requests) == 5
    assert out.read_bytes() == after
    assert not list(out.parent.glob(".*.tmp"))


def test_output_reads_back_and_flags_rows_still_waiting_for_images(teacher, taxonomy_file, tmp_path):
    out = tmp_path / "prompts.jsonl"
    teacher.script.moon_broken = False
    summary = build_prompt_file(
        load_taxonomy(taxonomy_file), _model(teacher), out, per_subcategory=5, seed=0, max_concurrency=2
    )
    assert (summary.written, summary.failed, summary.dropped_exact, summary.dropped_near) == (5, [], 2, 1)
    rows, problems = read_prompt_file(out)
    assert len(rows) == 4
    assert [(p.line, p.id) for p in problems] == [(4, "finish-sketch-0001")]
    assert "needs input images" in problems[0].message
    rows, problems = read_prompt_file(out, require_images=False)
    assert len(rows) == 5 and problems == []


def test_unreachable_teacher_exits_4_and_writes_nothing(taxonomy_file, tmp_path, capsys):
    out = tmp_path / "prompts.jsonl"
    code = main(
        [
            "--taxonomy",
            str(taxonomy_file),
            "--out",
            str(out),
            "--teacher-base-url",
            "http://127.0.0.1:9/v1",
            "--teacher-model",
            "m",
            "--retries",
            "0",
        ]
    )
    assert code == 4
    assert not out.exists()
    err = capsys.readouterr().err
    assert "teacher model at http://127.0.0.1:9/v1" in err and "--teacher-base-url" in err


def test_bad_taxonomy_and_unreadable_existing_output_exit_2(teacher, taxonomy_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  - id: x\n    name: X\n", encoding="utf-8")
    assert run_cli(teacher, bad, tmp_path / "a.jsonl") == 2
    assert "missing 'description'" in capsys.readouterr().err

    out = tmp_path / "old.jsonl"
    out.write_text('{"id": "a", "request": "Draw a kite."}\nnot json\n', encoding="utf-8")
    assert run_cli(teacher, taxonomy_file, out) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8").endswith("not json\n")
    assert teacher.requests == []


def test_any_langchain_chat_model_can_be_the_teacher(taxonomy_file):
    subs = [s for s in load_taxonomy(taxonomy_file) if s.id == "kites"]
    model = FakeListChatModel(responses=["no list here", KITE_REPLY])
    seen = []
    rows = generate_prompts(
        subs,
        model,
        per_subcategory=5,
        seed=0,
        max_concurrency=1,
        on_progress=seen.append,
        existing=[{"id": "kites-0001", "request": "Teach a child to decorate a kite tail with ribbons."}],
    )
    assert [r["id"] for r in rows] == ["kites-0002", "kites-0003"]  # ids after existing ones
    [result] = seen
    assert (result.attempts, result.received, result.dropped_exact, result.dropped_near) == (2, 5, 2, 1)
    assert "attempt 1" in result.failures[0]


def test_help_explains_every_option():
    text = make_parser().format_help()
    for flag in (
        "--taxonomy",
        "--out",
        "--per-subcategory",
        "--teacher-base-url",
        "--teacher-model",
        "--concurrency",
        "--seed",
        "--attempts",
        "--near-duplicate-threshold",
        "Exit codes",
    ):
        assert flag in text


def _model(server):
    from tools.llm.chat import openai_model

    return openai_model(server.base_url, "EMPTY", "teacher", 1024, 1.0, 10.0, 0)


# --------------------------------------------------------------------------- reading prompt files


def test_each_malformed_line_is_reported_with_its_line_and_id(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    lines = [
        {"id": "ok-1", "request": "Draw a kite.", "domain": "crafts", "subcategory": "kites"},
        "{not json",
        {"id": "no-request"},
        {"id": "blank", "request": "   "},
        {"id": "bad-images", "request": "Draw.", "images": "img/a.png"},
        {"id": "ok-1", "request": "Draw a boat."},
        {"id": "missing-image", "request": "Finish <image>.", "images": ["img/nope.png"]},
        "",
        {
            "id": "ok-2",
            "request": "Finish my sketch <image>.",
            "images": ["img/a.png"],
            "needs_images": True,
            "steps": 3,
        },
        {"id": "waiting", "request": "Continue <image>.", "needs_images": True},
        {"id": "markers", "request": "Compare <image> and <image>.", "images": ["img/a.png"]},
        ["a", "list"],
        {"request": "no id"},
        {"id": "typed", "request": "Draw.", "domain": 3},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(
        b"\n".join(line.encode() if isinstance(line, str) else json.dumps(line).encode() for line in lines)
        + b"\n\xff\xfe broken bytes\n"
    )
    rows, problems = read_prompt_file(path)

    assert [r["id"] for r in rows] == ["ok-1", "ok-2"]
    assert rows[1]["images"] == [str(tmp_path / "img" / "a.png")]
    assert rows[1]["steps"] == 3 and rows[0]["needs_images"] is False
    found = {(p.line, p.id): p.message for p in problems}
    assert list(found) == [
        (2, None),
        (3, "no-request"),
        (4, "blank"),
        (5, "bad-images"),
        (6, "ok-1"),
        (7, "missing-image"),
        (10, "waiting"),
        (11, "markers"),
        (12, None),
        (13, None),
        (14, "typed"),
        (15, None),
    ]
    assert "not valid JSON" in found[(2, None)]
    assert "'request' must be a non-empty string" in found[(3, "no-request")]
    assert "duplicate id; line 1 already uses it" in found[(6, "ok-1")]
    assert "not found" in found[(7, "missing-image")] and "nope.png" in found[(7, "missing-image")]
    assert "needs input images" in found[(10, "waiting")]
    assert "2 <image> marker(s) but 1 image(s)" in found[(11, "markers")]
    assert "expected a JSON object" in found[(12, None)]
    assert "'id' must be a non-empty string" in found[(13, None)]
    assert "'domain' must be a str" in found[(14, "typed")]
    assert "not UTF-8" in found[(15, None)]
    assert str(PromptProblem(6, "ok-1", "x")) == "line 6 (id 'ok-1'): x"


def test_plain_text_files_give_one_request_per_line(tmp_path):
    path = tmp_path / "requests.txt"
    path.write_text(
        "# my requests\nHow do I fold a paper crane?\n\n  Show a frog growing up.  \nFinish my sketch <image>\n",
        encoding="utf-8",
    )
    rows, problems = read_prompt_file(path)
    assert [(r["id"], r["request"]) for r in rows] == [
        ("line-00002", "How do I fold a paper crane?"),
        ("line-00004", "Show a frog growing up."),
    ]
    assert rows[0]["images"] == [] and rows[0]["subcategory"] == ""
    assert [(p.line, p.id) for p in problems] == [(5, "line-00005")]
    assert "plain-text prompt file cannot carry images" in problems[0].message
