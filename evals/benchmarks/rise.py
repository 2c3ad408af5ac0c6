"""RISEBench (reasoning-informed image editing): one edit per sample, with the critic loop.

What was checked against the public sources, and where (github.com/PhoenixZ810/RISEBench:
README.md, gpt_eval.py, utils.py; sample record quoted from its data/data_total.json):

* Data: a JSON list (``data/data_total.json`` for RISEBench-64; ``datav2_total_w_subtask.json``
  and ``data.zip`` of huggingface.co/datasets/PhoenixZ/RISEBench for the 360 samples) whose items
  hold ``index`` ("temporal_reasoning_1"), ``category`` (temporal_reasoning, causal_reasoning,
  spatial_reasoning, logical_reasoning), ``subtask``, ``instruction``, ``image`` (path relative to
  the data folder) and, depending on the sample, ``reference`` (text), ``reference_img``,
  ``reference_txt``, ``consistency_free``, ``reasoning_img``, ``reasoning_wo_ins``. Image paths
  are resolved against ``--images-root`` (default: the data file's folder).
* Judging (gpt_eval.py ``eval_vanilla``): three requests per sample, each ending in a
  "Final Score": appearance consistency from [input, output] and the instruction (skipped for
  ``consistency_free`` samples), instruction reasoning from the output (plus the input image when
  ``reasoning_img``, or the reference image in its place when ``reference_img``) against the
  reference, and visual plausibility from the output alone (not for logical samples). Scores are
  1-5; logical samples are judged correct/incorrect and mapped 0 -> 1, 1 -> 5. Official judge:
  GPT-4.1 (gpt-4.1-2025-04-14) in the current script, GPT-4o in the paper.
* Score (``calculate_score``): ``0.3 consistency + 0.5 reasoning + 0.2 plausibility``;
  consistency-free: ``0.2 plausibility + 0.8 reasoning``; logical: ``0.3 consistency +
  0.7 reasoning``; when reasoning is 1 the score is halved, floored at 1. Percent = 25 (s - 1).
* Accuracy (``calculate_completion``, the README's headline "Overall (%)"). Followed:
  ``gpt_eval.py`` at commit ce8cba3 (2026-04-13, "Update gpt_eval.py"; the README's news of
  2026-04-23 says every published result was re-scored with the fixed script). A sample counts
  when every dimension that applies is full marks (5): consistency, reasoning and plausibility;
  reasoning and plausibility for a consistency-free sample; consistency and reasoning for
  logical ones. Before ce8cba3 a consistency-free sample had no consistency score (NaN) and so
  could never be accurate; ``--rise-rule pre-2026-04`` reproduces that rule, which the paper's
  numbers were computed with (``accurate``). Accuracy is decided when the report is built, so
  one stored judgment serves both rules.
* Unscorable samples: when ``extract`` finds no "Final Score" in any of a sample's replies, the
  official script gives the sample no dimension scores (NaN): its completion is 0 and it stays
  in the accuracy denominator, while the score and dimension means (pandas ``mean``) skip it.
  Ours: a sample whose judge replies could not be read after the retries (or whose run made no
  image) is counted the same way, and the report's ``unscorable`` column says how many.

Judge prompts: with ``--rise-repo`` the texts of the user's ``utils.py`` (``prompt_consist`` ...
``prompt_logical_img_wo_q``, read at run time by ``evals.benchmarks.official``), asked as
``eval_vanilla`` asks them (which text and which images per category, text before images, no
system message, ``max_tokens`` 4096; a spatial sample with a reference image is judged for
consistency against that image, as the official code does), replies read by ``final_score``.
Without it, our own choices, documented: the prompts are our wording of the official rubrics,
with an ``<answer>{"score": N}</answer>`` reply; a logical sample with ``consistency_free`` (not handled
by the official script) scores its reasoning alone. The graph gets the input image in guidance
mode (``<image>`` + the instruction, asking to continue with one edited image); the first
generated step's image is the answer. The bare generator edits the input image with the
instruction. A sample whose run produced no image, or with a dimension the judge could not be
read on after the retries, is a judge failure: excluded from every mean, counted in the report.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.official import check_repo, module_strings
from evals.benchmarks.data import DataFormatError, Item, data_image, need, read_records, unique_ids
from tools.judge.judge import Question
from tools.store.images import ImageStore
from tools.replies.parsing import ReplyParseError, read_answer

PROMPT_VERSION = "rise-v1"
CURRENT = "2026-04"
RULES = {
    CURRENT: "accuracy as gpt_eval.py computes it since commit ce8cba3 (2026-04-13; all results "
    "re-scored 2026-04-23): a consistency-free sample is accurate when reasoning and "
    "plausibility are 5",
    "pre-2026-04": "accuracy as gpt_eval.py computed it before commit ce8cba3 (the paper's "
    "numbers): a consistency-free sample is never accurate",
}
CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
DIMENSIONS = ("consistency", "reasoning", "plausibility")
EXPECTED = (
    "index, category (temporal_reasoning, causal_reasoning, spatial_reasoning or "
    "logical_reasoning), instruction and image (a path under --images-root), plus "
    "reference, reference_img or reference_txt, as in RISEBench's data_total.json"
)

SYSTEM = (
    "You evaluate images produced by AI image-editing models. You follow the scoring rules "
    "you are given to the letter and answer in the exact format you are asked for."
)

_SCALE = (
    "\nExplain your reasoning step by step, then end your reply with exactly one answer "
    'block:\n<answer>{{"score": N}}</answer>\nwith N a whole number {scale}.'
)
_FIVE, _BINARY = "from 1 to 5", "0 or 1"

_CONSISTENCY = """The first image is the original; the second was made from it by an edit \
following this instruction:
<instruction>
{instruction}
</instruction>
Rate how well the second image keeps everything the instruction did NOT ask to change \
(identity and appearance of people and objects, clothing, background, layout, colours, \
positions, style). Changes the instruction asks for are not inconsistencies.
5 = apart from the requested change, identical; 4 = one minor unrequested difference (a small \
accessory or detail); 3 = one significant unrequested difference (e.g. hair colour, or the \
background); 2 = two or more significant differences; 1 = nearly everything unrelated to the \
instruction differs (another person, another scene)."""

_CONSISTENCY_LOGIC = """The first image shows a puzzle or problem; the second is a model's answer \
drawn onto it, following this instruction:
<instruction>
{instruction}
</instruction>
{answer}Answer 1 if the second image keeps the first image's content, layout and style unchanged \
apart from what solving the task requires, else 0."""

_REASONING = """{instruction}The expected result of the edit, described in words:
<expected>
{reference}
</expected>
{shown} Rate how closely the output matches the expected result, in every detail and degree.
5 = matches completely; 4 = matches with minor discrepancies; 3 = partly matches, some details \
differ or are missing; 2 = important details missing or clearly wrong; 1 = does not follow the \
instruction, unrelated to the expected result."""

_REASONING_IMAGE = """{instruction}The first image is the expected result; the second is a \
model's output. Rate how closely the output reaches the same result (objects, arrangement, \
viewpoint, solution) as the expected image; style differences do not matter.
5 = the same result; 4 = minor discrepancies; 3 = partly the same; 2 = mostly different; \
1 = unrelated."""

_REASONING_LOGIC = """{instruction}The correct answer:
<expected>
{reference}
</expected>
The image is a model's answer. Answer 1 if the image shows exactly this answer, clearly and \
unambiguously, else 0."""

_REASONING_LOGIC_IMAGE = """{instruction}The first image is the correct solution; the second is a \
model's answer. Answer 1 if the answer is the same solution (the same marks in the same \
places), else 0."""

_PLAUSIBILITY = """The image was made by an AI image-editing model. Rate its realism and \
generation quality: sharpness, coherence, natural appearance and physical plausibility.
5 = sharp, coherent, every element realistic and physically plausible; 4 = clear, mostly \
realistic, minor unreal details; 3 = mostly clear, some significant elements unrealistic or \
implausible; 2 = noticeably blurry or with major distortions; 1 = extremely blurry, \
incoherent or unrealistic."""


def _score_reader(binary: bool):
    def parse(text: str) -> int:
        """1-5 (a 0/1 verdict mapped to 1/5); anything else raises ReplyParseError."""
        _, answer = read_answer(text, "score")
        value = answer.get("score")
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        allowed = (0, 1) if binary else (1, 2, 3, 4, 5)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in allowed:
            raise ReplyParseError(f"score must be one of {allowed}, got {value!r:.30}", text, "schema")
        return 4 * int(value) + 1 if binary else int(value)

    return parse


read_five, read_binary = _score_reader(False), _score_reader(True)


def weighted_score(category: str, consistency: int | None, reasoning: int, plausibility: int | None) -> float:
    """The official per-sample score (1-5).

    >>> weighted_score("causal_reasoning", 4, 5, 3), weighted_score("causal_reasoning", None, 1, 5)
    (4.3, 1.0)
    """
    if category == "logical_reasoning":
        score = reasoning if consistency is None else 0.3 * consistency + 0.7 * reasoning
    elif consistency is None:
        score = 0.2 * plausibility + 0.8 * reasoning
    else:
        score = 0.3 * consistency + 0.5 * reasoning + 0.2 * plausibility
    if reasoning == 1:
        score = max(1.0, score * 0.5)
    return round(score, 10)


def _flag(record: dict[str, Any], key: str) -> Any:
    value = record.get(key)
    return None if value in (None, "", False) or value != value else value  # NaN != NaN


def load(path: Path, images_root: Path | None = None) -> list[Item]:
    root = Path(images_root) if images_root else (path if path.is_dir() else path.parent)
    items = []
    for where, record in read_records(path):
        need(record, {"index": (str, int), "category": str, "instruction": str, "image": str}, where, EXPECTED)
        kind = record["category"]
        if kind not in CATEGORIES:
            raise DataFormatError(f"{where}: category {kind!r} is not one of {', '.join(CATEGORIES)}")
        reference_img = _flag(record, "reference_img")
        reference = _flag(record, "reference_txt" if kind == "logical_reasoning" else "reference")
        if reference is None and reference_img is None:
            wanted = "reference_txt" if kind == "logical_reasoning" else "reference"
            raise DataFormatError(
                f"{where}: a {kind} sample needs {wanted} or reference_img. Expected items with {EXPECTED}"
            )
        item_id = str(record["index"])
        items.append(
            Item(
                item_id,
                kind,
                {
                    "instruction": record["instruction"],
                    "image": data_image(root, record["image"], where, item_id, "image"),
                    "reference": reference,
                    "subtask": record.get("subtask"),
                    "reference_img": data_image(root, reference_img, where, item_id, "reference_img")
                    if reference_img
                    else None,
                    "consistency_free": bool(_flag(record, "consistency_free")),
                    "reasoning_img": bool(_flag(record, "reasoning_img")),
                    "reasoning_wo_ins": bool(_flag(record, "reasoning_wo_ins")),
                },
            )
        )
    return unique_ids(items)


def request(item: Item) -> tuple[str, list[str]]:
    return (
        "<image> Continue from this image with exactly one new image, edited from it as "
        "follows: " + item.record["instruction"]
    ), [item.record["image"]]


def bare_request(item: Item) -> tuple[str, str | None]:
    return item.record["instruction"], item.record["image"]


def pick(item: Item, document: dict[str, Any]) -> dict[str, Any]:
    made = [s["image"] for s in document["steps"] if s["image"] and s["attempts"]]
    return {"text": "", "images": made[:1], "inputs": document["input_images"][:1]}


def questions(item: Item, output: dict[str, Any], store: ImageStore) -> list[Question]:
    """consistency (unless consistency-free), reasoning, plausibility (not for logical)."""
    if not output["images"] or not output["inputs"]:
        return []
    rec, after, before = item.record, output["images"][0], output["inputs"][0]
    logical = item.category == "logical_reasoning"
    reference_ref = store.import_file(rec["reference_img"]) if rec["reference_img"] else None
    instruction = rec["instruction"]
    scale, read = (_BINARY, read_binary) if logical else (_FIVE, read_five)
    asked = []
    if not rec["consistency_free"]:
        if logical:
            answer = f"The correct answer: {rec['reference']}\n" if rec["reference"] else ""
            text = _CONSISTENCY_LOGIC.format(instruction=instruction, answer=answer)
            first = reference_ref or before
        else:
            text, first = _CONSISTENCY.format(instruction=instruction), before
        asked.append(Question("consistency", text + _SCALE.format(scale=scale), (first, after), read))
    told = (
        "" if rec["reasoning_wo_ins"] else f"The edit instruction was:\n<instruction>\n{instruction}\n</instruction>\n"
    )
    if reference_ref is not None:
        body = (_REASONING_LOGIC_IMAGE if logical else _REASONING_IMAGE).format(instruction=told)
        shown = (reference_ref, after)
    elif logical:
        body, shown = _REASONING_LOGIC.format(instruction=told, reference=rec["reference"]), (after,)
    else:
        with_input = rec["reasoning_img"]
        body = _REASONING.format(
            instruction=told,
            reference=rec["reference"],
            shown="The first image is the input and the second the model's output."
            if with_input
            else "The image is the model's output.",
        )
        shown = (before, after) if with_input else (after,)
    asked.append(Question("reasoning", body + _SCALE.format(scale=scale), shown, read))
    if not logical:
        asked.append(Question("plausibility", _PLAUSIBILITY + _SCALE.format(scale=_FIVE), (after,), read_five))
    return asked


OFFICIAL_FILE = "utils.py"
OFFICIAL_NAMES = (
    "prompt_consist",
    "prompt_reasoning",
    "prompt_reasoning_w_input",
    "prompt_generation",
    "prompt_spatial_ref",
    "prompt_spatial_ref_img",
    "prompt_spatial_ref_w_input",
    "prompt_spatial_qual",
    "prompt_spatial_cons",
    "prompt_logical_cons_ans",
    "prompt_logical_cons",
    "prompt_logical_txt",
    "prompt_logical_img",
    "prompt_logical_img_wo_q",
)
# gpt_generate's request options (temperature 0 is the judge's own).
OFFICIAL_CALL = {"max_tokens": 4096}
_FINAL = (
    re.compile(r"\*?\*?Final Score\*?\*?:?\s*([\d*\s,\n]*)", re.IGNORECASE),
    re.compile(r"\*?\*?Final Scores\*?\*?:?\s*([\d*\s,\n]*)", re.IGNORECASE),
)


def final_score(text: str) -> int | None:
    """The first number after "Final Score" as gpt_eval.extract finds it (None when none).

    >>> final_score("... **Final Score:** **4**"), final_score("Final Scores: 3"), final_score("5")
    (4, 3, None)
    """
    for pattern in _FINAL:
        for match in pattern.findall(text):
            numbers = re.findall(r"\d+", match.replace("\n", " "))
            if numbers:
                return int(numbers[0])
    return None


def _official_reader(binary: bool):
    def parse(text: str) -> int:
        """A "Final Score" reply: 1-5, or 0/1 mapped by 4 * min(x, 1) + 1 for logical samples."""
        value = final_score(text)
        if value is None:
            raise ReplyParseError("no Final Score in the reply", text, "no_answer")
        if binary:
            return 4 * min(value, 1) + 1
        if value not in (1, 2, 3, 4, 5):
            raise ReplyParseError(f"Final Score {value} is outside 1-5", text, "schema")
        return value

    return parse


def official_questions(
    item: Item, output: dict[str, Any], store: ImageStore, *, texts: dict[str, str]
) -> list[Question]:
    """The questions of gpt_eval.eval_vanilla with the texts of the user's utils.py: text first,
    then the images, no system message."""
    if not output["images"] or not output["inputs"]:
        return []
    rec, after, before = item.record, output["images"][0], output["inputs"][0]
    reference_img = store.import_file(rec["reference_img"]) if rec["reference_img"] else None
    instruct, reference = rec["instruction"], rec["reference"]
    five, binary = _official_reader(False), _official_reader(True)

    def ask(label: str, text: str, images: tuple, parse) -> Question:
        return Question(label, text, images, parse, system="", text_first=True, call=OFFICIAL_CALL)

    kind = item.category
    if kind in ("temporal_reasoning", "causal_reasoning"):
        first = before
        if rec["reasoning_img"]:
            rea = ask(
                "reasoning",
                texts["prompt_reasoning_w_input"].format(instruct=instruct, reference=reference),
                (before, after),
                five,
            )
        else:
            rea = ask(
                "reasoning", texts["prompt_reasoning"].format(instruct=instruct, reference=reference), (after,), five
            )
        cons_text, read, quality = texts["prompt_consist"].format(instruct=instruct), five, texts["prompt_generation"]
    elif kind == "spatial_reasoning":
        first = before
        if reference_img is not None:
            first = reference_img  # eval_vanilla judges consistency against it too
            rea = ask(
                "reasoning", texts["prompt_spatial_ref_img"].format(instruct=instruct), (reference_img, after), five
            )
        elif rec["reasoning_img"]:
            rea = ask(
                "reasoning",
                texts["prompt_spatial_ref_w_input"].format(instruct=instruct, reference=reference),
                (before, after),
                five,
            )
        else:
            rea = ask(
                "reasoning", texts["prompt_spatial_ref"].format(instruct=instruct, reference=reference), (after,), five
            )
        cons_text, read, quality = (
            texts["prompt_spatial_cons"].format(instruct=instruct),
            five,
            texts["prompt_spatial_qual"],
        )
    elif reference_img is None:  # logical, text answer
        first, read, quality = before, binary, None
        cons_text = texts["prompt_logical_cons_ans"].format(instruct=instruct, reference=reference)
        rea = ask(
            "reasoning", texts["prompt_logical_txt"].format(instruct=instruct, reference=reference), (after,), binary
        )
    else:  # logical, reference image
        first, read, quality = reference_img, binary, None
        cons_text = texts["prompt_logical_cons"].format(instruct=instruct)
        rea = ask(
            "reasoning",
            texts["prompt_logical_img_wo_q"]
            if rec["reasoning_wo_ins"]
            else texts["prompt_logical_img"].format(instruct=instruct),
            (reference_img, after),
            binary,
        )
    asked = [] if rec["consistency_free"] else [ask("consistency", cons_text, (first, after), read)]
    asked.append(rea)
    if quality is not None:
        asked.append(ask("plausibility", quality, (after,), five))
    return asked


def score(item: Item, output: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    if not answers:
        return {"status": "judge_failed", "scores": {}, "failures": [], "error": "the run produced no edited image"}
    labels = [
        d
        for d in DIMENSIONS
        if not (d == "consistency" and item.record["consistency_free"])
        and not (d == "plausibility" and item.category == "logical_reasoning")
    ]
    failures = [
        {"question": label, "reason": a["reason"], "error": a["error"]}
        for label, a in zip(labels, answers)
        if a["error"] is not None
    ]
    if failures:
        return {
            "status": "judge_failed",
            "scores": {},
            "failures": failures,
            "error": "; ".join(f"{f['question']}: [{f['reason']}] {f['error']}" for f in failures),
        }
    dims = {d: None for d in DIMENSIONS} | {label: a["value"] for label, a in zip(labels, answers)}
    value = weighted_score(item.category, dims["consistency"], dims["reasoning"], dims["plausibility"])
    # Whether the sample is accurate depends on the scoring rule, so it is decided when the
    # report is built (``accurate``), never stored: one stored judgment serves both rules.
    return {
        "status": "scored",
        "failures": [],
        "error": None,
        "scores": {**dims, "score": value, "consistency_free": item.record["consistency_free"]},
    }


def accurate(category: str, scores: dict[str, Any] | None, rule: str = CURRENT) -> bool:
    """Whether a sample counts as accurate (``calculate_completion`` of gpt_eval.py).

    ``scores`` None is a sample the judge could not score: never accurate, but counted (the
    official script gives it NaN dimensions, and NaN == 5 is false). Rule ``2026-04`` (commit
    ce8cba3): a consistency-free sample needs reasoning and plausibility at 5; rule
    ``pre-2026-04``: its missing consistency is never 5, so it can never be accurate.

    >>> free = {"consistency": None, "reasoning": 5, "plausibility": 5, "consistency_free": True}
    >>> accurate("causal_reasoning", free), accurate("causal_reasoning", free, "pre-2026-04")
    (True, False)
    """
    if rule not in RULES:
        raise ValueError(f"RISEBench rule {rule!r} is not one of {', '.join(RULES)}")
    if scores is None:
        return False
    if category == "logical_reasoning":
        needed = ["reasoning"] if scores["consistency"] is None else ["consistency", "reasoning"]
        if scores["consistency"] is None and rule != CURRENT:
            return False
    elif scores.get("consistency_free") and rule == CURRENT:
        needed = ["reasoning", "plausibility"]
    else:
        needed = list(DIMENSIONS)
    return all(scores[d] == 5 for d in needed)  # None (not judged) is never 5


def _pct(mean: float | None) -> float | None:
    return None if mean is None else 25 * (mean - 1)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _block(samples: list[tuple[str, dict[str, Any] | None]], rule: str) -> dict[str, Any]:
    """Accuracy over every sample, unscorable ones included as not accurate (the official
    denominator); the score and dimension means over the scored samples only (the official
    means skip NaN)."""
    scored = [s for _, s in samples if s is not None]
    dims = {f"{d}_pct": _pct(_mean([r[d] for r in scored if r[d] is not None])) for d in DIMENSIONS}
    return {
        "accuracy": _mean([100.0 * accurate(kind, s, rule) for kind, s in samples]),
        "score_pct": _pct(_mean([r["score"] for r in scored])),
        **dims,
        "items": len(samples),
        "unscorable": len(samples) - len(scored),
    }


def summarize(
    scored: list[tuple[Item, dict[str, Any]]],
    unscorable: list[tuple[Item, dict[str, Any]]] = (),
    *,
    rule: str = CURRENT,
) -> dict[str, Any]:
    """Accuracy and score (percent) overall and per reasoning category, under ``rule``."""
    samples = [(item, r["scores"]) for item, r in scored] + [(item, None) for item, _ in unscorable]
    by_category = {
        kind: _block([(i.category, s) for i, s in samples if i.category == kind], rule)
        for kind in CATEGORIES
        if any(i.category == kind for i, _ in samples)
    }
    overall = _block([(i.category, s) for i, s in samples], rule)
    headline = {**overall, **{kind.split("_")[0]: by_category.get(kind, {}).get("accuracy") for kind in CATEGORIES}}
    return {"headline": headline, "by_category": by_category}


def benchmark(rule: str = CURRENT, repo: str | Path | None = None) -> Benchmark:
    """RISEBench scored under ``rule`` (``2026-04``, the official script since ce8cba3, or
    ``pre-2026-04``, the rule of the paper's numbers); with ``repo`` (the user's clone of
    PhoenixZ810/RISEBench) the judge prompts of its utils.py."""
    if rule not in RULES:
        raise ValueError(f"--rise-rule {rule!r} is not one of {', '.join(RULES)}")
    asking, version, source = questions, PROMPT_VERSION, None
    if repo is not None:
        root = check_repo(repo, "--rise-repo", "PhoenixZ810/RISEBench", (OFFICIAL_FILE,))
        texts = module_strings(root / OFFICIAL_FILE, OFFICIAL_NAMES)
        asking = functools.partial(official_questions, texts=texts)
        digest = hashlib.sha256(repr(sorted(texts.items())).encode()).hexdigest()[:12]
        version, source = f"rise-official-{digest}", f"read from {root / OFFICIAL_FILE}"
    return Benchmark(
        name="rise",
        prompt_version=version,
        judge_system=SYSTEM,
        load=load,
        request=request,
        bare_request=bare_request,
        pick=pick,
        questions=asking,
        score=score,
        summarize=functools.partial(summarize, rule=rule),
        headline=("accuracy", "temporal", "causal", "spatial", "logical", "score_pct", "unscorable"),
        protocol={
            "protocol": "RISEBench",
            "scoring_rule": f"{rule}: {RULES[rule]}",
            "judge_prompts": source
            or "ours (our wording of the official rubrics; pass "
            "--rise-repo to use utils.py's), so scores are "
            "comparable in rule, not in prompt",
            "unscorable": "a sample the judge could not score counts as not accurate in "
            "the accuracy denominator (as gpt_eval.py counts it) and is left "
            "out of the score means; the unscorable column says how many",
        },
    )


BENCHMARK = benchmark()
