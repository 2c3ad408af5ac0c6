"""UEval (unified text + image answers, rubric-judged) on the interleaved graph.

What was checked against the public sources, and where:

* Submission format ``[{"id", "text_answer", "image_answer": [paths]}]``, ids matched as
  strings: the README of the official code (read in the repo zlab-princeton/UEval_Benchmark,
  which links the paper arXiv 2601.22155 and huggingface.co/datasets/zlab-princeton/UEval) and
  a public copy of its ``ueval_eval.py`` (the search index did not name the copy's repository).
* Items: ``id``, ``prompt``, ``task`` (``ueval_eval.py`` reads ``task``; the dataset card of
  huggingface.co/datasets/primerL/UEval names it ``task_type`` and adds ``question_type``),
  ``text_rubrics`` / ``image_rubrics`` as lists of ``{"criterion", "tags"[, "type"]}``. Both task
  spellings are accepted; extra fields (``text_ref``, ``image_ref``) are ignored.
* Protocol of ``ueval_eval.py``: one judge request per rubric item; text rubrics see the question
  and the text answer; image rubrics of open tasks (art, life, tech, exercise; also any unknown
  task) see the images, the question and the text answer; closed tasks (space, textbook,
  diagram, paper) see the images and the question only. The judge answers
  ``criteria_met: true | false | "not sure"``; only true counts as met ("not sure" and any other
  value count as not met). Per item ``text_rate = met / total`` and ``image_rate`` likewise
  (None when the item has no rubric of that kind); ``text_avg_rate`` / ``image_avg_rate`` are
  means over the items that have one. Judge in the paper: gemini-2.5-pro.
* The README's summary example gives ``overall_avg_rate`` as the mean of the two averages, and
  its results table's "Avg" column equals the mean of the eight per-task columns (checked on
  GPT-5-Thinking and Gemini-2.5-Flash rows). NOT verified: how a per-task column combines text
  and image rates; here a task's score is the mean of its text and image averages, like the
  overall (an lmms-eval port of UEval likewise scores an item as (text + image) / 2 and
  macro-averages over tasks, but it is not the authors' code). The report gives ``overall``
  (mean of the two averages over all items) and ``task_avg`` (mean of per-task scores, the paper's "Avg"), in percent.

Our own choices, documented: the judge prompts are our wording of the protocol and ask for an
``<answer>{...}</answer>`` object; the text answer of a graph run is its steps' texts in order
("Step N: name" + text) and its images every generated step's image; the bare generator answers
with one image and no text. An item with no generated image fails every image rubric without a
judge request (the official judge would be shown no image). A rubric whose reply cannot be read
after the retries makes that item's rate of that kind None (excluded from the averages, counted
in the report as a failure); the other kind still counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.benchmarks.common import (Benchmark, DataFormatError, Item, Question, image_path, need,
                                     read_records, unique_ids)
from tools.replies.parsing import ReplyParseError, read_answer

PROMPT_VERSION = "ueval-v1"
OPEN_TASKS = ("art", "life", "tech", "exercise")
CLOSED_TASKS = ("space", "textbook", "diagram", "paper")
EXPECTED = ("id, prompt, task (or task_type), text_rubrics and image_rubrics (lists of "
            "{\"criterion\": text}), as in primerL/UEval-all exported to JSON/JSONL")
_TRUE, _FALSE = {"true", "yes", "y", "1", "met"}, {"false", "no", "n", "0", "not met"}
_UNSURE = {"not sure", "unsure", "unknown", "uncertain"}

SYSTEM = ("You check answers to multimodal requests against one rubric item at a time. You judge "
          "only the item you are given, strictly: an item is met only when the answer fully "
          "satisfies it. You answer in the exact format you are asked for.")

_REPLY = ("\nThink it through briefly, then end your reply with exactly one answer block:\n"
          '<answer>{"criteria_met": true, "explanation": "one sentence"}</answer>\n'
          'where criteria_met is true, false, or "not sure" (only when the answer gives too '
          "little to decide).")

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


def criteria_met(text: str) -> bool | str:
    """Read a rubric verdict: True, False or "not sure". Raises ReplyParseError otherwise.

    >>> criteria_met('ok <answer>{"criteria_met": "Not sure", "explanation": "blurry"}</answer>')
    'not sure'
    >>> criteria_met("<answer>{'criteria_met': True}</answer>")
    True
    """
    _, answer = read_answer(text, "criteria_met")
    value = answer.get("criteria_met")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        if lowered in _UNSURE:
            return "not sure"
    raise ReplyParseError(f'criteria_met must be true, false or "not sure", got {value!r:.40}',
                          text, "schema")


def _rubrics(record: dict[str, Any], key: str, where: str) -> list[str]:
    criteria = []
    for index, rubric in enumerate(record[key]):
        text = rubric.get("criterion") if isinstance(rubric, dict) else rubric
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: {key}[{index}] must be {{\"criterion\": text}} or a "
                                  f"text, got {rubric!r:.60}. Expected items with {EXPECTED}")
        criteria.append(text.strip())
    return criteria


def load(path: Path, images_root: Path | None = None) -> list[Item]:
    items = []
    for where, record in read_records(path):
        need(record, {"id": (str, int), "prompt": str, "text_rubrics": list, "image_rubrics": list},
             where, EXPECTED)
        task = record.get("task", record.get("task_type"))
        if not isinstance(task, str) or not task.strip():
            raise DataFormatError(f"{where}: task (or task_type) is missing. Expected items with "
                                  f"{EXPECTED}")
        kind = record.get("question_type") or question_type(task)
        items.append(Item(str(record["id"]), task.strip().lower(), {
            "prompt": record["prompt"], "question_type": kind,
            "text_rubrics": _rubrics(record, "text_rubrics", where),
            "image_rubrics": _rubrics(record, "image_rubrics", where)}))
    return unique_ids(items)


def request(item: Item) -> tuple[str, list[str]]:
    return item.record["prompt"], []


def bare_request(item: Item) -> tuple[str, str | None]:
    return item.record["prompt"], None


def pick(item: Item, document: dict[str, Any]) -> dict[str, Any]:
    """The answer of a run: its steps' texts in order and every generated step's image."""
    steps = [s for s in document["steps"] if not s.get("given")]
    text = "\n\n".join(f"Step {s['step_number']}: {s['step_name']}\n{s['text']}".strip()
                       for s in steps if s["text"].strip())
    images = [s["image"] for s in steps if s["image"] and s["attempts"]]
    return {"text": text, "images": images, "inputs": []}


def questions(item: Item, output: dict[str, Any], store: Any = None) -> list[Question]:
    prompt, answer = item.record["prompt"], output["text"] or "(no text answer)"
    asked = [Question(f"text:{i}", _TEXT.format(prompt=prompt, answer=answer, criterion=c) + _REPLY,
                      (), criteria_met)
             for i, c in enumerate(item.record["text_rubrics"])]
    if output["images"]:
        closed = item.record["question_type"] == "closed"
        for i, criterion in enumerate(item.record["image_rubrics"]):
            body = (_IMAGE_CLOSED.format(prompt=prompt, criterion=criterion) if closed else
                    _IMAGE_OPEN.format(prompt=prompt, answer=answer, criterion=criterion))
            asked.append(Question(f"image:{i}", body + _REPLY, tuple(output["images"]),
                                  criteria_met))
    return asked


def _rate(answers: list[dict[str, Any]], total: int, kind: str,
          failures: list[dict[str, Any]]) -> tuple[float | None, int]:
    failed = [a for a in answers if a["error"] is not None]
    for number, answer in enumerate(answers):
        if answer["error"] is not None:
            failures.append({"question": f"{kind}:{number}", "reason": answer["reason"],
                             "error": answer["error"]})
    if total == 0 or failed:
        return None, 0
    met = sum(a["value"] is True for a in answers)
    return met / total, met


def score(item: Item, output: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-item text and image rates (fractions; see the module docstring for failures)."""
    texts, images = item.record["text_rubrics"], item.record["image_rubrics"]
    failures: list[dict[str, Any]] = []
    text_rate, text_met = _rate(answers[:len(texts)], len(texts), "text", failures)
    if output["images"]:
        image_rate, image_met = _rate(answers[len(texts):], len(images), "image", failures)
    else:  # nothing to show the judge: every image rubric is unmet
        image_rate, image_met = (0.0 if images else None), 0
    rates = [r for r in (text_rate, image_rate) if r is not None]
    judged = [a for a in answers if a["error"] is None]
    status = "scored" if not failures else "partial" if rates else "judge_failed"
    return {"status": status,
            "scores": {"text_rate": text_rate, "image_rate": image_rate,
                       "score": sum(rates) / len(rates) if rates else None,
                       "text_met": text_met, "text_total": len(texts), "image_met": image_met,
                       "image_total": len(images),
                       "not_sure": sum(a["value"] == "not sure" for a in judged)},
            "failures": failures,
            "error": "; ".join(f"{f['question']}: [{f['reason']}] {f['error']}"
                               for f in failures) or None}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rates(results: list[dict[str, Any]]) -> dict[str, Any]:
    text = _mean([r["scores"]["text_rate"] for r in results if r["scores"]["text_rate"] is not None])
    image = _mean([r["scores"]["image_rate"] for r in results
                   if r["scores"]["image_rate"] is not None])
    both = [v for v in (text, image) if v is not None]
    pct = (lambda v: None if v is None else 100 * v)
    return {"overall": pct(_mean(both)), "text_avg_rate": pct(text), "image_avg_rate": pct(image),
            "items": len(results)}


def summarize(scored: list[tuple[Item, dict[str, Any]]]) -> dict[str, Any]:
    """Averages in percent: overall, per task, and the mean over tasks (the paper's Avg)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for item, result in scored:
        by_task.setdefault(item.category, []).append(result)
    order = [t for t in CLOSED_TASKS + OPEN_TASKS if t in by_task] + sorted(
        set(by_task) - set(CLOSED_TASKS + OPEN_TASKS))
    tasks = {task: _rates(by_task[task]) for task in order}
    overall = _rates([result for _, result in scored])
    task_scores = [t["overall"] for t in tasks.values() if t["overall"] is not None]
    return {"headline": {**overall, "task_avg": _mean(task_scores)}, "by_category": tasks}


def export(out_dir: Path, config: str, outputs: list[tuple[Item, dict[str, Any]]],
           runs_dir: Path) -> Path:
    """The official submission file: [{id, text_answer, image_answer: [absolute paths]}]."""
    path = out_dir / f"submission-{config}.json"
    rows = [{"id": item.id, "text_answer": output["text"],
             "image_answer": [image_path(runs_dir, ref) for ref in output["images"]]}
            for item, output in outputs]
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


BENCHMARK = Benchmark(
    name="ueval", prompt_version=PROMPT_VERSION, judge_system=SYSTEM, load=load, request=request,
    bare_request=bare_request, pick=pick, questions=questions, score=score, summarize=summarize,
    headline=("overall", "task_avg", "text_avg_rate", "image_avg_rate"), export=export)
