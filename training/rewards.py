"""Rewards for the critic's GRPO stage (SPEC §5): format F, accuracy A, step-wise S and Q.

The paper's mix ``0.5·F + 0.5·(0.2·A + 0.6·S + 0.2·Q)`` equals ``0.5·F + 0.1·A + 0.3·S + 0.1·Q``.
We hand TRL four reward functions and those four numbers as ``GRPOConfig.reward_weights``
(``REWARD_WEIGHTS``), so the mix is an ordinary config field and TRL logs every component's mean
and spread on its own (``rewards/<name>/mean``).

F and A are plain functions of the reply. S and Q measure what the critic's refined prompt does:
for a step the ground truth marks as failed, the step is regenerated from its origin image with
each rollout's refined prompt (the row's seed for the whole group, so the images differ only by
prompt), the judge scores the new image against the plan's prompt, and the change against the
judged image's scores is mapped to [0, 1] (``score_change``). S and Q come from one regeneration
and one judgment, so ``StepwiseRewards`` computes both once per batch and its two methods hand
out their half. All regenerations of a batch go to the generator together: one call for each
source image and size, up to ``max_batch`` requests (a klein call can share prompts and seeds,
not source images), and each call's images are judged while the next call generates, all
judgments concurrently.

Failure policy. The reference gave 0.5 whenever the generator or judge failed. We keep 0.5 (the
value that means "no change", so an infrastructure failure neither rewards nor punishes the
rollout) but count every such case in the logged metrics (``stepwise/generator_failed``,
``stepwise/judge_failed``) and in the completions table, instead of hiding it. We do not return
None: TRL 1.16 adds the weighted rewards with ``nansum``, so a None from one of several reward
functions counts as 0 and would punish a rollout for our outage. Other cases:

* ground truth "success": S = Q = 0.5 (neutral, as in the paper), nothing is regenerated;
* a reply without a readable verdict, for a failed step: S = Q = 0 (there is no prompt to try;
  F already says why);
* a refined prompt equal to the prompt that made the judged image: S = Q = 0.5 without
  regenerating (same prompt, same seed, same source: it would be the judged image again).

Generator backend: any ``regenerate(requests) -> images`` callable taking the request dicts of
``tools.generator.diffusion.generate_batch`` (in-process: ``functools.partial(generate_batch, pipe)``). A
remote backend needs an endpoint that takes a list of such requests with the source image sent as
PNG bytes and returns the images in order (an error fails the whole call, which is counted as
generator failures of its rollouts), and a client callable with the same signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tools.replies.parsing import ReplyParseError, VerdictParseError, parse_verdict, read_answer

logger = logging.getLogger(__name__)

#: TRL ``reward_weights`` for [format, accuracy, semantics, quality]:
#: 0.5·F + 0.5·(0.2·A + 0.6·S + 0.2·Q).
REWARD_WEIGHTS = (0.5, 0.5 * 0.2, 0.5 * 0.6, 0.5 * 0.2)
NEUTRAL = 0.5
_ANSWER_TAG = re.compile(r"<answer>", re.I)


def completion_text(completion: Any) -> str:
    """The reply text of one completion: a string, or TRL's conversational form (a list of
    messages whose content is a string or a list of text parts).

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if isinstance(part, dict))


def _format_ok(text: str) -> bool:
    if not _ANSWER_TAG.search(text):
        return False
    try:
        parse_verdict(text)
        _, answer = read_answer(text, "previous_step_success")
    except ReplyParseError:
        return False
    return (isinstance(answer.get("previous_step_success"), bool)
            and isinstance(answer.get("refine_prompt"), str))


def format_reward(completions: list, **columns: Any) -> list[float]:
    """F: 1 when the reply has an ``<answer>`` whose object holds a real boolean
    ``previous_step_success`` and a string ``refine_prompt`` (and reads as a verdict), else 0.

    >>> format_reward(['<think>ok</think><answer>{"previous_step_success": false, '
    ...                '"refine_prompt": "a red cup"}</answer>',
    ...                '<answer>{"previous_step_success": "false", "refine_prompt": "a red cup"}</answer>',
    ...                '{"previous_step_success": true, "refine_prompt": ""}'])
    [1.0, 0.0, 0.0]
    """
    return [float(_format_ok(completion_text(c))) for c in completions]


def _verdict(text: str) -> tuple[bool, str] | None:
    try:
        _, success, refine = parse_verdict(text)
    except VerdictParseError:
        return None
    return success, refine


def accuracy_reward(completions: list, success: Sequence[bool], **columns: Any) -> list[float]:
    """A: 1 when the verdict, read as the graph reads it, equals the ground truth ``success``.

    >>> accuracy_reward(['<answer>{"previous_step_success": true, "refine_prompt": ""}</answer>',
    ...                  '<answer>{"previous_step_success": true, "refine_prompt": ""}</answer>',
    ...                  'no verdict'], success=[True, False, False])
    [1.0, 0.0, 0.0]
    """
    rewards = []
    for completion, truth in zip(completions, success, strict=True):
        verdict = _verdict(completion_text(completion))
        rewards.append(float(verdict is not None and verdict[0] == bool(truth)))
    return rewards


def score_change(new: float, old: float) -> float:
    """Map a judge score change on the 0-10 scale to [0, 1]: ``((new - old) / 10 + 1) / 2``.

    >>> score_change(8, 4), score_change(4, 8), score_change(5, 5)
    (0.7, 0.3, 0.5)
    """
    return ((new - old) / 10 + 1) / 2


def _retrieved(future: asyncio.Future) -> None:
    """Mark a future's error as seen (asyncio warns about errors nobody retrieved)."""
    if not future.cancelled():
        future.exception()


def _pixels_key(image: Any) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest() + f"{image.size}{image.mode}"


class StepwiseRewards:
    """S and Q as two async TRL reward functions sharing one regeneration and judgment per batch.

    ``regenerate``: a batched generator backend (see the module docstring). ``judge``: an
    ``tools.judge.judge.Judge`` (used for ``judge.store.put`` and ``judge.judge_many``). ``steps`` and
    ``guidance`` are the generator settings (klein: 4 and 1.0). ``totals`` counts outcomes over
    the whole run.

    >>> rewards = StepwiseRewards(regenerate=None, judge=None)
    >>> asyncio.run(rewards.semantics_reward(["anything"], success=[True]))
    [0.5]
    """

    def __init__(self, regenerate: Callable[[list[dict]], list[Any]] | None, judge: Any, *,
                 steps: int = 4, guidance: float = 1.0, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        self.regenerate = regenerate
        self.judge = judge
        self.steps = steps
        self.guidance = guidance
        self.max_batch = max_batch
        self.totals: Counter[str] = Counter()
        self._batch: tuple[Any, asyncio.Future] | None = None

    async def semantics_reward(self, completions: list, **columns: Any) -> list[float]:
        """S: the semantic-consistency change of the regenerated step, in [0, 1]."""
        return [s for s, _ in await self._scores(completions, columns)]

    async def quality_reward(self, completions: list, **columns: Any) -> list[float]:
        """Q: the perceptual-quality change of the regenerated step, in [0, 1]."""
        return [q for _, q in await self._scores(completions, columns)]

    async def _scores(self, completions: list, columns: dict) -> list[tuple[float, float]]:
        """Both rewards of a batch, computed once: the second caller awaits the first's task."""
        state = columns.get("trainer_state")
        key = (getattr(state, "global_step", None), tuple(completion_text(c) for c in completions),
               tuple(columns.get("origin_prompt") or ()), tuple(columns.get("seed") or ()))
        if self._batch is None or self._batch[0] != key:
            self._batch = (key, asyncio.ensure_future(self._compute(completions, columns)))
        return await self._batch[1]

    async def _compute(self, completions: list, columns: dict) -> list[tuple[float, float]]:
        """1. decide per rollout; 2. regenerate per origin image, batched; 3. judge concurrently,
        each call's images while the next call generates; 4. map the score changes."""
        start = time.perf_counter()
        texts = [completion_text(c) for c in completions]
        scores: list[tuple[float, float]] = [(NEUTRAL, NEUTRAL)] * len(texts)
        status = [""] * len(texts)
        # One generator call serves requests that share the source image and size (seeds may
        # differ); identical (prompt, seed, plan prompt) requests are made once.
        groups: dict[tuple, dict[tuple, list[int]]] = {}  # (source, size) -> request -> rollouts
        for i, text in enumerate(texts):
            if columns["success"][i]:
                status[i] = "gt_success"
                continue
            verdict = _verdict(text)
            if verdict is None:
                scores[i], status[i] = (0.0, 0.0), "unparsed"
                continue
            rewritten = (columns["rewritten_prompt"][i] or columns["origin_prompt"][i]).strip()
            prompt = verdict[1] or rewritten
            if prompt == rewritten:
                status[i] = "unchanged"
                continue
            scratch = bool(columns["from_scratch"][i])
            origin = (None if scratch else _pixels_key(columns["images"][i][0]),
                      int(columns["width"][i]), int(columns["height"][i]))
            request = (prompt, int(columns["seed"][i]), columns["origin_prompt"][i])
            groups.setdefault(origin, {}).setdefault(request, []).append(i)

        judging: list[tuple[asyncio.Future, list[list[int]]]] = []
        regenerations, regenerate_s, judge_start = 0, 0.0, None
        for (source_key, width, height), by_request in groups.items():
            first = next(iter(by_request.values()))[0]
            source = None if source_key is None else columns["images"][first][0]
            before = asyncio.ensure_future(self._store(source))  # while the generator runs
            before.add_done_callback(_retrieved)  # its error is reported by the judge tasks
            keys = list(by_request)
            for chunk_start in range(0, len(keys), self.max_batch):
                chunk = keys[chunk_start:chunk_start + self.max_batch]
                requests = [dict(prompt=prompt, seed=seed, width=width, height=height, steps=self.steps,
                                 guidance=self.guidance, source=source) for prompt, seed, _ in chunk]
                began = time.perf_counter()
                try:
                    afters = await asyncio.to_thread(self._generate, requests)
                except Exception as exc:  # noqa: BLE001 - any backend error is counted, not raised
                    logger.warning("regeneration of %d image(s) failed: %s: %s", len(chunk),
                                   type(exc).__name__, exc)
                    for i in (i for key in chunk for i in by_request[key]):
                        status[i] = "generator_failed"
                    continue
                finally:
                    regenerate_s += time.perf_counter() - began
                regenerations += len(chunk)
                judge_start = judge_start or time.perf_counter()
                task = asyncio.ensure_future(self._judge(before, afters, [plan for _, _, plan in chunk]))
                judging.append((task, [by_request[key] for key in chunk]))
        generated = time.perf_counter()
        for task, rollouts in judging:
            try:
                judgments = await task
            except Exception as exc:  # noqa: BLE001 - e.g. the image store's disk is full
                logger.warning("judging %d image(s) failed: %s: %s", len(rollouts), type(exc).__name__, exc)
                for i in (i for indices in rollouts for i in indices):
                    status[i] = "judge_failed"
                continue
            for indices, judgment in zip(rollouts, judgments):
                for i in indices:
                    s = NEUTRAL if judgment.sc is None else score_change(judgment.sc, columns["semantics"][i])
                    q = NEUTRAL if judgment.pq is None else score_change(judgment.pq, columns["quality"][i])
                    scores[i] = (s, q)
                    status[i] = "regenerated" if judgment.ok else "judge_failed"
        done = time.perf_counter()
        counts = Counter(status)
        counts["regenerations"] = regenerations
        timings = {"regenerate_s": regenerate_s,
                   "judge_s": done - judge_start if judge_start else 0.0,
                   "judge_wait_s": done - generated, "total_s": done - start}
        self._report(counts, timings, status, columns)
        return scores

    def _generate(self, requests: list[dict]) -> list[Any]:
        """One backend call (on a worker thread)."""
        if self.regenerate is None:
            raise RuntimeError("no generator backend was given to StepwiseRewards")
        images = self.regenerate(requests)
        if len(images) != len(requests):
            raise RuntimeError(f"the generator returned {len(images)} images for {len(requests)} "
                               f"requests")
        return images

    async def _store(self, image: Any) -> Any:
        """The image's reference in the judge's store (None for None); PNG encoding on a thread."""
        return None if image is None else await asyncio.to_thread(self.judge.store.put, image)

    async def _judge(self, before: asyncio.Future, afters: list[Any], plans: list[str]) -> list[Any]:
        """Store one call's images (in parallel) and judge them against their plan prompts."""
        stored = await asyncio.gather(before, *(self._store(image) for image in afters),
                                      return_exceptions=True)
        failed = next((r for r in stored if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        items = [(stored[0], ref, plan) for ref, plan in zip(stored[1:], plans)]
        return await asyncio.to_thread(self.judge.judge_many, items)

    def _report(self, counts: Counter, timings: dict[str, float], status: list[str],
                columns: dict) -> None:
        self.totals.update(counts)
        for name, seconds in timings.items():
            self.totals[name] += seconds
        log_metric = columns.get("log_metric")
        if log_metric is not None:
            for name in ("regenerations", "regenerated", "generator_failed", "judge_failed",
                         "unparsed", "unchanged", "gt_success"):
                log_metric(f"stepwise/{name}", float(counts[name]))
            for name, seconds in timings.items():
                log_metric(f"stepwise/{name}", seconds)
        log_extra = columns.get("log_extra")
        if log_extra is not None:
            log_extra("stepwise", status)
        if counts["generator_failed"] or counts["judge_failed"]:
            logger.warning("step-wise reward: %d rollout(s) with a generator failure and %d with a "
                           "judge failure got the neutral %.1f", counts["generator_failed"],
                           counts["judge_failed"], NEUTRAL)
