"""WISE (world-knowledge text-to-image, WiScore): one image per prompt, with the critic loop.

What was checked against the public sources, and where:

* Prompt files ``data/cultural_common_sense.json``, ``data/spatio-temporal_reasoning.json``,
  ``data/natural_science.json`` of github.com/PKU-YuanGroup/WISE: JSON lists whose items hold
  ``prompt_id`` (int), ``Prompt``, ``Explanation``, ``Subcategory`` (read by its ``gpt_eval.py``)
  and ``Category`` (dataset card of huggingface.co/datasets/Yuwei-Niu/WISE, which also lists
  ``Hint``). ``--data`` takes one file or the folder of all three.
* Judge protocol of ``gpt_eval.py``: one request per image with the prompt and its explanation;
  three scores on 0-2, consistency (how fully the image realises the prompt), realism, aesthetic
  quality; the judge is told to be very strict. Official judge: gpt-4o-2024-05-13 (README).
* ``WiScore = (0.7 consistency + 0.2 realism + 0.1 aesthetic) / 2`` per image, and categories
  by ``prompt_id`` exactly as the repo's ``Calculate.py`` assigns them: CULTURE 1-400,
  TIME 401-567, SPACE 568-700, BIOLOGY 701-800, PHYSICS 801-900, CHEMISTRY 901-1000; a category
  score is the mean WiScore of its images and ``overall = 0.4 culture + 0.167 time +
  0.133 space + 0.1 biology + 0.1 physics + 0.1 chemistry``, computed only when every category
  has scored images (``Calculate.py`` refuses otherwise).

Where we differ on purpose: the official script records an unreadable reply as 999 and folds it
into the mean; here such an item is a judge failure, excluded from every mean and counted in
the report. The judge prompt is our own wording of the protocol, with an ``<answer>{...}</answer>``
reply. The graph is asked for a single image; when the planner still plans several steps, the
last step's image is the answer (the finished result). The bare generator gets the prompt as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evals.benchmarks.common import (Benchmark, DataFormatError, Item, Question, need, read_records,
                                     unique_ids)
from tools.replies.parsing import ReplyParseError, read_answer

PROMPT_VERSION = "wise-v1"
CATEGORIES = (("CULTURE", 1, 400, 0.4), ("TIME", 401, 567, 0.167), ("SPACE", 568, 700, 0.133),
              ("BIOLOGY", 701, 800, 0.1), ("PHYSICS", 801, 900, 0.1),
              ("CHEMISTRY", 901, 1000, 0.1))
DIMENSIONS = ("consistency", "realism", "aesthetic_quality")
EXPECTED = "prompt_id (1-1000), Prompt and Explanation, as in PKU-YuanGroup/WISE data/*.json"

SYSTEM = ("You audit images made by text-to-image models. You are exceptionally strict: the top "
          "score is rare and reserved for images without any flaw, and when in doubt you give the "
          "lower score. You answer in the exact format you are asked for.")

_QUESTION = """The image above was generated from this prompt:
<prompt>
{prompt}
</prompt>
What the prompt refers to, which the image has to show:
<explanation>
{explanation}
</explanation>

Score the image on three criteria, each 0, 1 or 2.
1. consistency: does the image show exactly what the prompt, read with its explanation, asks \
for? 0 = it misses or contradicts the key content; 1 = partly right, some elements missing or \
inaccurate; 2 = every element and nuance is there, unambiguously.
2. realism: 0 = physically implausible, obviously artificial; 1 = believable but with \
noticeable flaws; 2 = indistinguishable from a real photograph, physics, materials and \
spatial relations all correct.
3. aesthetic_quality: 0 = poor composition, unappealing; 1 = acceptable composition and \
colour, nothing more; 2 = outstanding, masterpiece-level composition, palette and style.

Think it through briefly, then end your reply with exactly one answer block:
<answer>{{"consistency": 0, "realism": 0, "aesthetic_quality": 0}}</answer>
with each 0 replaced by your whole-number score."""


def category(prompt_id: int) -> str:
    """The category of a prompt id, as the official Calculate.py assigns it.

    >>> category(1), category(567), category(568), category(1000)
    ('CULTURE', 'TIME', 'SPACE', 'CHEMISTRY')
    """
    for name, first, last, _ in CATEGORIES:
        if first <= prompt_id <= last:
            return name
    raise ValueError(f"prompt_id {prompt_id} is outside 1-1000, so it has no WISE category")


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """The WiScore of one image (0-1) from its three 0-2 scores.

    >>> round(wiscore(2, 1, 0), 6)
    0.8
    """
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


def parse_scores(text: str) -> dict[str, int]:
    """The three 0-2 scores of a reply; anything else raises ReplyParseError.

    >>> parse_scores('<answer>{"consistency": 2, "realism": "1", "aesthetic_quality": 0.0}</answer>')
    {'consistency': 2, 'realism': 1, 'aesthetic_quality': 0}
    """
    _, answer = read_answer(text, "consistency")
    scores = {}
    for name in DIMENSIONS:
        value = answer.get(name)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1, 2):
            raise ReplyParseError(f"{name} must be 0, 1 or 2, got {value!r:.30}", text, "schema")
        scores[name] = int(value)
    return scores


def load(path: Path, images_root: Path | None = None) -> list[Item]:
    items = []
    for where, record in read_records(path):
        need(record, {"prompt_id": int, "Prompt": str, "Explanation": str}, where, EXPECTED)
        try:
            name = category(record["prompt_id"])
        except ValueError as exc:
            raise DataFormatError(f"{where}: {exc}. Expected items with {EXPECTED}") from None
        items.append(Item(str(record["prompt_id"]), name, {
            "prompt": record["Prompt"], "explanation": record["Explanation"],
            "subcategory": record.get("Subcategory")}))
    return unique_ids(items)


def request(item: Item) -> tuple[str, list[str]]:
    return ("Make a single image, in one step, that shows exactly this: "
            + item.record["prompt"]), []


def bare_request(item: Item) -> tuple[str, str | None]:
    return item.record["prompt"], None


def pick(item: Item, document: dict[str, Any]) -> dict[str, Any]:
    made = [s["image"] for s in document["steps"] if s["image"] and s["attempts"]]
    return {"text": "", "images": made[-1:], "inputs": []}


def questions(item: Item, output: dict[str, Any], store: Any = None) -> list[Question]:
    if not output["images"]:
        return []
    text = _QUESTION.format(prompt=item.record["prompt"], explanation=item.record["explanation"])
    return [Question("scores", text, tuple(output["images"]), parse_scores)]


def score(item: Item, output: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    if not answers:
        return {"status": "judge_failed", "scores": {}, "failures": [],
                "error": "the run produced no image"}
    answer = answers[0]
    if answer["error"] is not None:
        return {"status": "judge_failed", "scores": {},
                "failures": [{"question": "scores", "reason": answer["reason"],
                              "error": answer["error"]}],
                "error": f"[{answer['reason']}] {answer['error']}"}
    values = answer["value"]
    return {"status": "scored", "scores": {**values, "wiscore": wiscore(*(values[d] for d in
                                                                            DIMENSIONS))},
            "failures": [], "error": None}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(scored: list[tuple[Item, dict[str, Any]]]) -> dict[str, Any]:
    """Mean WiScore per category and the weighted overall (None until all six have items)."""
    by_category = {}
    for name, *_ in CATEGORIES:
        results = [r["scores"] for item, r in scored if item.category == name]
        if results:
            by_category[name] = {"wiscore": _mean([r["wiscore"] for r in results]),
                                 **{d: _mean([r[d] for r in results]) for d in DIMENSIONS},
                                 "items": len(results)}
    complete = len(by_category) == len(CATEGORIES)
    overall = sum(weight * by_category[name]["wiscore"] for name, _, _, weight in CATEGORIES) \
        if complete else None
    headline = {"overall": overall, **{name.lower(): by_category.get(name, {}).get("wiscore")
                                       for name, *_ in CATEGORIES},
                "items": len(scored)}
    return {"headline": headline, "by_category": by_category}


BENCHMARK = Benchmark(
    name="wise", prompt_version=PROMPT_VERSION, judge_system=SYSTEM, load=load, request=request,
    bare_request=bare_request, pick=pick, questions=questions, score=score, summarize=summarize,
    headline=("overall", "culture", "time", "space", "biology", "physics", "chemistry"))
