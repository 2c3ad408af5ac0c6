"""Rewards for the critic's GRPO stage (SPEC §5): format F, accuracy A, step-wise S and Q.

Followed: zhengdian1/InterleaveThinker at commit 94c7593ad600748444e4b2d5efd888a72a93a6bd,
``train/EasyR1/verl/reward_function/interleave_thinker_reward.py`` (``compute_score`` and the
functions it calls). How a reply is read (pre-processing, answer block, JSON repair, the checks)
is ``training.reward_reader``; this module turns readings into rewards.

The reference's mix ``0.5·F + 0.5·(0.2·A + 0.6·S + 0.2·Q)`` equals ``0.5·F + 0.1·A + 0.3·S + 0.1·Q``.
We hand TRL four reward functions and those four numbers as ``GRPOConfig.reward_weights``
(``REWARD_WEIGHTS``), so the mix is an ordinary config field and TRL logs every component's mean
and spread on its own (``rewards/<name>/mean``).

S and Q, as the reference computes them: for a step the ground truth marks as failed, the step is
regenerated from its origin image (from scratch for a step-1 row) with the rollout's refined
prompt, or with the prompt that made the judged image (``rewritten_prompt``) when the reply's
``refine_prompt`` is empty or missing, with one fixed seed (0) for every rollout; the judge scores
the new image against the plan's prompt (``origin_prompt``) and each score's change against the
judged image's is mapped to [0, 1] (``score_change``). A step the ground truth marks as
successful gets S = Q = 0.5 without regenerating; so does a rollout whose regeneration fails
(the reference's edit-API failure or 70 s timeout).

Our policies, each a named option (``StepwiseRewards`` arguments, ``--regen_seed``,
``--skip_unchanged_prompt``, ``--malformed_reply`` of ``interleave train grpo``), reference
behaviour by default:

* ``seed``: an int (reference: 0) or ``"row"``: the row's own seed, the one that made the judged
  image, so the new image differs from the judged one only by its prompt.
* ``skip_unchanged_prompt``: a prompt equal to the one that made the judged image gets 0.5
  without regenerating. Only with ``seed="row"``: then the regeneration would reproduce the judged
  image, and asking the generator and judge again only adds the judge's noise.
* ``malformed_reply``: ``"regenerate"`` (reference: a reply that fails the format check is
  regenerated like any other, with the rewritten prompt when it has no usable refined one) or
  ``"zero"``: S = Q = 0 for it on a failed step (it proposed nothing, so it should not collect a
  step-wise reward for the data's own prompt; F already says why).

Failures. A generator failure gives 0.5 as in the reference. A judge failure also gives 0.5 for
the half it failed (the reference would raise a KeyError on a failed Gemini call; only its timeout
path gives 0.5). Every such case is counted in the logged metrics (``stepwise/generator_failed``,
``stepwise/judge_failed``) and the completions table instead of being hidden. We do not return
None: TRL 1.16 adds the weighted rewards with ``nansum``, so a None from one of several reward
functions counts as 0 and would punish a rollout for our outage.

Batching (ours; the results do not depend on it): ``StepwiseRewards`` computes S and Q once per
batch and its two methods hand out their half; identical requests (prompt, seed, plan) are made
once; regenerations go to the generator in one call per source image and size, up to
``max_batch`` requests (a klein call can share prompts and seeds, not source images), and each
call's images are judged while the next call generates.

Generator backend: any ``regenerate(requests) -> images`` callable taking the request dicts of
``tools.generator.diffusion.generate_batch`` (in-process: ``functools.partial(generate_batch, pipe)``),
called only from ``StepwiseRewards._generate``. A remote backend needs an endpoint that takes a
list of such requests with the source image sent as PNG bytes and returns the images in order (an
error fails the whole call, which is counted as generator failures of its rollouts), and a client
callable with the same signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from training.reward_reader import read

logger = logging.getLogger(__name__)

#: TRL ``reward_weights`` for [format, accuracy, semantics, quality]:
#: 0.5·F + 0.5·(0.2·A + 0.6·S + 0.2·Q).
REWARD_WEIGHTS = (0.5, 0.5 * 0.2, 0.5 * 0.6, 0.5 * 0.2)
NEUTRAL = 0.5
#: The reference's regeneration seed (``"seed": 0`` for every rollout in ``compute_score``).
REFERENCE_SEED = 0
#: ``malformed_reply`` policies: the reference's, and ours.
MALFORMED_POLICIES = ("regenerate", "zero")
#: Every status a rollout's step-wise reward can end in (logged as ``stepwise/<status>``).
STATUSES = ("regenerated", "generator_failed", "judge_failed", "malformed", "unchanged", "gt_success")
#: Columns whose values change S and Q (the batch cache keys on all of them).
RESULT_COLUMNS = (
    "success",
    "semantics",
    "quality",
    "origin_prompt",
    "rewritten_prompt",
    "from_scratch",
    "seed",
    "width",
    "height",
)


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


def format_reward(completions: list, **columns: Any) -> list[float]:
    """F: 1 when the reply passes the reference's format check (``reward_reader``, step 3), else 0.

    >>> format_reward(['<think>ok</think><answer>{"previous_step_success": false, '
    ...                '"refine_prompt": "a red cup"}</answer>',
    ...                '<answer>{"previous_step_success": "false", "refine_prompt": "a red cup"}</answer>',
    ...                '{"previous_step_success": true, "refine_prompt": ""}'])
    [1.0, 0.0, 0.0]
    """
    return [float(read(completion_text(c)).format_ok) for c in completions]


def accuracy_reward(completions: list, success: Sequence[bool], **columns: Any) -> list[float]:
    """A: 1 when the answer's boolean ``previous_step_success`` equals the ground truth
    ``success`` (``reward_reader``, step 4; no ``<answer>`` tags, no A).

    >>> accuracy_reward(['<answer>{"previous_step_success": true}</answer>',
    ...                  '<answer>{"previous_step_success": true, "refine_prompt": ""}</answer>',
    ...                  '{"previous_step_success": false}'], success=[True, False, False])
    [1.0, 0.0, 0.0]
    """
    rewards = []
    for completion, truth in zip(completions, success, strict=True):
        verdict = read(completion_text(completion)).success
        rewards.append(float(verdict is not None and verdict == bool(truth)))
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


def parse_seed(value: int | str) -> int | str:
    """A regeneration seed setting: an int (the reference: 0) or "row" (the row's own seed).

    >>> parse_seed("0"), parse_seed(42), parse_seed("row")
    (0, 42, 'row')
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text == "row":
        return "row"
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"regeneration seed {value!r}: pass an integer (the reference uses "
            f"{REFERENCE_SEED}) or 'row' (each row's own seed)"
        ) from None


def check_policies(seed: int | str, skip_unchanged_prompt: bool, malformed_reply: str) -> int | str:
    """Check the step-wise policies together (before any model is loaded); returns the seed.

    >>> check_policies("row", True, "zero")
    'row'
    >>> check_policies(0, True, "regenerate")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: skip_unchanged_prompt needs the row's seed (got seed 0): ...
    """
    seed = parse_seed(seed)
    if malformed_reply not in MALFORMED_POLICIES:
        raise ValueError(f"malformed_reply {malformed_reply!r}: choose one of {', '.join(MALFORMED_POLICIES)}")
    if skip_unchanged_prompt and seed != "row":
        raise ValueError(
            f"skip_unchanged_prompt needs the row's seed (got seed {seed!r}): only with the "
            f"judged image's own seed would an unchanged prompt reproduce that image; "
            f"pass --regen_seed row, or --skip_unchanged_prompt false"
        )
    return seed


class StepwiseRewards:
    """S and Q as two async TRL reward functions sharing one regeneration and judgment per batch.

    ``regenerate``: a batched generator backend (see the module docstring). ``judge``: an
    ``tools.judge.judge.Judge`` (used for ``judge.store.put`` and ``judge.judge_many``). ``steps`` and
    ``guidance`` are the generator settings (klein: 4 and 1.0, the reference's ``get_model_config``).
    ``seed``, ``skip_unchanged_prompt`` and ``malformed_reply``: the policies of the module
    docstring (defaults: the reference's). ``totals`` counts outcomes over the whole run.

    >>> rewards = StepwiseRewards(regenerate=None, judge=None)
    >>> asyncio.run(rewards.semantics_reward(["anything"], success=[True]))
    [0.5]
    """

    def __init__(
        self,
        regenerate: Callable[[list[dict]], list[Any]] | None,
        judge: Any,
        *,
        steps: int = 4,
        guidance: float = 1.0,
        max_batch: int = 8,
        seed: int | str = REFERENCE_SEED,
        skip_unchanged_prompt: bool = False,
        malformed_reply: str = "regenerate",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        self.seed = check_policies(seed, skip_unchanged_prompt, malformed_reply)
        self.regenerate = regenerate
        self.judge = judge
        self.steps = steps
        self.guidance = guidance
        self.max_batch = max_batch
        self.skip_unchanged_prompt = skip_unchanged_prompt
        self.malformed_reply = malformed_reply
        self.totals: Counter[str] = Counter()
        self._batch: tuple[tuple, list, asyncio.Future] | None = None

    async def semantics_reward(self, completions: list, **columns: Any) -> list[float]:
        """S: the semantic-consistency change of the regenerated step, in [0, 1]."""
        return [s for s, _ in await self._scores(completions, columns)]

    async def quality_reward(self, completions: list, **columns: Any) -> list[float]:
        """Q: the perceptual-quality change of the regenerated step, in [0, 1]."""
        return [q for _, q in await self._scores(completions, columns)]

    async def _scores(self, completions: list, columns: dict) -> list[tuple[float, float]]:
        """Both rewards of a batch, computed once: the second caller awaits the first's task.

        The batch is recognised by everything that changes its result: the step, the replies,
        every column of ``RESULT_COLUMNS`` (ground truth and judged scores included) and the
        origin images. Images are compared by identity (TRL hands the same objects to every
        reward function of a batch); the previous batch's images are held with its key, so an
        identity cannot be reused by a new image while it is compared against.
        """
        state = columns.get("trainer_state")
        sources = [row[0] if row else None for row in columns.get("images") or ()]
        key = (
            getattr(state, "global_step", None),
            tuple(completion_text(c) for c in completions),
            *(tuple(columns.get(name) or ()) for name in RESULT_COLUMNS),
            tuple(id(image) for image in sources),
        )
        if self._batch is None or self._batch[0] != key:
            self._batch = (key, sources, asyncio.ensure_future(self._compute(completions, columns)))
        return await self._batch[2]

    def _seed(self, row_seed: Any) -> int:
        return int(row_seed) if self.seed == "row" else self.seed

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
            reading = read(text)
            if not reading.format_ok and self.malformed_reply == "zero":
                scores[i], status[i] = (0.0, 0.0), "malformed"
                continue
            # The reference's previous_prompt is the row's rewritten prompt; ours falls back to
            # the plan prompt for a row that has none.
            rewritten = columns["rewritten_prompt"][i] or columns["origin_prompt"][i]
            prompt = reading.regeneration_prompt(rewritten)
            if self.skip_unchanged_prompt and prompt.strip() == rewritten.strip():
                status[i] = "unchanged"
                continue
            scratch = bool(columns["from_scratch"][i])
            origin = (
                None if scratch else _pixels_key(columns["images"][i][0]),
                int(columns["width"][i]),
                int(columns["height"][i]),
            )
            request = (prompt, self._seed(columns["seed"][i]), columns["origin_prompt"][i])
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
                chunk = keys[chunk_start : chunk_start + self.max_batch]
                requests = [
                    dict(
                        prompt=prompt,
                        seed=seed,
                        width=width,
                        height=height,
                        steps=self.steps,
                        guidance=self.guidance,
                        source=source,
                    )
                    for prompt, seed, _ in chunk
                ]
                began = time.perf_counter()
                try:
                    afters = await asyncio.to_thread(self._generate, requests)
                except Exception as exc:  # noqa: BLE001 - any backend error is counted, not raised
                    logger.warning("regeneration of %d image(s) failed: %s: %s", len(chunk), type(exc).__name__, exc)
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
        timings = {
            "regenerate_s": regenerate_s,
            "judge_s": done - judge_start if judge_start else 0.0,
            "judge_wait_s": done - generated,
            "total_s": done - start,
        }
        self._report(counts, timings, status, columns)
        return scores

    def _generate(self, requests: list[dict]) -> list[Any]:
        """One backend call (on a worker thread). The only place the generator is called: another
        backend (e.g. a remote one) is another ``regenerate`` callable, or an override of this."""
        if self.regenerate is None:
            raise RuntimeError("no generator backend was given to StepwiseRewards")
        images = self.regenerate(requests)
        if len(images) != len(requests):
            raise RuntimeError(f"the generator returned {len(images)} images for {len(requests)} requests")
        return images

    async def _store(self, image: Any) -> Any:
        """The image's reference in the judge's store (None for None); PNG encoding on a thread."""
        return None if image is None else await asyncio.to_thread(self.judge.store.put, image)

    async def _judge(self, before: asyncio.Future, afters: list[Any], plans: list[str]) -> list[Any]:
        """Store one call's images (in parallel) and judge them against their plan prompts."""
        stored = await asyncio.gather(before, *(self._store(image) for image in afters), return_exceptions=True)
        failed = next((r for r in stored if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        items = [(stored[0], ref, plan) for ref, plan in zip(stored[1:], plans)]
        return await asyncio.to_thread(self.judge.judge_many, items)

    def _report(self, counts: Counter, timings: dict[str, float], status: list[str], columns: dict) -> None:
        self.totals.update(counts)
        for name, seconds in timings.items():
            self.totals[name] += seconds
        log_metric = columns.get("log_metric")
        if log_metric is not None:
            for name in ("regenerations", *STATUSES):
                log_metric(f"stepwise/{name}", float(counts[name]))
            for name, seconds in timings.items():
                log_metric(f"stepwise/{name}", seconds)
        log_extra = columns.get("log_extra")
        if log_extra is not None:
            log_extra("stepwise", status)
        if counts["generator_failed"] or counts["judge_failed"]:
            logger.warning(
                "step-wise reward: %d rollout(s) with a generator failure and %d with a "
                "judge failure got the neutral %.1f",
                counts["generator_failed"],
                counts["judge_failed"],
                NEUTRAL,
            )
