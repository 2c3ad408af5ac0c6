"""Teacher trajectories → training datasets: ``interleave datagen export`` (SPEC §5).

Reads the finished runs of a batch (their ``document.json``) and the judge's scores of every
attempt (``training.data.scoring``), and writes three Hugging Face datasets with their images
(``datasets.save_to_disk``), in TRL's conversational prompt/completion shape:

- ``planner_sft``: request [+ input images] → ``<think>`` reasoning + plan. Plus the truncation
  augmentation: a finished sequence cut after step j becomes a guidance-mode request (the
  request and the first j steps' texts and images) whose target is the rest of the plan, numbered
  on from j+1 (``truncations_per_run`` cuts per run, seeded). Not filtered by scores.
- ``critic_sft``: one sample per critic verdict, inputs exactly as at inference
  (``nodes.prompts.critic_user``: the "rewritten prompt" is the prompt that produced the image).
  A step is kept when its attempts show a successful refinement trend (scores rise to an accepted
  attempt), stable high scores (every attempt ≥ ``high_score``) or low variance (std ≤
  ``max_std``); then true and false verdicts are balanced by dropping from the larger side.
- ``critic_rl``: the judged attempts of steps whose scores vary a lot (std ≥ ``rl_min_std``),
  with what the step-wise reward needs: plan prompt, prompt used, before/after images, whether
  the before is a blank canvas, the teacher's verdict as ground truth, the judge's SC and PQ,
  the seed and size.

Every threshold is an option with a default; ``ExportReport`` counts what each filter kept and
dropped, and runs or attempts left out (not finished, not scored) are counted with the reason.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from nodes.prompts import CRITIC_SYSTEM, critic_user, planner_system, planner_user
from tools.replies.contracts import verdict_answer
from tools.store.images import ImageStore, blank_canvas
from training.data.scoring import finished_documents, load_scores

IMAGE = {"type": "image"}


def _option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass
class ExportOptions:
    high_score: float = _option(
        7.0, "critic SFT keeps a step whose attempts all score (overall) at least this: 'stable high'"
    )
    max_std: float = _option(
        0.5, "critic SFT keeps a step whose attempt scores vary (std) at most this: 'low variance'"
    )
    rl_min_std: float = _option(1.5, "critic RL takes steps whose attempt scores vary at least this")
    balance: bool = _option(
        True, "critic SFT: drop samples from the larger side until true and false verdicts are equal"
    )
    truncations_per_run: int = _option(
        1, "planner SFT: extra samples cut from each finished sequence (the rest of the plan as target)"
    )
    seed: int = _option(0, "seed of the truncation points and the balancing")


@dataclass
class ExportReport:
    runs: int = 0
    skipped_runs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> counter -> n

    def add(self, dataset: str, counter: str, n: int = 1) -> None:
        bucket = self.counts.setdefault(dataset, {})
        bucket[counter] = bucket.get(counter, 0) + n

    def lines(self) -> list[str]:
        out = [f"runs read: {self.runs}; left out: {len(self.skipped_runs)}"]
        out += [f"  {run}: {why}" for run, why in sorted(self.skipped_runs.items())[:20]]
        for dataset, counters in self.counts.items():
            out.append(f"{dataset}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
        return out


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _reply(reasoning: str, answer: dict) -> list[dict]:
    text = f"<think>{reasoning}</think><answer>{json.dumps(answer, ensure_ascii=False)}</answer>"
    return [{"role": "assistant", "content": [_text(text)]}]


def _plan_fields(step: dict) -> dict:
    keys = ("step_number", "step_name", "instruction", "prompt", "auxiliary_text")
    return {k: step[k] for k in keys}


def _user_with_images(text: str, image_count: int) -> list[dict]:
    """The user message as the planner node builds it: images where ``<image>`` stands, else after."""
    from nodes.guidance import request_segments

    return [_text(p) if isinstance(p, str) else IMAGE for p in request_segments(text, image_count)]


def planner_samples(document: dict, store: ImageStore, options: ExportOptions, rng: random.Random) -> list[dict]:
    inputs = [store.load(ref) for ref in document["input_images"]]
    planned = [s for s in document["steps"] if not s.get("given")]
    plan = [_plan_fields(s) for s in planned]
    full = {
        "prompt": [
            {"role": "system", "content": [_text(planner_system(guidance=bool(inputs)))]},
            {"role": "user", "content": _user_with_images(planner_user(document["request"]), len(inputs))},
        ],
        "completion": _reply(document["plan_reasoning"], {"execution_plan": plan}),
        "images": inputs,
        "run_id": document["run_id"],
        "kind": "full",
    }
    samples = [full]
    drawn = [s for s in planned if s["image"] is not None and s["prompt"]]
    if document.get("plan_mode", "narrative") != "narrative" or len(drawn) < 2:
        return samples  # truncation needs a drawn sequence of at least two steps
    for cut in rng.sample(range(1, len(drawn)), min(options.truncations_per_run, len(drawn) - 1)):
        given = drawn[:cut]
        context = (
            planner_user(document["request"])
            + "\n"
            + "\n".join(f"Step {s['step_number']}: {s['text']} <image>" for s in given)
        )
        rest = [_plan_fields(s) for s in drawn[cut:]]
        samples.append(
            {
                "prompt": [
                    {"role": "system", "content": [_text(planner_system(guidance=True))]},
                    {"role": "user", "content": _user_with_images(context, len(given))},
                ],
                "completion": _reply(document["plan_reasoning"], {"execution_plan": rest}),
                "images": [store.load(s["image"]) for s in given],
                "run_id": document["run_id"],
                "kind": "truncated",
            }
        )
    return samples


def _before_image(attempt: dict, store: ImageStore) -> Image.Image:
    if attempt["source"] is not None:
        return store.load(attempt["source"])
    return blank_canvas(attempt["image"]["width"], attempt["image"]["height"])


def critic_prompt(step: dict, attempt: dict) -> list[dict]:
    return [
        {"role": "system", "content": [_text(CRITIC_SYSTEM)]},
        {"role": "user", "content": [IMAGE, IMAGE, _text(critic_user(step["prompt"], attempt["prompt"]))]},
    ]


def step_rules(overall: list[float], accepted_by_pass: bool, options: ExportOptions) -> list[str]:
    """Which critic-SFT keep rules a step's attempt scores satisfy.

    >>> step_rules([4.0, 6.5, 8.0], True, ExportOptions())
    ['trend']
    >>> step_rules([8.0, 7.5], False, ExportOptions())
    ['stable_high', 'low_variance']
    """
    rules = []
    rising = all(b >= a for a, b in zip(overall, overall[1:])) and overall[-1] > overall[0]
    if len(overall) >= 2 and rising and accepted_by_pass:
        rules.append("trend")
    if all(score >= options.high_score for score in overall):
        rules.append("stable_high")
    if statistics.pstdev(overall) <= options.max_std:
        rules.append("low_variance")
    return rules


def critic_samples(
    documents: list[dict],
    scores: dict,
    store: ImageStore,
    options: ExportOptions,
    report: ExportReport,
    rng: random.Random,
) -> tuple[list[dict], list[dict]]:
    sft: list[dict] = []
    rl: list[dict] = []
    for document in documents:
        for step in document["steps"]:
            attempts = step["attempts"]
            if not attempts:
                continue
            found = [scores.get((document["run_id"], step["step_number"], a["attempt"])) for a in attempts]
            if any(f is None for f in found):
                report.add("critic_sft", "steps dropped: not scored")
                report.add("critic_rl", "steps dropped: not scored")
                continue
            overall = [f["overall"] for f in found]
            judged = [
                (a, f)
                for a, f in zip(attempts, found)
                if a["verdict"] is not None and a["verdict"]["success"] is not None
            ]
            last = attempts[-1]["verdict"]
            rules = step_rules(overall, bool(last and last["success"]), options)
            for rule in rules:
                report.add("critic_sft", f"steps kept by {rule}")
            if rules:
                for attempt, _ in judged:
                    verdict = attempt["verdict"]
                    answer = verdict_answer(verdict["success"], verdict["refine_prompt"] or attempt["prompt"])
                    sft.append(
                        {
                            "prompt": critic_prompt(step, attempt),
                            "completion": _reply(verdict["reasoning"], answer),
                            "images": [_before_image(attempt, store), store.load(attempt["image"])],
                            "run_id": document["run_id"],
                            "step_number": step["step_number"],
                            "attempt": attempt["attempt"],
                            "verdict": verdict["success"],
                        }
                    )
            else:
                report.add("critic_sft", "steps dropped: no keep rule")
            if len(overall) >= 2 and statistics.pstdev(overall) >= options.rl_min_std:
                report.add("critic_rl", "steps kept: high variance")
                for attempt, score in judged:
                    rl.append(
                        {
                            "prompt": critic_prompt(step, attempt),
                            "images": [_before_image(attempt, store), store.load(attempt["image"])],
                            "origin_prompt": step["prompt"],
                            "rewritten_prompt": attempt["prompt"],
                            "from_scratch": attempt["source"] is None,
                            "success": attempt["verdict"]["success"],
                            "semantics": score["sc"],
                            "quality": score["pq"],
                            "seed": attempt["seed"],
                            "width": attempt["image"]["width"],
                            "height": attempt["image"]["height"],
                            "run_id": document["run_id"],
                            "step_number": step["step_number"],
                            "attempt": attempt["attempt"],
                        }
                    )
            else:
                report.add("critic_rl", "steps dropped: low variance")
    if options.balance and sft:
        positives = [s for s in sft if s["verdict"]]
        negatives = [s for s in sft if not s["verdict"]]
        keep = min(len(positives), len(negatives))
        for side, name in ((positives, "true"), (negatives, "false")):
            if len(side) > keep:
                report.add("critic_sft", f"samples dropped to balance ({name})", len(side) - keep)
        sft = rng.sample(positives, keep) + rng.sample(negatives, keep)
        sft.sort(key=lambda s: (s["run_id"], s["step_number"], s["attempt"]))
    return sft, rl


DATASETS = ("planner_sft", "critic_sft", "critic_rl")


def export(
    runs_dir: str,
    out: str | Path,
    *,
    judge_model: str,
    judge_prompt_version: str,
    batch: str | None = None,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    strict: bool = False,
) -> ExportReport:
    """Write ``planner_sft``, ``critic_sft`` and ``critic_rl`` under ``out``; return the counts.

    Datasets already in ``out`` are never replaced unless ``overwrite``; the check comes before
    anything is written. With ``strict``, an unfinished run or an unscored attempt is an error
    instead of being left out and counted.
    """
    import datasets

    options = options or ExportOptions()
    out = Path(out)
    existing = [name for name in DATASETS if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{out} already holds {', '.join(existing)}; choose another --out or pass --overwrite to replace them"
        )
    rng = random.Random(options.seed)
    documents, skipped = finished_documents(runs_dir, batch)
    report = ExportReport(runs=len(documents), skipped_runs=skipped)
    if strict and skipped:
        listed = "; ".join(f"{run}: {why}" for run, why in sorted(skipped.items())[:10])
        raise ValueError(
            f"{len(skipped)} run(s) cannot be exported ({listed}); finish them "
            f"(`interleave datagen run` again resumes them) or drop --strict"
        )
    if not documents:
        raise ValueError(
            f"no finished runs{f' of batch {batch!r}' if batch else ''} in {runs_dir}; "
            f"run `interleave datagen run` first"
        )
    store = ImageStore(runs_dir)
    scores = load_scores(runs_dir, judge_model, judge_prompt_version)
    planner = [s for d in documents for s in planner_samples(d, store, options, rng)]
    report.add("planner_sft", "samples (full)", sum(s["kind"] == "full" for s in planner))
    report.add("planner_sft", "samples (truncated)", sum(s["kind"] == "truncated" for s in planner))
    if strict:
        unscored = [
            (d["run_id"], s["step_number"], a["attempt"])
            for d in documents
            for s in d["steps"]
            for a in s["attempts"]
            if (d["run_id"], s["step_number"], a["attempt"]) not in scores
        ]
        if unscored:
            raise ValueError(
                f"{len(unscored)} attempt(s) have no score from {judge_model} (first: "
                f"{unscored[0]}); run `interleave datagen score` or drop --strict"
            )
    critic_sft, critic_rl = critic_samples(documents, scores, store, options, report, rng)
    report.add("critic_sft", "samples", len(critic_sft))
    report.add("critic_rl", "samples", len(critic_rl))
    features = {"images": datasets.Sequence(datasets.Image())}
    for name, rows in (("planner_sft", planner), ("critic_sft", critic_sft), ("critic_rl", critic_rl)):
        if not rows:
            report.add(name, "empty: not written")
            continue
        table = datasets.Dataset.from_list(rows)
        table = table.cast_column("images", features["images"])
        staging = out / f".{name}.writing"
        shutil.rmtree(staging, ignore_errors=True)
        table.save_to_disk(str(staging))  # complete before the old one (with --overwrite) goes
        if (out / name).exists():
            shutil.rmtree(out / name)
        staging.rename(out / name)
    return report
