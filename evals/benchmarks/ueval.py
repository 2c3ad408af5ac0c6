"""UEval (unified text + image answers, rubric-judged) on the interleaved graph.

Official sources: github.com/zlab-princeton/UEval at commit 3a5b5ea (2026-04-21): README.md and
``ueval_eval.py``; the authors' generation script for InterleaveThinker,
github.com/zhengdian1/InterleaveThinker ``UEval/ueval_klein.py`` at commit 94c7593.

* Submission format ``[{"id", "text_answer", "image_answer": [paths]}]``, ids matched as strings
  (``build_model_lookup``).
* Items: ``id``, ``prompt``, ``task``, ``text_rubrics`` / ``image_rubrics`` (lists of strings
  since f817907; ``{"criterion": ...}`` objects are read too). The open/closed split is decided
  from ``task`` alone, as ``get_question_type_from_task`` does (art, life, tech, exercise and any
  unknown task: open; space, textbook, diagram, paper: closed; an empty task: open); a
  ``question_type`` field in the data is ignored, as the official evaluator ignores it.
  ``task_type`` is accepted as a spelling of ``task`` (the dataset card's name).
* Protocol: one judge request per rubric item; text rubrics see the question and the text
  answer; image rubrics of open tasks see the images, the question and the text answer; closed
  tasks the images and the question only. With ``--ueval-repo`` the judge texts are the
  official ones, read at run time from ``ueval_eval.py`` (``SYSTEM_INSTRUCTION``,
  ``TEXT_TEMPLATE``, ``IMAGE_TEMPLATE_OPEN`` / ``_CLOSED`` and the rubric templates, joined
  with a blank line as its direct-request path joins them); without it, our own wording with an
  ``<answer>{...}</answer>`` reply (the report says which).
* Verdicts (``normalize_criteria_value`` then ``criteria_value_to_bool``): met only for JSON
  ``true`` or a string "true", "yes", "y", "1" (any case, spaces around). Everything else is
  not met and still counts in the rubric total: ``false``, "no", "not sure", "unsure",
  "unknown", ``null``, a missing ``criteria_met``, a number (``1`` is not ``true``), any other
  text. Per item ``rate = met / total`` for text and for image rubrics (None when the item has
  none of that kind, ``compute_score``); ``text_avg_rate`` and ``image_avg_rate`` are means over
  the items that have a rate (``compute_summary``).
* Combined score: the official code has none. The README's summary example gives
  ``overall_avg_rate`` = mean of the two averages (0.82, 0.78 -> 0.80), and its leaderboard's
  "Avg" column is the mean of the eight per-task columns (e.g. Gemini-2.5-Flash: 527.8 / 8 =
  66.0). Ours is defined as that leaderboard's: a task's score is the mean of its text and image
  average rates, ``task_avg`` (the headline) the mean over tasks, in percent; ``overall`` (the
  mean of the two averages over all items) is given beside it. How the paper combines text and
  image within a task column is not in the official code; the mean of the two is our reading.
* The answer of a run is laid out as ``ueval_klein.py`` lays it out: ``text_answer`` is, for
  each planned step in order, its ``auxiliary_text`` when it has one (and it is not "None"),
  else its ``instruction``, concatenated with no separator; ``image_answer`` is every step's
  accepted image. The request is the item's prompt with " both visually and textually" removed,
  as the klein script asks its planner.

Our own choices, documented: a reply with no JSON object is asked again up to ``--judge-retries``
times, then recorded as a failure that makes that item's rate of that kind None (excluded from
the averages, counted in the report; the official script asks up to 500 times and then stops
the whole evaluation). An item with no generated image fails every image rubric without a judge
request (the official judge would be shown no image). The bare generator answers with one image
and no text.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from evals.benchmarks.benchmark import Benchmark, image_path
from evals.benchmarks.official import check_repo, module_strings
from evals.benchmarks.data import DataFormatError, Item, need, read_records, unique_ids
from tools.judge.judge import Question
from tools.replies.parsing import read_answer

PROMPT_VERSION = "ueval-v1"
OPEN_TASKS = ("art", "life", "tech", "exercise")
CLOSED_TASKS = ("space", "textbook", "diagram", "paper")
EXPECTED = (
    "id, prompt, task (or task_type), text_rubrics and image_rubrics (lists of "
    '{"criterion": text}), as in primerL/UEval-all exported to JSON/JSONL'
)
MET = frozenset({"true", "yes", "y", "1"})  # criteria_value_to_bool: the only strings met
OFFICIAL_FILE = "ueval_eval.py"
OFFICIAL_NAMES = (
    "SYSTEM_INSTRUCTION",
    "TEXT_TEMPLATE",
    "TEXT_RUBRIC_TEMPLATE",
    "IMAGE_TEMPLATE_OPEN",
    "IMAGE_TEMPLATE_CLOSED",
    "IMAGE_RUBRIC_TEMPLATE",
)

SYSTEM = (
    "You check answers to multimodal requests against one rubric item at a time. You judge "
    "only the item you are given, strictly: an item is met only when the answer fully "
    "satisfies it. You answer in the exact format you are asked for."
)

_REPLY = (
    "\nThink it through briefly, then end your reply with exactly one answer block:\n"
    '<answer>{"criteria_met": true, "explanation": "one sentence"}</answer>\n'
    'where criteria_met is true, false, or "not sure" (only when the answer gives too '
    "little to decide)."
)

_TEXT = """A model answered the request below with text (and images, which are judged separately).

<request>
{prompt}
</request>

The model's text answer:
<text_answer>
{answer}
</text_answer>

Rubric item:
<rubric>
{criterion}
</rubric>

Is the rubric item fully met by the text answer?"""

_IMAGE_OPEN = """The images above are the images a model generated for the request below, as part \
of an answer that also has the text given here. Judge the images, read together with the text.

<request>
{prompt}
</request>

The model's text answer:
<text_answer>
{answer}
</text_answer>

Rubric item:
<rubric>
{criterion}
</rubric>

Is the rubric item fully met? An image depicts something only if it shows it visually; words \
written inside an image do not count as depicting it. When the item asks an image to match a \
step of the text, showing that step's main action is enough."""

_IMAGE_CLOSED = """The images above are the images a model generated for the request below. \
Judge the images alone.

<request>
{prompt}
</request>

Rubric item:
<rubric>
{criterion}
</rubric>

Is the rubric item fully met? An image depicts something only if it shows it visually; an \
image made only of text, with no visual content, fails every item."""


def question_type(task: str) -> str:
    """Open or closed, as the official evaluator decides it (unknown tasks count as open).

    >>> question_type("Space"), question_type("art"), question_type("cooking")
    ('closed', 'open', 'open')
    """
    return "closed" if task.strip().lower() in CLOSED_TASKS else "open"


def criteria_met(text: str) -> Any:
    """The verdict of a reply, as ``normalize_criteria_value`` leaves it: a bool, a stripped
    string, None (no ``criteria_met``) or any other JSON value. Raises ReplyParseError only for
    a reply with no JSON object (the official script asks again then).

    >>> criteria_met('ok <answer>{"criteria_met": "Not sure", "explanation": "blurry"}</answer>')
    'Not sure'
    >>> criteria_met('```json\\n{"criteria_met": " YES "}\\n```'), criteria_met('{"explanation": "x"}')
    (True, None)
    """
    _, answer = read_answer(text, "criteria_met")
    value = answer.get("criteria_met")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in MET:
            return True
        if lowered in {"false", "no", "n", "0"}:
            return False
        return value.strip()
    return value


def is_met(value: Any) -> bool:
    """``criteria_value_to_bool``: only True (or a string of ``MET``) is met.

    >>> [is_met(v) for v in (True, "y", False, "not sure", None, 1, "maybe")]
    [True, True, False, False, False, False, False]
    """
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in MET


def _rubrics(record: dict[str, Any], key: str, where: str) -> list[str]:
    criteria = []
    for index, rubric in enumerate(record[key]):
        text = rubric.get("criterion") if isinstance(rubric, dict) else rubric
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(
                f'{where}: {key}[{index}] must be {{"criterion": text}} or a '
                f"text, got {rubric!r:.60}. Expected items with {EXPECTED}"
            )
        criteria.append(text.strip())
    return criteria


def load(path: Path, images_root: Path | None = None) -> list[Item]:
    items = []
    for where, record in read_records(path):
        need(record, {"id": (str, int), "prompt": str, "text_rubrics": list, "image_rubrics": list}, where, EXPECTED)
        task = record.get("task", record.get("task_type"))
        if not isinstance(task, str) or not task.strip():
            raise DataFormatError(f"{where}: task (or task_type) is missing. Expected items with {EXPECTED}")
        kind = question_type(task)  # from the task alone, as the official evaluator decides
        items.append(
            Item(
                str(record["id"]),
                task.strip().lower(),
                {
                    "prompt": record["prompt"],
                    "question_type": kind,
                    "text_rubrics": _rubrics(record, "text_rubrics", where),
                    "image_rubrics": _rubrics(record, "image_rubrics", where),
                },
            )
        )
    return unique_ids(items)


def request(item: Item) -> tuple[str, list[str]]:
    """The prompt as ueval_klein.py gives it to its planner."""
    return item.record["prompt"].replace(" both visually and textually", ""), []


def bare_request(item: Item) -> tuple[str, str | None]:
    return item.record["prompt"], None


def klein_text(steps: list[dict[str, Any]]) -> str:
    """The text answer as ueval_klein.py writes it: per step its auxiliary text, else its
    instruction, concatenated.

    >>> klein_text([{"auxiliary_text": "Mix.", "instruction": "x"},
    ...             {"auxiliary_text": "None", "instruction": "Bake."}])
    'Mix.Bake.'
    """
    parts = []
    for step in steps:
        aux = step.get("auxiliary_text")
        parts.append(aux if aux and aux != "None" else step.get("instruction") or "")
    return "".join(parts)


def pick(item: Item, document: dict[str, Any]) -> dict[str, Any]:
    """The answer of a run, laid out as the authors' klein script lays it out."""
    steps = [s for s in document["steps"] if not s.get("given")]
    images = [s["image"] for s in steps if s["image"] and s["attempts"]]
    return {"text": klein_text(steps), "images": images, "inputs": []}


def questions(
    item: Item, output: dict[str, Any], store: Any = None, *, official: dict[str, str] | None = None
) -> list[Question]:
    """One question per rubric; ``official`` holds the texts of ueval_eval.py when read."""
    prompt, answer = item.record["prompt"], output["text"]
    closed = item.record["question_type"] == "closed"
    if official is not None:

        def text_question(criterion: str) -> str:
            context = official["TEXT_TEMPLATE"].replace("<<question>>", prompt).replace("<<text_answer>>", answer or "")
            return context + "\n\n" + official["TEXT_RUBRIC_TEMPLATE"].replace("<<rubric_item>>", criterion)

        def image_question(criterion: str) -> str:
            template = official["IMAGE_TEMPLATE_CLOSED" if closed else "IMAGE_TEMPLATE_OPEN"]
            context = template.replace("<<question>>", prompt).replace("<<text_answer>>", answer or "")
            return context + "\n\n" + official["IMAGE_RUBRIC_TEMPLATE"].replace("<<rubric_item>>", criterion)

        system = official["SYSTEM_INSTRUCTION"]
    else:
        shown = answer or "(no text answer)"

        def text_question(criterion: str) -> str:
            return _TEXT.format(prompt=prompt, answer=shown, criterion=criterion) + _REPLY

        def image_question(criterion: str) -> str:
            return (
                _IMAGE_CLOSED.format(prompt=prompt, criterion=criterion)
                if closed
                else _IMAGE_OPEN.format(prompt=prompt, answer=shown, criterion=criterion)
            ) + _REPLY

        system = None
    asked = [
        Question(f"text:{i}", text_question(c), (), criteria_met, system=system)
        for i, c in enumerate(item.record["text_rubrics"])
    ]
    if output["images"]:
        asked += [
            Question(f"image:{i}", image_question(c), tuple(output["images"]), criteria_met, system=system)
            for i, c in enumerate(item.record["image_rubrics"])
        ]
    return asked


def _rate(
    answers: list[dict[str, Any]], total: int, kind: str, failures: list[dict[str, Any]]
) -> tuple[float | None, int]:
    failed = [a for a in answers if a["error"] is not None]
    for number, answer in enumerate(answers):
        if answer["error"] is not None:
            failures.append({"question": f"{kind}:{number}", "reason": answer["reason"], "error": answer["error"]})
    if total == 0 or failed:
        return None, 0
    met = sum(is_met(a["value"]) for a in answers)
    return met / total, met


def score(item: Item, output: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-item text and image rates (fractions; see the module docstring for failures)."""
    texts, images = item.record["text_rubrics"], item.record["image_rubrics"]
    failures: list[dict[str, Any]] = []
    text_rate, text_met = _rate(answers[: len(texts)], len(texts), "text", failures)
    if output["images"]:
        image_rate, image_met = _rate(answers[len(texts) :], len(images), "image", failures)
    else:  # nothing to show the judge: every image rubric is unmet
        image_rate, image_met = (0.0 if images else None), 0
    rates = [r for r in (text_rate, image_rate) if r is not None]
    judged = [a for a in answers if a["error"] is None]
    status = "scored" if not failures else "partial" if rates else "judge_failed"
    return {
        "status": status,
        "scores": {
            "text_rate": text_rate,
            "image_rate": image_rate,
            "score": sum(rates) / len(rates) if rates else None,
            "text_met": text_met,
            "text_total": len(texts),
            "image_met": image_met,
            "image_total": len(images),
            "not_met_unsure": sum(not isinstance(a["value"], bool) for a in judged),
        },
        "failures": failures,
        "error": "; ".join(f"{f['question']}: [{f['reason']}] {f['error']}" for f in failures) or None,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rates(results: list[dict[str, Any]]) -> dict[str, Any]:
    text = _mean([r["scores"]["text_rate"] for r in results if r["scores"]["text_rate"] is not None])
    image = _mean([r["scores"]["image_rate"] for r in results if r["scores"]["image_rate"] is not None])
    both = [v for v in (text, image) if v is not None]
    pct = lambda v: None if v is None else 100 * v
    return {
        "overall": pct(_mean(both)),
        "text_avg_rate": pct(text),
        "image_avg_rate": pct(image),
        "items": len(results),
    }


def summarize(
    scored: list[tuple[Item, dict[str, Any]]], unscorable: list[tuple[Item, dict[str, Any]]] = ()
) -> dict[str, Any]:
    """Averages in percent: overall, per task, and the mean over tasks (the paper's Avg)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for item, result in scored:
        by_task.setdefault(item.category, []).append(result)
    order = [t for t in CLOSED_TASKS + OPEN_TASKS if t in by_task] + sorted(
        set(by_task) - set(CLOSED_TASKS + OPEN_TASKS)
    )
    tasks = {task: _rates(by_task[task]) for task in order}
    overall = _rates([result for _, result in scored])
    task_scores = [t["overall"] for t in tasks.values() if t["overall"] is not None]
    return {"headline": {**overall, "task_avg": _mean(task_scores)}, "by_category": tasks}


def export(out_dir: Path, config: str, outputs: list[tuple[Item, dict[str, Any]]], runs_dir: Path) -> Path:
    """The official submission file: [{id, text_answer, image_answer: [absolute paths]}]."""
    path = out_dir / f"submission-{config}.json"
    rows = [
        {
            "id": item.id,
            "text_answer": output["text"],
            "image_answer": [image_path(runs_dir, ref) for ref in output["images"]],
        }
        for item, output in outputs
    ]
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def benchmark(repo: str | Path | None = None) -> Benchmark:
    """UEval; with ``repo`` (the user's clone of zlab-princeton/UEval) the official judge texts."""
    official = None
    if repo is not None:
        root = check_repo(repo, "--ueval-repo", "zlab-princeton/UEval", (OFFICIAL_FILE,))
        official = module_strings(root / OFFICIAL_FILE, OFFICIAL_NAMES)
    digest = hashlib.sha256(repr(sorted(official.items())).encode()).hexdigest()[:12] if official else None
    return Benchmark(
        name="ueval",
        prompt_version=f"ueval-official-{digest}" if digest else PROMPT_VERSION,
        judge_system=SYSTEM,
        load=load,
        request=request,
        bare_request=bare_request,
        pick=pick,
        questions=functools.partial(questions, official=official),
        score=score,
        summarize=summarize,
        headline=("task_avg", "overall", "text_avg_rate", "image_avg_rate"),
        export=export,
        protocol={
            "protocol": "UEval rubrics (ueval_eval.py, 3a5b5ea)",
            "judge_prompt": (
                f"read from {root / OFFICIAL_FILE}"
                if official
                else "ours (pass --ueval-repo to use the official texts)"
            ),
            "verdicts": 'met only for true / "true", "yes", "y", "1"; false, '
            '"not sure", null and anything else count as not met',
            "task_avg": "the leaderboard's Avg: mean over tasks of (text avg + image "
            "avg) / 2, in percent; overall: mean of the two averages over all "
            "items (the README's overall_avg_rate)",
            "text_answer": "laid out as ueval_klein.py: each step's auxiliary text, else its instruction, concatenated",
        },
    )


BENCHMARK = benchmark()
