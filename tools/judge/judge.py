"""The judge: the one place a judge model is asked anything (SPEC §5), for data scores, the RL
step-wise reward and the benchmark harnesses alike.

Two ways in, one way out:

* ``Judge.judge(before, after, instruction)``: our SC/PQ scoring. Given a before-image (or None:
  judge from scratch), an after-image and the instruction, two questions in two calls (texts in
  ``tools.judge.prompts``): semantic consistency ``SC = min(edit_success, over_editing)`` from
  [before, after] + instruction, and perceptual quality ``PQ = min(naturalness, artifacts)``
  from the after-image alone; ``overall = sqrt(SC * PQ)``, every score on 0-10 (``scores_from``).
* ``Judge.ask(question)``: any ``Question`` (text, images, how to read the reply, system text,
  request options), which is how a benchmark asks its own rubric or score request.

Both go through one ask loop (``Judge._answer``) and one cache (``tools.judge.cache``).

Why it is built this way:

* Never a made-up score. A reply that cannot be read (the question's ``parse`` raises
  ``ReplyParseError``) is asked again, re-sampled at a higher temperature unless the question
  says otherwise, up to ``retries`` times, and then recorded as a failure with a ``reason``
  code and a message. An unreachable endpoint is a failure with reason ``endpoint``, not an
  exception, so one bad request does not end a batch of thousands.
* Asked once. Every answer, failed ones too, is stored under a key made of everything that
  decides it (images by sha256, texts, request options, judge model and version, prompt
  version). A stored failure is served as it is unless ``retry_failed=True``; a failure of
  reason ``endpoint`` or ``image`` says nothing about the images and is always asked again.
  One asker per key at a time, so two threads with the same question ask it once.
* Bounded. At most ``max_concurrency`` requests are in flight per ``Judge``, however many threads
  call it; ``judge_many`` runs a batch on that many threads and asks identical items once.

A before-image that is a stored white canvas (the critic's step-1 source) counts as "no source
image", exactly like None.

Reason codes of a failure: those of ``tools.replies.parsing.REASONS`` (``no_answer``, ``truncated``,
``syntax``, ``schema``, ...) for a reply that was unusable, plus ``endpoint`` (the model could not
answer) and ``image`` (a stored image is missing or altered).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from tools.judge.cache import JudgeCache, answer_key
from tools.judge.prompts import JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, quality_prompt, semantic_prompt
from tools.store.images import ImageRef
from tools.llm.chat import can_resample, complete, text_part
from tools.llm.usage import Usage
from tools.store.images import ImageStore, blank_canvas_png
from tools.replies.parsing import ReplyParseError, read_answer
from tools.llm.images import TRANSPORTS, MessageImages

logger = logging.getLogger(__name__)

# Reasons that say nothing about the images: a stored failure with one of them is asked again.
TRANSIENT_REASONS = frozenset({"endpoint", "image"})
RETRY_TEMPERATURE = 0.7  # a retry re-samples; at temperature 0 it would return the same reply
KEEP_REPLY_CHARS = 20_000  # of each raw reply stored in the cache
SEMANTIC, QUALITY = "semantic", "quality"  # the labels of the two SC/PQ questions
_NUMBER = re.compile(r"\s*\d+(\.\d+)?\s*")

Item = tuple[ImageRef | None, ImageRef, str]


# --------------------------------------------------------------------------- scores


def scores_from(
    sc_pair: Sequence[float] | None, pq_pair: Sequence[float] | None
) -> tuple[float | None, float | None, float | None]:
    """(SC, PQ, overall) from [edit_success, over_editing] and [naturalness, artifacts].

    A missing pair gives None for its score and for the overall; nothing is filled in.

    >>> scores_from((8, 6), (9, 4))
    (6.0, 4.0, 4.898979485566356)
    >>> scores_from((8, 6), None)
    (6.0, None, None)
    >>> scores_from((11, 6), (9, 4))
    Traceback (most recent call last):
    ...
    ValueError: judge scores must be two numbers in [0, 10], got (11, 6)
    """

    def least(pair: Sequence[float] | None) -> float | None:
        if pair is None:
            return None
        if len(pair) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10 for v in pair
        ):
            raise ValueError(f"judge scores must be two numbers in [0, 10], got {pair!r}")
        return float(min(pair))

    sc, pq = least(sc_pair), least(pq_pair)
    overall = math.sqrt(sc * pq) if sc is not None and pq is not None else None
    return sc, pq, overall


def _score(value: Any, name: str, text: str) -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReplyParseError(f"score {name} must be a number from 0 to 10, got {value!r:.40}", text, "schema")
    if not 0 <= value <= 10:
        raise ReplyParseError(f"score {name} is {value}, outside 0-10", text, "schema")
    return float(value)


def parse_scores(text: str) -> tuple[tuple[float, float], str]:
    """Read a judge reply: ((first score, second score), reasoning). Raises ``ReplyParseError``
    with a reason code for an unusable reply; a score is never guessed.

    The answer object holds ``"scores"`` (VIEScore's ``"score"`` is read too): a list of two
    numbers in [0, 10]; a number written as a digit string ("7", "7.5") counts. The reasoning is
    the object's ``"reasoning"`` text, else the prose before the answer.

    >>> parse_scores('Sharp and clean. <answer>{"scores": [9, "7"], "reasoning": "ok"}</answer>')
    ((9.0, 7.0), 'ok')
    >>> parse_scores("<answer>{'scores': [9, 11]}</answer>")
    Traceback (most recent call last):
    ...
    tools.replies.parsing.ReplyParseError: score 2 is 11, outside 0-10
    """
    prose, answer = read_answer(text, "scores")
    values = answer.get("scores", answer.get("score"))
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise ReplyParseError(
            f'the answer must hold "scores": a list of two numbers, got {values!r:.60}', text, "schema"
        )
    pair = (_score(values[0], "1", text), _score(values[1], "2", text))
    reasoning = answer.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        reasoning = prose
    return pair, reasoning.strip()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Judgment:
    """One judged (before, after, instruction). Scores are 0-10 floats, or None when not judged.

    ``error`` is None for a complete judgment; otherwise it says what failed and ``reason`` is a
    short code (see the module docstring). A half that was judged keeps its scores even when the
    other half failed; ``overall`` needs both.
    """

    sc: float | None
    pq: float | None
    overall: float | None
    edit_success: float | None
    over_editing: float | None
    naturalness: float | None
    artifacts: float | None
    reasoning_sc: str
    reasoning_pq: str
    error: str | None
    reason: str | None
    cached: bool
    judge_model: str
    prompt_version: str

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Half:
    """One of the two calls: its two scores, or why there are none. Stored in the cache as JSON."""

    scores: list[float] | None = None
    reasoning: str = ""
    replies: list[str] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.scores is None

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> _Half:
        """A half from ``Judge``'s answer to its question (value {"scores", "reasoning"})."""
        value = answer["value"] or {}
        return cls(
            scores=value.get("scores"),
            reasoning=value.get("reasoning", ""),
            replies=answer["replies"],
            error=answer["error"],
            reason=answer["reason"],
        )

    @classmethod
    def failure(cls, reason: str, error: str, replies: list[str] | None = None) -> _Half:
        return cls(error=error, reason=reason, replies=replies or [])


def _judgment(semantic: _Half, quality: _Half, *, cached: bool, model_name: str, version: str) -> Judgment:
    sc, pq, overall = scores_from(semantic.scores, quality.scores)
    failed = [
        (name, half)
        for name, half in (("semantic consistency", semantic), ("perceptual quality", quality))
        if half.failed
    ]
    return Judgment(
        sc=sc,
        pq=pq,
        overall=overall,
        edit_success=semantic.scores[0] if semantic.scores else None,
        over_editing=semantic.scores[1] if semantic.scores else None,
        naturalness=quality.scores[0] if quality.scores else None,
        artifacts=quality.scores[1] if quality.scores else None,
        reasoning_sc=semantic.reasoning,
        reasoning_pq=quality.reasoning,
        error="; ".join(f"{name}: [{half.reason}] {half.error}" for name, half in failed) or None,
        reason=failed[0][1].reason if failed else None,
        cached=cached,
        judge_model=model_name,
        prompt_version=version,
    )


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Blank:
    """A white canvas of a size, shown in place of a missing source image (never stored)."""

    width: int
    height: int


@dataclass(frozen=True)
class Question:
    """One judge request and how to read its reply.

    ``images`` are stored ``ImageRef``s (or a ``Blank``), shown before the text unless
    ``text_first`` (the order some official judges use). ``parse`` raises ``ReplyParseError``
    for an unusable reply and never guesses; what it returns must be JSON (it is stored).
    ``system`` None takes the asker's default; "" sends no system message. ``call`` holds
    request options sent with every try (``max_tokens``, ``extra_body``, ...); ``resample``
    False asks a retry at the model's own temperature instead of re-sampling (an official
    protocol that retries greedily).
    """

    label: str
    text: str
    images: tuple[Any, ...]
    parse: Callable[[str], Any] = field(compare=False)
    system: str | None = None
    text_first: bool = False
    call: dict[str, Any] = field(default_factory=dict, compare=False)
    resample: bool = True


def _image_id(ref: Any) -> str:
    return f"blank:{ref.width}x{ref.height}" if isinstance(ref, Blank) else ref["sha256"]


# --------------------------------------------------------------------------- the judge


def _check_ref(ref: Any, what: str) -> None:
    keys = ("path", "sha256", "width", "height")
    if not isinstance(ref, dict) or any(k not in ref for k in keys):
        raise ValueError(
            f"{what} must be an ImageRef {{path, sha256, width, height}} from ImageStore.put, got {ref!r:.80}"
        )


def _is_blank(ref: ImageRef) -> bool:
    """Whether a stored image is the white canvas of its size (the store writes identical bytes)."""
    return ref["sha256"] == _blank_sha256(ref["width"], ref["height"])


def _blank_sha256(width: int, height: int) -> str:
    return hashlib.sha256(blank_canvas_png(width, height)).hexdigest()


def _read_scores(text: str) -> dict[str, Any]:
    pair, reasoning = parse_scores(text)
    return {"scores": list(pair), "reasoning": reasoning}


class Judge:
    """Asks a chat model judge questions through the answer cache; see the module docstring.

    ``model`` is any LangChain chat model that takes OpenAI-style image parts (``ChatOpenAI``,
    ``tools.llm.local.TransformersChatModel``, ...); ``model_name`` names it in the cache key and
    in every result, so give each judge (and each fine-tuned version of one) its own name;
    ``version`` (default: the name) is the exact version behind a served name: a new version is
    asked anew. ``store_root`` is the image store the ``ImageRef``s point into; ``cache_path``
    the SQLite file. ``retries`` is how many times an unusable reply is asked again.
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        model_name: str,
        store_root: str | Path,
        cache_path: str | Path,
        max_concurrency: int = 8,
        retries: int = 2,
        image_max_pixels: int = 1024 * 1024,
        image_transport: str = "data",
        prompt_version: str = JUDGE_PROMPT_VERSION,
        version: str | None = None,
    ) -> None:
        if not isinstance(model, BaseChatModel):
            raise TypeError(
                f"the judge model must be a LangChain chat model (BaseChatModel), got "
                f"{type(model).__name__}; judge_from_settings builds one for an endpoint"
            )
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError("model_name must name the judge model (it is part of the cache key); pass --judge MODEL")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency} must be at least 1")
        if retries < 0:
            raise ValueError(f"retries={retries} must be 0 or more")
        if image_transport not in TRANSPORTS:
            raise ValueError(f"image_transport={image_transport!r} must be one of {', '.join(TRANSPORTS)}")
        self.model = model
        self.model_name = model_name
        self.version = version or model_name
        # What answers are stored under: a new version string of the same served name asks anew.
        self.identity = model_name if self.version == model_name else f"{model_name}@{self.version}"
        self.prompt_version = prompt_version
        self.store = ImageStore(store_root)
        self.cache = JudgeCache(cache_path)
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.image_max_pixels = image_max_pixels
        self.image_transport = image_transport
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._asking: dict[str, threading.Lock] = {}
        self._asking_lock = threading.Lock()
        # Re-sampling at a higher temperature is possible for the models whose calls take one.
        self._resample = can_resample(model)

    # -- public

    def ask(
        self, question: Question, *, scope: str = "", prompt_version: str | None = None, retry_failed: bool = False
    ) -> dict[str, Any]:
        """The stored answer to ``question``, or a new one.

        Returns {value, error, reason, replies, requests, input_tokens, output_tokens, cached};
        ``value`` is what ``question.parse`` returned (None on a failure). ``scope`` (e.g. the
        benchmark) and ``prompt_version`` (default: this judge's) are part of the key.
        """
        version = prompt_version or self.prompt_version
        key = answer_key(
            scope,
            version,
            self.identity,
            question.label,
            question.system,
            question.text,
            [_image_id(ref) for ref in question.images],
            question.text_first,
            question.call,
            question.resample,
        )
        with self._asking_lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            stored = self.cache.get(key)
            if stored is not None and (
                stored["error"] is None or not (retry_failed or stored["reason"] in TRANSIENT_REASONS)
            ):
                return {**stored, "cached": True}
            answer = self._answer(question)
            self.cache.put(key, answer, label=question.label, judge_model=self.identity, prompt_version=version)
        if answer["error"]:
            logger.info("judge question %s failed: %s", question.label, answer["error"])
        return {**answer, "cached": False}

    def judge(
        self, before: ImageRef | None, after: ImageRef, instruction: str, *, retry_failed: bool = False
    ) -> Judgment:
        """Judge one edit (``before`` None: a generation from scratch). Never raises for a failed
        judgment; raises ``ValueError`` for inputs that are not images or instructions."""
        self._check(before, after, instruction, "")
        return self._judge(before, after, instruction.strip(), retry_failed)

    def judge_many(
        self, items: Sequence[Item], *, retry_failed: bool = False, on_done: Callable[[int, int], None] | None = None
    ) -> list[Judgment]:
        """Judge ``(before, after, instruction)`` items, at most ``max_concurrency`` requests at
        once; results in the order of ``items``. Every item is checked before any request is
        sent. ``on_done(done, total)`` is called on the calling thread after each item."""
        for index, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise ValueError(f"item {index} must be (before, after, instruction), got {item!r:.80}")
            self._check(*item, f"item {index}: ")
        total = len(items)
        results: list[Judgment | None] = [None] * total
        groups: dict[tuple, list[int]] = {}  # identical items are asked once
        for index, (before, after, instruction) in enumerate(items):
            source, _ = self._source(before, after)
            groups.setdefault((_image_id(source), after["sha256"], instruction.strip()), []).append(index)
        done = 0
        with ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, max(1, len(groups))), thread_name_prefix="judge"
        ) as pool:
            futures = {}
            for indices in groups.values():
                before, after, instruction = items[indices[0]]
                futures[pool.submit(self._judge, before, after, instruction.strip(), retry_failed)] = indices
            for future in as_completed(futures):
                judgment = future.result()
                for position, index in enumerate(futures[future]):
                    # The copies of an item were answered by its first occurrence's request.
                    copy = judgment if position == 0 else _as_cached(judgment)
                    results[index] = copy
                    done += 1
                    if on_done is not None:
                        on_done(done, total)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps

    @staticmethod
    def _check(before: Any, after: Any, instruction: Any, where: str) -> None:
        _check_ref(after, f"{where}the after-image")
        if before is not None:
            _check_ref(before, f"{where}the before-image (None to judge from scratch)")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{where}the instruction must be non-empty text, got {instruction!r:.60}")

    @staticmethod
    def _source(before: ImageRef | None, after: ImageRef) -> tuple[Any, bool]:
        """(what the SC question shows first, whether the judgment is from scratch)."""
        if before is None:
            return Blank(after["width"], after["height"]), True
        if _is_blank(before):
            return Blank(before["width"], before["height"]), True
        return before, False

    def _judge(self, before: ImageRef | None, after: ImageRef, instruction: str, retry_failed: bool) -> Judgment:
        """The SC question, then the PQ question (not asked when the endpoint is down)."""
        source, scratch = self._source(before, after)
        semantic = self.ask(
            Question(
                SEMANTIC,
                semantic_prompt(instruction, from_scratch=scratch),
                (source, after),
                _read_scores,
                JUDGE_SYSTEM,
            ),
            scope="judge",
            retry_failed=retry_failed,
        )
        quality_question = Question(QUALITY, quality_prompt(), (after,), _read_scores, JUDGE_SYSTEM)
        if semantic["reason"] == "endpoint":
            quality = {
                "value": None,
                "error": f"not asked: {semantic['error']}",
                "reason": "endpoint",
                "replies": [],
                "cached": False,
            }
        else:
            quality = self.ask(quality_question, scope="judge", retry_failed=retry_failed)
        return _judgment(
            _Half.from_answer(semantic),
            _Half.from_answer(quality),
            cached=semantic["cached"] and quality["cached"],
            model_name=self.model_name,
            version=self.prompt_version,
        )

    def _answer(self, question: Question) -> dict[str, Any]:
        """Ask until a reply parses, at most ``1 + retries`` times; keep every raw reply."""
        usage = Usage()
        replies: list[str] = []

        def done(value: Any, error: str | None, reason: str | None) -> dict[str, Any]:
            return {"value": value, "error": error, "reason": reason, "replies": replies, **usage.as_dict()}

        try:
            # Every image within the judge's own pixel budget; unlike the planner's messages, no
            # extra shrinking of crowded messages (the official judges see full images).
            images = MessageImages(
                self.store, transport=self.image_transport, max_pixels=self.image_max_pixels, image_count=1
            )
            parts = [
                images.blank(ref.width, ref.height) if isinstance(ref, Blank) else images.part(ref)
                for ref in question.images
            ]
        except (OSError, ValueError) as exc:
            return done(None, f"{exc}", "image")
        text = [text_part(question.text)]
        content = text + parts if question.text_first else parts + text
        # system "" sends no system message (an official judge that has none)
        system = [] if question.system == "" else [SystemMessage(question.system or JUDGE_SYSTEM)]
        messages = [*system, HumanMessage(content=content)]
        last: ReplyParseError | None = None
        finish = None
        for attempt in range(self.retries + 1):
            call: dict[str, Any] = {**question.call, "config": {"callbacks": [usage]}}
            if attempt and self._resample and question.resample:
                call["temperature"] = RETRY_TEMPERATURE
            try:
                with self._slots:
                    reply, finish = complete(self.model, messages, "judge", **call)
            except Exception as exc:  # an EndpointError, or anything a passed-in model raises
                return done(None, f"{exc}", "endpoint")
            replies.append(reply[:KEEP_REPLY_CHARS])
            try:
                return done(question.parse(reply), None, None)
            except ReplyParseError as exc:
                last = exc
        assert last is not None
        cut = (
            " (the reply hit the token limit: raise the judge's max tokens, --judge-max-tokens)"
            if finish == "length"
            else ""
        )
        return done(None, f"{last}{cut} after {len(replies)} replies", last.reason)


def _as_cached(judgment: Judgment) -> Judgment:
    return Judgment(**{**asdict(judgment), "cached": True})


def judge_from_settings(
    base_url: str,
    api_key: str,
    model: str,
    *,
    store_root: str | Path,
    cache_path: str | Path,
    max_concurrency: int = 8,
    retries: int = 2,
    max_tokens: int = 2048,
    temperature: float = 0.0,
    timeout_s: float = 120.0,
    http_retries: int = 2,
    image_max_pixels: int = 1024 * 1024,
    image_transport: str = "data",
    version: str | None = None,
) -> Judge:
    """A ``Judge`` on an OpenAI-compatible endpoint (vLLM, or a hosted API) serving ``model``.

    ``retries`` re-asks an unusable reply; ``http_retries`` is the client's own retry of
    connection errors, 429s and 5xx answers (with backoff); ``timeout_s`` bounds each request.
    """
    from tools.llm.chat import openai_model

    chat = openai_model(base_url, api_key, model, max_tokens, temperature, timeout_s, http_retries)
    return Judge(
        chat,
        model_name=model,
        store_root=store_root,
        cache_path=cache_path,
        max_concurrency=max_concurrency,
        retries=retries,
        image_max_pixels=image_max_pixels,
        image_transport=image_transport,
        version=version,
    )
