"""What the three benchmark harnesses (UEval, WISE, RISEBench) share: reading data files,
configurations, a resumable SQLite store of per-item results, the judge's question cache, making
each item's output (the full graph or the bare generator) and the concurrent driver.

Why it is built this way:

* Resumable per item, at two grains. An item's output (images, text, trajectory, cost) is stored
  once it exists; a graph run interrupted half-way is resumed by ``graph.runs.batch.run_one``. Every
  judge question (one rubric item, one score request) is stored under a key made of the
  benchmark, the question's text, the sha256 of every image it shows, the judge model and the
  prompt version; an item's scores are stored once all its questions are answered. A rerun skips
  what is stored, so a killed evaluation never asks the judge the same question twice (only a
  request in flight at the kill is lost and asked again).
* Never an invented score. A reply that cannot be read is asked again (re-sampled) up to
  ``retries`` times, then stored as a failure with a reason code; the benchmark module decides
  what a failed question removes from its item (documented there) and the report counts them.
  Stored failures of reason ``endpoint`` or ``image`` say nothing about the images and are asked
  again on the next run; others only with ``retry_failed``.
* Cost is measured, not estimated: generator calls and critic calls come from the run's
  document; VLM requests and tokens from a LangChain callback on per-item planner/critic clients
  (OpenAI-compatible backends; the in-process backend reports neither); judge requests and tokens
  the same way; wall time is measured around each item. A graph run resumed after a crash is
  measured for its resumed part only; one found already finished has unknown VLM use and time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage

from checkpoints.sqlite import connect_file, retry_locked
from graph.context import Context
from tools.llm.chat import complete, text_part
from tools.store.images import ImageStore
from tools.replies.parsing import ReplyParseError
from tools.llm.images import MessageImages

logger = logging.getLogger(__name__)

TRANSIENT_REASONS = frozenset({"endpoint", "image"})
RETRY_TEMPERATURE = 0.7
KEEP_REPLY_CHARS = 20_000
STAGES = ("all", "generate", "judge")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


# --------------------------------------------------------------------------- data files


class DataFormatError(ValueError):
    """A benchmark data file is not in the expected format; the message names file, item, fix."""


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a JSON list file, a JSONL file, or every such file in a
    folder (sorted by name). ``where`` names the file and line or list position for errors."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise DataFormatError(f"{path} holds no .json or .jsonl files; pass a data file or a "
                                  f"folder of them")
        return [pair for file in files for pair in read_records(file)]
    if not path.is_file():
        raise DataFormatError(f"data file {path} does not exist; check --data")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append((f"{path} line {number}", _loads(line, f"{path} line {number}")))
    else:
        data = _loads(text, str(path))
        if not isinstance(data, list):
            raise DataFormatError(f"{path} must hold a JSON list of items (or be a .jsonl file with "
                                  f"one item per line), got a {type(data).__name__}")
        records = [(f"{path} item {index}", value) for index, value in enumerate(data)]
    for where, record in records:
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: each item must be a JSON object, got "
                                  f"{type(record).__name__}")
    return records


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where} is not valid JSON ({exc})") from None


def need(record: dict[str, Any], fields: dict[str, type | tuple[type, ...]], where: str,
         expected: str) -> None:
    """Raise a DataFormatError naming the item and the fields it lacks or has of a wrong type."""
    problems = [f"{name} is missing" if name not in record else
                f"{name} must be {getattr(kind, '__name__', kind)}, got {type(record[name]).__name__}"
                for name, kind in fields.items()
                if name not in record or not isinstance(record[name], kind)]
    if problems:
        raise DataFormatError(f"{where}: {'; '.join(problems)}. Expected items with {expected}")


def unique_ids(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
    repeated = sorted(i for i, n in seen.items() if n > 1)
    if repeated:
        raise DataFormatError(f"item ids must be unique; repeated: {repeated[:5]}")
    return items


@dataclass(frozen=True)
class Item:
    """One benchmark item: its id, the category it is reported under, and its record."""

    id: str
    category: str
    record: dict[str, Any] = field(hash=False, compare=False)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    """How items are produced: ``graph`` (planner -> generator -> critic) or ``bare`` (the
    generator alone, one image from the benchmark prompt), with run-setting overrides."""

    name: str
    kind: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)


PRESETS = {
    "full": Config("full", "graph", {"max_generations_per_step": 3}),
    "critic-off": Config("critic-off", "graph", {"max_generations_per_step": 1}),
    "bare": Config("bare", "bare", {}),
}


def parse_config(spec: str) -> Config:
    """A preset name (full, critic-off, bare) or ``NAME:key=value,...`` over the graph.

    Keys are run settings (``max_generations_per_step=1``, ``planner_model=...``); ``kind=bare``
    makes it a bare-generator configuration.

    >>> parse_config("attempts-1:max_generations_per_step=1")
    Config(name='attempts-1', kind='graph', overrides={'max_generations_per_step': 1})
    """
    if ":" not in spec:
        if spec not in PRESETS:
            raise ValueError(f"unknown configuration {spec!r}: use one of {', '.join(PRESETS)} or "
                             f"NAME:setting=value,... (e.g. attempts-1:max_generations_per_step=1)")
        return PRESETS[spec]
    name, _, body = spec.partition(":")
    if not _SAFE_NAME.match(name):
        raise ValueError(f"configuration name {name!r} may hold only letters, digits, '.', '_' "
                         f"and '-'")
    types = {f.name: f.type for f in dataclasses.fields(Context)}
    kind, overrides = "graph", {}
    for pair in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"configuration {name!r}: {pair!r} is not key=value")
        if key == "kind":
            if value not in ("graph", "bare"):
                raise ValueError(f"configuration {name!r}: kind={value!r} must be graph or bare")
            kind = value
            continue
        if key not in types or key in ("runs_dir", "review_plan"):
            raise ValueError(f"configuration {name!r}: {key!r} is not a run setting that a "
                             f"configuration may change (see `interleave run --help`)")
        caster = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}
        try:
            overrides[key] = caster.get(str(types[key]), str)(value)
        except ValueError:
            raise ValueError(f"configuration {name!r}: {key}={value!r} is not a valid "
                             f"{types[key]}") from None
    Context(**overrides)  # the same checks as a run's settings
    return Config(name, kind, overrides)


# --------------------------------------------------------------------------- the result store


class ResultStore:
    """Outputs, judge answers and item results in one SQLite file (WAL, busy timeout; one lock
    around the connection for this process's threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        conn = connect_file(self.path, what="results file", fix="pass another --out folder",
                            autocommit=True)
        for ddl in (
            "CREATE TABLE IF NOT EXISTS outputs (benchmark TEXT, config TEXT, item TEXT, "
            "status TEXT, data TEXT, error TEXT, updated_at REAL, "
            "PRIMARY KEY (benchmark, config, item))",
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, benchmark TEXT, "
            "label TEXT, judge_model TEXT, prompt_version TEXT, data TEXT, updated_at REAL)",
            "CREATE TABLE IF NOT EXISTS results (benchmark TEXT, config TEXT, item TEXT, "
            "judge_model TEXT, prompt_version TEXT, status TEXT, data TEXT, updated_at REAL, "
            "PRIMARY KEY (benchmark, config, item, judge_model, prompt_version))"):
            retry_locked(lambda ddl=ddl: conn.execute(ddl))
        self._conn = conn

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return retry_locked(lambda: self._conn.execute(sql, args).fetchall())

    def output(self, benchmark: str, config: str, item: str) -> dict[str, Any] | None:
        rows = self._run("SELECT status, data, error FROM outputs WHERE benchmark=? AND config=? "
                         "AND item=?", (benchmark, config, item))
        return {"status": rows[0][0], "error": rows[0][2], **json.loads(rows[0][1] or "{}")} \
            if rows else None

    def put_output(self, benchmark: str, config: str, item: str, status: str,
                   data: dict[str, Any], error: str | None = None) -> None:
        self._run("INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?,?)",
                  (benchmark, config, item, status, json.dumps(data), error, time.time()))

    def answer(self, key: str) -> dict[str, Any] | None:
        rows = self._run("SELECT data FROM answers WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def put_answer(self, key: str, benchmark: str, label: str, judge_model: str,
                   prompt_version: str, data: dict[str, Any]) -> None:
        self._run("INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?)",
                  (key, benchmark, label, judge_model, prompt_version, json.dumps(data), time.time()))

    def result(self, benchmark: str, config: str, item: str, judge_model: str,
               prompt_version: str) -> dict[str, Any] | None:
        rows = self._run("SELECT data FROM results WHERE benchmark=? AND config=? AND item=? AND "
                         "judge_model=? AND prompt_version=?",
                         (benchmark, config, item, judge_model, prompt_version))
        return json.loads(rows[0][0]) if rows else None

    def put_result(self, benchmark: str, config: str, item: str, judge_model: str,
                   prompt_version: str, data: dict[str, Any]) -> None:
        self._run("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?)",
                  (benchmark, config, item, judge_model, prompt_version, data["status"],
                   json.dumps(data), time.time()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --------------------------------------------------------------------------- usage and the judge


class Usage(BaseCallbackHandler):
    """Counts chat requests and, where the server reports them, tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.tokens_known = True

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        with self._lock:
            self.requests += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                with self._lock:
                    if not usage:
                        self.tokens_known = False
                        continue
                    self.input_tokens += usage.get("input_tokens", 0)
                    self.output_tokens += usage.get("output_tokens", 0)

    def as_dict(self) -> dict[str, Any]:
        known = self.tokens_known and self.requests > 0
        return {"requests": self.requests,
                "input_tokens": self.input_tokens if known else None,
                "output_tokens": self.output_tokens if known else None}


@dataclass(frozen=True)
class Question:
    """One judge request: the text, the stored images shown before it, and how to read the reply
    (``parse`` raises ``ReplyParseError`` for an unusable reply, never guesses)."""

    label: str
    text: str
    images: tuple[dict, ...]
    parse: Callable[[str], Any]


class BenchJudge:
    """Asks benchmark questions of one chat model, through the question cache of a ResultStore."""

    def __init__(self, model: Any, *, model_name: str, version: str, system: str,
                 store_root: str | Path, results: ResultStore, max_concurrency: int = 8,
                 retries: int = 2, image_max_pixels: int = 1024 * 1024,
                 image_transport: str = "data") -> None:
        if not model_name.strip():
            raise ValueError("the judge model name is empty; pass --judge MODEL")
        if max_concurrency < 1 or retries < 0:
            raise ValueError(f"judge concurrency {max_concurrency} must be >= 1 and retries "
                             f"{retries} >= 0")
        self.model, self.model_name, self.version, self.system = model, model_name, version, system
        # What answers are stored under: a new version string of the same served name asks anew.
        self.identity = model_name if version in ("", model_name) else f"{model_name}@{version}"
        self.store = ImageStore(store_root)
        self.results = results
        self.retries = retries
        self.image_max_pixels, self.image_transport = image_max_pixels, image_transport
        self._slots = threading.BoundedSemaphore(max_concurrency)
        # One asker per key, so an identical question (two configurations that made the same
        # image) is asked once; a lock per question asked, kept for the judge's lifetime.
        self._asking: dict[str, threading.Lock] = {}
        self._asking_lock = threading.Lock()
        self._resample = type(model).__name__ in ("ChatOpenAI", "TransformersChatModel")

    def key(self, benchmark: str, prompt_version: str, question: Question) -> str:
        fields = [benchmark, prompt_version, self.identity, question.label, question.text,
                  [ref["sha256"] for ref in question.images]]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def ask(self, benchmark: str, prompt_version: str, question: Question, *,
            retry_failed: bool = False) -> dict[str, Any]:
        """The stored answer, or a new one: {value, error, reason, replies, requests, tokens}."""
        key = self.key(benchmark, prompt_version, question)
        with self._asking_lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            stored = self.results.answer(key)
            if stored is not None and (stored["error"] is None or not (
                    retry_failed or stored["reason"] in TRANSIENT_REASONS)):
                return {**stored, "cached": True}
            answer = self._ask(question)
            self.results.put_answer(key, benchmark, question.label, self.identity,
                                    prompt_version, answer)
        return {**answer, "cached": False}

    def _ask(self, question: Question) -> dict[str, Any]:
        usage = Usage()
        replies: list[str] = []

        def done(value: Any, error: str | None, reason: str | None) -> dict[str, Any]:
            return {"value": value, "error": error, "reason": reason, "replies": replies,
                    **usage.as_dict()}

        try:
            # Every image within the judge's own pixel budget; unlike the planner's messages, no
            # extra shrinking of crowded messages (the official judges see full images).
            images = MessageImages(self.store, transport=self.image_transport,
                                   max_pixels=self.image_max_pixels, image_count=1)
            parts = [images.part(ref) for ref in question.images]
        except (OSError, ValueError) as exc:
            return done(None, f"{exc}", "image")
        messages = [SystemMessage(self.system),
                    HumanMessage(content=parts + [text_part(question.text)])]
        last: ReplyParseError | None = None
        for attempt in range(self.retries + 1):
            call: dict[str, Any] = {"config": {"callbacks": [usage]}}
            if attempt and self._resample:
                call["temperature"] = RETRY_TEMPERATURE
            try:
                with self._slots:
                    reply, finish = complete(self.model, messages, "judge", **call)
            except Exception as exc:  # EndpointError, or anything a passed-in model raises
                return done(None, f"{exc}", "endpoint")
            replies.append(reply[:KEEP_REPLY_CHARS])
            try:
                return done(question.parse(reply), None, None)
            except ReplyParseError as exc:
                last = exc
                if finish == "length":
                    last = ReplyParseError(f"{exc} (the reply hit the token limit: raise "
                                           f"--judge-max-tokens)", reply, exc.reason)
        assert last is not None
        return done(None, f"{last} after {len(replies)} replies", last.reason)


# --------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Benchmark:
    """The parts that differ per benchmark (see ueval.py, wise.py, rise.py)."""

    name: str
    prompt_version: str
    judge_system: str
    load: Callable[[Path, Path | None], list[Item]]  # (data path, images root) -> items
    request: Callable[[Item], tuple[str, list[str]]]  # graph request text and input image paths
    bare_request: Callable[[Item], tuple[str, str | None]]  # generator prompt, source image path
    pick: Callable[[Item, dict], dict]  # (item, document) -> {text, images, inputs}
    questions: Callable[[Item, dict, ImageStore], list[Question]]  # (item, output, store)
    score: Callable[[Item, dict, list[dict]], dict]  # (item, output, answers) -> result
    summarize: Callable[[list[tuple[Item, dict]]], dict]  # scored items -> metrics
    headline: tuple[str, ...]  # metric keys shown side by side in the report
    export: Callable[[Path, str, list[tuple[Item, dict]], Path], Path | None] | None = None


def image_path(runs_dir: str | Path, ref: dict) -> str:
    return str((Path(runs_dir) / ref["path"]).resolve())


# --------------------------------------------------------------------------- making outputs


def _counted_models(ctx: Context, usage: Usage) -> Any:
    """Planner and critic clients of this item that report to ``usage`` (openai backend only)."""
    from langchain_openai import ChatOpenAI

    from tools.llm.chat import ChatModels

    def make(role: str) -> Any:
        if getattr(ctx, f"{role}_backend") != "openai":
            return None
        return ChatOpenAI(base_url=getattr(ctx, f"{role}_base_url"),
                          api_key=getattr(ctx, f"{role}_api_key"), model=getattr(ctx, f"{role}_model"),
                          max_tokens=ctx.vlm_max_tokens, temperature=ctx.vlm_temperature,
                          timeout=ctx.vlm_timeout_s, max_retries=ctx.vlm_retries, callbacks=[usage])
    return ChatModels(planner=make("planner"), critic=make("critic"))


def _graph_output(bench: Benchmark, item: Item, batch: str, ctx: Context) -> dict[str, Any]:
    from graph.runs.batch import run_one

    request, images = bench.request(item)
    usage = Usage()
    run_id, outcome = run_one({"id": item.id, "request": request, "images": images}, batch, ctx,
                              _counted_models(ctx, usage))
    if outcome is not None and outcome.status != "finished":
        raise RuntimeError(f"run {run_id} ended {outcome.status}: "
                           f"{type(outcome.error).__name__}: {outcome.error}")
    folder = Path(ctx.runs_dir) / run_id
    document = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    attempts = [a for step in document["steps"] for a in step["attempts"]]
    # A run that had finished before this call was not watched: its VLM use and time are unknown.
    vlm = usage.as_dict() if outcome is not None else {
        "requests": None, "input_tokens": None, "output_tokens": None}
    cost = {"generator_calls": len(attempts),
            "critic_calls": sum(a["verdict"] is not None for a in attempts),
            "vlm_requests": vlm["requests"], "vlm_input_tokens": vlm["input_tokens"],
            "vlm_output_tokens": vlm["output_tokens"]}
    if outcome is None:
        cost["wall_s"] = None
    return {**bench.pick(item, document), "run_id": run_id,
            "trajectory": str(folder / "document.html"), "cost": cost}


def _bare_output(bench: Benchmark, item: Item, batch: str, ctx: Context) -> dict[str, Any]:
    """One generation from the benchmark prompt (an edit of the source image when there is one),
    written as a one-step document so it has a trajectory page like a graph run."""
    from graph.runs.batch import batch_run_id
    from nodes.generator import check_generator_settings, generation_settings, generator_pool
    from nodes.prompts import PROMPT_VERSION
    from tools.generator import diffusion
    from tools.store import documents
    from tools.generator import models as generator_models

    check_generator_settings(ctx)
    prompt, source_path = bench.bare_request(item)
    store = ImageStore(ctx.runs_dir)
    source = store.import_file(source_path) if source_path else None
    pool = generator_pool(ctx)
    settings = generation_settings(ctx, generator_models.spec_for_pipeline(pool.pipe))
    seed = diffusion.derive_seed(ctx.seed, 1, 1)
    started = time.perf_counter()
    image = pool.run(dict(
        prompt=prompt, seed=seed, **settings, source=store.load(source) if source else None,
        references=[]))
    seconds = round(time.perf_counter() - started, 3)
    ref = store.put(image)
    number = 2 if source else 1
    step = {"step_number": number, "step_name": "Generated image", "instruction": None,
            "prompt": prompt, "auxiliary_text": None}
    attempt = {"step_number": number, "attempt": 1, "prompt": prompt, "seed": seed,
               "source": source, "image": ref, "last_allowed": True, "verdict": None,
               "generate_s": seconds, "critique_s": None}
    entries = ([{"step_number": 1, "step_name": "Given image 1", "text": "", "image": source}]
               if source else []) + [{"step_number": number, "step_name": "Generated image",
                                      "text": "", "image": ref}]
    run_id = batch_run_id(batch, item.id)
    document = documents.build_record(
        run_id=run_id, request=prompt, input_images=[source] if source else [], plan=[step],
        plan_reasoning="bare generator: no planner, no critic", entries=entries,
        attempts=[attempt], settings=ctx.to_record(), prompt_version=PROMPT_VERSION,
        plan_mode="continue" if source else "narrative")
    folder = Path(ctx.runs_dir) / run_id
    documents.write_all(folder, document, Path(ctx.runs_dir))
    cost = {"generator_calls": 1, "critic_calls": 0, "vlm_requests": 0, "vlm_input_tokens": 0,
            "vlm_output_tokens": 0}
    return {**bench.pick(item, document), "run_id": run_id,
            "trajectory": str(folder / "document.html"), "cost": cost}


def make_output(bench: Benchmark, item: Item, config: Config, ctx: Context) -> dict[str, Any]:
    """Produce (or resume) one item's output under one configuration; raises on failure."""
    ctx = dataclasses.replace(ctx, review_plan=False, **config.overrides)
    batch = f"{bench.name}-{config.name}"
    started = time.perf_counter()
    made = (_bare_output if config.kind == "bare" else _graph_output)(bench, item, batch, ctx)
    made["cost"].setdefault("wall_s", round(time.perf_counter() - started, 3))
    return made


# --------------------------------------------------------------------------- the driver


@dataclass
class Progress:
    """One finished (configuration, item) unit, for a progress display."""

    done: int
    total: int
    config: str
    item: str
    status: str
    detail: str = ""


def judge_item(bench: Benchmark, judge: BenchJudge, item: Item, output: dict[str, Any], *,
               retry_failed: bool = False) -> dict[str, Any]:
    """Ask an item's questions (sequentially; the judge bounds concurrency) and score it."""
    started = time.perf_counter()
    answers = [judge.ask(bench.name, bench.prompt_version, q, retry_failed=retry_failed)
               for q in bench.questions(item, output, judge.store)]
    result = bench.score(item, output, answers)
    known = all(a["input_tokens"] is not None for a in answers if a["requests"])
    result["judge"] = {
        "requests": sum(a["requests"] or 0 for a in answers),
        "tokens": sum((a["input_tokens"] or 0) + (a["output_tokens"] or 0) for a in answers)
        if known else None,
        "asked_now": sum(not a["cached"] for a in answers),
        "wall_s": round(time.perf_counter() - started, 3)}
    return result


def evaluate(bench: Benchmark, items: list[Item], configs: list[Config], ctx: Context,
             judge: BenchJudge | None, results: ResultStore, *, stage: str = "all",
             concurrency: int = 2, retry_failed: bool = False,
             on_progress: Callable[[Progress], None] | None = None,
             on_checkpoint: Callable[[], None] | None = None, checkpoint_every_s: float = 10.0) -> None:
    """Produce and judge every (configuration, item), ``concurrency`` at a time, resumably.

    ``on_checkpoint`` (the partial report) is called at most every ``checkpoint_every_s`` while
    running; one failing item never stops the others.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} must be one of {', '.join(STAGES)}")
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be at least 1")
    if stage != "generate" and judge is None:
        raise ValueError("judging needs a judge model (--judge), or use --stage generate")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configuration names must be unique, got {names}")
    units = [(config, item) for config in configs for item in items]
    lock = threading.Lock()
    state = {"done": 0, "checkpoint": time.monotonic()}

    def one(unit: tuple[Config, Item]) -> None:
        config, item = unit
        try:
            status, detail = _unit(config, item)
        except Exception as exc:  # noqa: BLE001 -- a bug on one item: report it, go on
            logger.exception("item %s of %s failed", item.id, config.name)
            status, detail = "error", f"{type(exc).__name__}: {exc}"
        with lock:
            state["done"] += 1
            if on_progress is not None:
                on_progress(Progress(state["done"], len(units), config.name, item.id, status, detail))
            due = time.monotonic() - state["checkpoint"] >= checkpoint_every_s
            if on_checkpoint is not None and due and state["done"] < len(units):
                state["checkpoint"] = time.monotonic()
                on_checkpoint()

    def _unit(config: Config, item: Item) -> tuple[str, str]:
        output = results.output(bench.name, config.name, item.id)
        if stage != "judge" and (output is None or output["status"] != "ok"):
            try:
                made = make_output(bench, item, config, ctx)
            except Exception as exc:  # noqa: BLE001 -- recorded; a rerun tries again
                results.put_output(bench.name, config.name, item.id, "failed", {},
                                   f"{type(exc).__name__}: {exc}")
                return "generation_failed", f"{type(exc).__name__}: {exc}"
            results.put_output(bench.name, config.name, item.id, "ok", made)
            output = {"status": "ok", "error": None, **made}
        if stage == "generate":
            return "generated", ""
        if output is None or output["status"] != "ok":
            return "not_generated", output["error"] if output else "no output yet"
        assert judge is not None
        stored = results.result(bench.name, config.name, item.id, judge.identity,
                                bench.prompt_version)
        if stored is not None and stored["status"] == "scored":
            return "scored (stored)", ""
        result = judge_item(bench, judge, item, output, retry_failed=retry_failed)
        results.put_result(bench.name, config.name, item.id, judge.identity,
                           bench.prompt_version, result)
        return result["status"], result.get("error") or ""

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        for future in [pool.submit(one, unit) for unit in units]:
            future.result()
    except BaseException:  # Ctrl-C: drop what has not started; items under way finish
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def relative_link(target: str | None, base: Path) -> str | None:
    return os.path.relpath(target, base) if target else None
