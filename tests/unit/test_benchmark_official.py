"""Reading judge prompts from a local copy of an official repository (``evals.benchmarks.official``):
small fake repositories with the official file layout (our own texts), the texts that reach the
judge, and the errors a user sees for a folder that is not a usable copy."""

from pathlib import Path

import pytest

from evals.benchmarks import ueval, wise
from evals.benchmarks.data import Item
from evals.benchmarks.official import OfficialRepoError, messages_template

FAKE_UEVAL = '''
SYSTEM_INSTRUCTION = """
Fake system.
""".strip()
TEXT_TEMPLATE = """Q: <<question>>
A: <<text_answer>>""".strip()
TEXT_RUBRIC_TEMPLATE = "# Rubric\\n<<rubric_item>>"
IMAGE_TEMPLATE_OPEN = "Open Q: <<question>> A: <<text_answer>>"
IMAGE_TEMPLATE_CLOSED = "Closed Q: <<question>>"
IMAGE_RUBRIC_TEMPLATE = "# Image rubric\\n<<rubric_item>>"
NOT_A_PROMPT = 3
'''


def fake_ueval(root: Path, text: str = FAKE_UEVAL) -> Path:
    root.mkdir()
    (root / "ueval_eval.py").write_text(text)
    return root


def test_ueval_questions_use_the_official_texts_when_a_repo_is_given(tmp_path):
    bench = ueval.benchmark(fake_ueval(tmp_path / "UEval"))
    assert bench.prompt_version.startswith("ueval-official-")
    assert "read from" in bench.protocol["judge_prompt"]
    item = Item(
        "1",
        "space",
        {"prompt": "Why?", "question_type": "closed", "text_rubrics": ["says why"], "image_rubrics": ["shows orbit"]},
    )
    output = {"text": "Because.", "images": [{"sha256": "a" * 64}], "inputs": []}
    text, image = bench.questions(item, output, None)
    assert text.text == "Q: Why?\nA: Because.\n\n# Rubric\nsays why"
    assert image.text == "Closed Q: Why?\n\n# Image rubric\nshows orbit"
    assert text.system == image.system == "Fake system."
    assert image.images == tuple(output["images"]) and text.images == ()


def test_a_repo_missing_a_prompt_is_refused_with_its_name(tmp_path):
    root = fake_ueval(tmp_path / "UEval", FAKE_UEVAL.replace("IMAGE_TEMPLATE_CLOSED", "OTHER"))
    with pytest.raises(OfficialRepoError, match="no string constant IMAGE_TEMPLATE_CLOSED"):
        ueval.benchmark(root)
    with pytest.raises(OfficialRepoError, match="not a copy of zlab-princeton/UEval"):
        ueval.benchmark(tmp_path)
    with pytest.raises(OfficialRepoError, match="is not a folder"):
        ueval.benchmark(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "body, message",
    [
        ("def build_evaluation_messages(p, image):\n    return make(p)\n", "one literal list"),
        ("def other(p, image):\n    return []\n", "no function build_evaluation_messages"),
        (
            "def build_evaluation_messages(p, image):\n    return [{'role': 'user', 'content': "
            "[{'type': 'text', 'text': f'{len(p)}'}]}]\n",
            r"fills in something other than p\[FIELD\]",
        ),
    ],
)
def test_a_messages_function_of_another_shape_is_refused(tmp_path, body, message):
    path = tmp_path / "vllm_eval.py"
    path.write_text(body)
    with pytest.raises(OfficialRepoError, match=message):
        messages_template(path, "build_evaluation_messages")


def test_wise_verified_needs_the_repo_and_its_prompt_files(tmp_path):
    with pytest.raises(OfficialRepoError, match="--wise-repo is required"):
        wise.benchmark(wise.VERIFIED, None)
    (tmp_path / "vllm_eval.py").write_text("x = 1\n")
    with pytest.raises(OfficialRepoError, match="data_verified/cultural_common_sense_verified.json"):
        wise.benchmark(wise.VERIFIED, tmp_path)


def fake_rise(root: Path) -> Path:
    from evals.benchmarks import rise

    root.mkdir()
    lines = [
        f'{name} = """{name.upper()} instruct={{instruct}}"""'
        for name in rise.OFFICIAL_NAMES
        if name not in ("prompt_generation", "prompt_spatial_qual", "prompt_logical_img_wo_q")
    ]
    lines += [
        f'{name} = """{name.upper()} {{not formatted}}"""'
        for name in ("prompt_generation", "prompt_spatial_qual", "prompt_logical_img_wo_q")
    ]
    text = "\n".join(lines).replace(
        "PROMPT_REASONING instruct={instruct}", "PROMPT_REASONING instruct={instruct} ref={reference}"
    )
    (root / "utils.py").write_text(text + "\n")
    return root


def rise_item(tmp_path, category, **flags):
    from PIL import Image

    picture = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    record = {
        "instruction": "melt it",
        "reference": "a puddle",
        "consistency_free": False,
        "reasoning_img": False,
        "reasoning_wo_ins": False,
        "reference_img": None,
    } | flags
    if record["reference_img"]:
        record["reference_img"] = str(picture)
    return Item("x", category, record)


def test_rise_questions_follow_eval_vanilla_with_the_official_texts(tmp_path):
    from evals.benchmarks import rise
    from tools.store.images import ImageStore

    bench = rise.benchmark("2026-04", fake_rise(tmp_path / "RISEBench"))
    assert bench.prompt_version.startswith("rise-official-")
    store = ImageStore(tmp_path / "runs")
    before, after = {"sha256": "b" * 64}, {"sha256": "a" * 64}
    output = {"images": [after], "inputs": [before]}

    causal = bench.questions(rise_item(tmp_path, "causal_reasoning"), output, store)
    assert [q.label for q in causal] == ["consistency", "reasoning", "plausibility"]
    assert causal[0].text == "PROMPT_CONSIST instruct=melt it"
    assert causal[1].text == "PROMPT_REASONING instruct=melt it ref=a puddle"
    assert causal[2].text == "PROMPT_GENERATION {not formatted}"
    assert causal[0].images == (before, after) and causal[1].images == (after,)
    assert all(q.system == "" and q.text_first and q.call == {"max_tokens": 4096} for q in causal)

    spatial = bench.questions(rise_item(tmp_path, "spatial_reasoning", reference_img=True), output, store)
    reference = spatial[1].images[0]
    assert spatial[1].text.startswith("PROMPT_SPATIAL_REF_IMG")
    assert spatial[0].images == (reference, after)  # consistency against the reference image too

    logical = bench.questions(
        rise_item(tmp_path, "logical_reasoning", reference_img=True, reasoning_wo_ins=True, consistency_free=True),
        output,
        store,
    )
    assert [q.label for q in logical] == ["reasoning"]
    assert logical[0].text == "PROMPT_LOGICAL_IMG_WO_Q {not formatted}"
    assert logical[0].parse("Final Score: 1") == 5 and logical[0].parse("**Final Score:** 0") == 1
