"""Prompt sets: the user requests that teacher trajectories are generated from.

Why this module exists: the planner and critic only learn what the training requests ask for,
so the requests must cover many kinds of interleaved tasks evenly and must not repeat one
another. A taxonomy (``training/data/taxonomy.yaml``: domains -> subcategories) fixes the coverage; a
teacher chat model writes N requests per subcategory; duplicates are removed; the result is a
JSONL file that ``datagen run`` reads back through ``read_prompt_file``.

Rules a user can rely on (the CLI's ``--help`` repeats them):

* Teacher replies are parsed leniently (a JSON object ``{"requests": [...]}``, a bare JSON or
  Python list, a fenced block, or as a last resort a numbered/bulleted list). A reply that still
  does not parse is asked again, at most ``attempts`` times with a different seed; a subcategory
  whose replies never parse is reported by id (logged, counted, exit code 1) and gets no rows.
* De-duplication runs over the whole file, earlier rows first, in taxonomy order: a request is
  dropped as an *exact* duplicate when it equals a kept one after normalising case, Unicode,
  punctuation and whitespace, and as a *near* duplicate when the Jaccard similarity of their
  word-bigram sets is at least ``near_threshold`` (default 0.8: a one-word change in a 20-word
  request is a near duplicate, a one-word change in a 7-word request is not). Counts are reported.
* The output is rewritten atomically (temporary file + rename) after every subcategory, so an
  interrupted run leaves a valid file. A subcategory counts as complete once the file holds a
  row for it (its rows are written together, only after its reply parsed); re-running with the
  same ``--out`` asks only for the others and keeps the existing lines byte for byte. To ask for
  more requests in a complete subcategory, write to another file.
* ``read_prompt_file`` never drops a line silently: every unusable line comes back as a
  ``PromptProblem`` with its line number and id, and is skipped.

The pieces live in modules of their own, and their public names are importable from here too:
``training.data.taxonomy`` (reading and checking the taxonomy), ``training.data.dedupe`` (exact and near
duplicates), ``training.data.teacher_replies`` (reading a teacher's reply) and
``training.data.prompt_files`` (reading a prompt file back). This module asks the teacher and writes
the file, and holds the ``datagen prompts`` command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from checkpoints.run_ids import printable
from tools.llm.chat import EndpointError
from tools.replies.parsing import ReplyParseError
from training.data.dedupe import NEAR_THRESHOLD, Deduplicator, dedupe, jaccard, normalise, shingles
from training.data.prompt_files import IMAGE_MARKER, PromptProblem, _is_jsonl, read_prompt_file
from training.data.taxonomy import DEFAULT_TAXONOMY, Subcategory, load_taxonomy
from training.data.teacher_replies import parse_requests

__all__ = [
    "DEFAULT_TAXONOMY",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_UNREACHABLE",
    "IMAGE_MARKER",
    "NEAR_THRESHOLD",
    "SYSTEM_PROMPT",
    "Deduplicator",
    "PromptProblem",
    "PromptSetSummary",
    "ReplyParseError",
    "Subcategory",
    "SubcategoryResult",
    "build_prompt_file",
    "dedupe",
    "generate_prompts",
    "jaccard",
    "load_taxonomy",
    "main",
    "make_parser",
    "normalise",
    "parse_requests",
    "read_prompt_file",
    "shingles",
    "teacher_messages",
]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 4, 130


# --------------------------------------------------------------------------- the teacher

SYSTEM_PROMPT = (
    "You invent realistic requests that people send to an assistant which answers with an "
    "interleaved sequence of pictures and text: a series of steps, stages or scenes, each shown "
    "as an image with a short text. The requests are used to test and train that assistant, so "
    "they must be varied, concrete, and answerable with a sequence of pictures."
)

_RULES = (
    "- Each request is what a user would actually type: one to three sentences, self-contained, in English.",
    "- Each one asks for something best answered as a sequence of pictures with text (steps, "
    "stages, scenes or states over time).",
    "- Vary subjects, settings, visual styles, length and tone. Some requests state how many "
    "steps they want; others leave it open.",
    "- No two requests may ask for the same thing in different words.",
    "- Write only the requests: no numbering, titles or comments.",
)
_IMAGE_RULE = (
    f"- The user has attached pictures to each request. Put the marker {IMAGE_MARKER} in the "
    "text exactly where each picture goes and say in words what the pictures show."
)


def teacher_messages(sub: Subcategory, count: int) -> list[BaseMessage]:
    """The messages that ask the teacher for ``count`` requests of one subcategory."""
    lines = [
        f"Write {count} different requests for the category below.",
        "",
        f"Domain: {sub.domain_name} - {sub.domain_description}",
        f"Category: {sub.name} - {sub.description}",
    ]
    if sub.examples:
        lines += [
            "Examples of the kind of request wanted (for style only; do not copy or reword them):",
            *(f"- {e}" for e in sub.examples),
        ]
    lines += [
        "",
        "Rules:",
        *_RULES,
        *([_IMAGE_RULE] if sub.needs_images else []),
        "",
        "Reply with only a JSON object of this form:",
        '{"requests": ["first request", "second request"]}',
    ]
    return [SystemMessage(SYSTEM_PROMPT), HumanMessage("\n".join(lines))]


def _seed(base: int, sub_id: str, attempt: int) -> int:
    """A per-subcategory seed that does not change when other subcategories are added."""
    return (base * 1_000_003 + zlib.crc32(sub_id.encode()) + attempt) % 2**31


def _invoke(model: BaseChatModel, messages: list[BaseMessage], **call: Any) -> tuple[str, str | None]:
    try:
        reply = model.invoke(messages, **call)
    except Exception as exc:  # connection, HTTP status, or anything a passed-in model raises
        where = getattr(model, "openai_api_base", None) or type(model).__name__
        name = getattr(model, "model_name", None)
        raise EndpointError(
            f"the teacher model at {where}{f' ({name!r})' if name else ''} failed: "
            f"{type(exc).__name__}: {exc}. Check --teacher-base-url and --teacher-model; "
            f"finished subcategories are saved and running the same command again continues."
        ) from exc
    content = reply.content
    if isinstance(content, list):
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content), reply.response_metadata.get("finish_reason")


@dataclass
class _Asked:
    texts: list[str] | None
    invalid: int
    attempts: int
    failures: list[str]


def _ask(model: BaseChatModel, sub: Subcategory, count: int, seed: int, attempts: int) -> _Asked:
    messages = teacher_messages(sub, count)
    seeded = hasattr(model, "openai_api_base")  # OpenAI-compatible servers take a seed
    failures: list[str] = []
    for attempt in range(attempts):
        call = {"seed": _seed(seed, sub.id, attempt)} if seeded else {}
        reply, finish = _invoke(model, messages, **call)
        try:
            texts, invalid = parse_requests(reply)
        except ReplyParseError as exc:
            hint = " (cut off at the token limit: raise --max-tokens)" if finish == "length" else ""
            failures.append(f"attempt {attempt + 1}: {exc}{hint}; reply starts {reply[:120]!r}")
            logger.info("teacher reply for %s did not parse: %s", sub.id, failures[-1])
            continue
        return _Asked(texts, invalid, attempt + 1, failures)
    return _Asked(None, 0, attempts, failures)


@dataclass
class SubcategoryResult:
    """What one subcategory gave; passed to ``on_progress`` in taxonomy order."""

    subcategory: Subcategory
    index: int
    total: int
    rows: list[dict] = field(default_factory=list)
    parsed: bool = False
    attempts: int = 0
    received: int = 0  # usable requests in the reply, at most the number asked for
    invalid: int = 0  # list items that were not request text
    dropped_exact: int = 0
    dropped_near: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return not self.parsed


def _rows(
    sub: Subcategory, asked: _Asked, count: int, seen: Deduplicator, used: set[str], result: SubcategoryResult
) -> None:
    texts = (asked.texts or [])[:count]
    result.received, result.invalid = len(texts), asked.invalid
    number = 0
    for text in texts:
        reason = seen.add(text)
        if reason == "exact":
            result.dropped_exact += 1
        elif reason == "near":
            result.dropped_near += 1
        if reason is not None:
            continue
        number += 1
        while f"{sub.id}-{number:04d}" in used:
            number += 1
        used.add(f"{sub.id}-{number:04d}")
        result.rows.append(
            {
                "id": f"{sub.id}-{number:04d}",
                "request": text,
                "images": [],
                "needs_images": sub.needs_images,
                "domain": sub.domain,
                "subcategory": sub.id,
            }
        )


def generate_prompts(
    taxonomy: Sequence[Subcategory],
    model: BaseChatModel,
    *,
    per_subcategory: int,
    seed: int = 0,
    max_concurrency: int = 4,
    on_progress: Callable[[SubcategoryResult], None] | None = None,
    existing: Sequence[dict] = (),
    near_threshold: float = NEAR_THRESHOLD,
    attempts: int = 3,
) -> list[dict]:
    """Ask ``model`` for ``per_subcategory`` requests per subcategory and return the new,
    de-duplicated rows (``existing`` rows count for de-duplication and ids but are not returned).

    Up to ``max_concurrency`` subcategories are asked at once; results are de-duplicated and
    handed to ``on_progress`` in taxonomy order, so the output does not depend on timing. A
    subcategory whose replies never parse is logged and reported (``result.failed``), and the
    others go on. ``EndpointError`` (teacher unreachable or refusing) stops everything.
    """
    for name, value, low in (
        ("per_subcategory", per_subcategory, 1),
        ("max_concurrency", max_concurrency, 1),
        ("attempts", attempts, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    seen = Deduplicator(near_threshold)
    for row in existing:
        seen.add(row["request"])
    used = {str(row["id"]) for row in existing}
    rows: list[dict] = []
    stopped: list[EndpointError] = []

    def ask(sub: Subcategory) -> _Asked:
        if stopped:  # the teacher already failed: do not queue more requests at it
            raise stopped[0]
        try:
            return _ask(model, sub, per_subcategory, seed, attempts)
        except EndpointError as exc:
            stopped.append(exc)
            raise

    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="teacher")
    try:
        futures = [pool.submit(ask, sub) for sub in taxonomy]
        for index, (sub, future) in enumerate(zip(taxonomy, futures), 1):
            asked = future.result()
            result = SubcategoryResult(
                sub,
                index,
                len(taxonomy),
                parsed=asked.texts is not None,
                attempts=asked.attempts,
                failures=asked.failures,
            )
            _rows(sub, asked, per_subcategory, seen, used, result)
            if result.failed:
                logger.warning(
                    "subcategory %s: no usable teacher reply after %d attempts: %s",
                    sub.id,
                    asked.attempts,
                    "; ".join(asked.failures),
                )
            rows.extend(result.rows)
            if on_progress is not None:
                on_progress(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows


# --------------------------------------------------------------------------- writing a file


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class PromptSetSummary:
    """What ``build_prompt_file`` did."""

    out: Path
    existing: int = 0  # rows that were already in the file
    written: int = 0  # rows added by this run
    skipped: list[str] = field(default_factory=list)  # subcategories already complete
    failed: list[str] = field(default_factory=list)  # subcategories with no usable reply
    dropped_exact: int = 0
    dropped_near: int = 0
    invalid: int = 0


def build_prompt_file(
    taxonomy: Sequence[Subcategory],
    model: BaseChatModel,
    out: str | os.PathLike,
    *,
    per_subcategory: int,
    seed: int = 0,
    max_concurrency: int = 4,
    on_progress: Callable[[SubcategoryResult], None] | None = None,
    near_threshold: float = NEAR_THRESHOLD,
    attempts: int = 3,
) -> PromptSetSummary:
    """Generate into ``out``, resuming: subcategories that already have rows there are skipped,
    existing lines are kept verbatim, and the file is rewritten atomically after each
    subcategory. Raises ``ValueError`` when ``out`` exists but has unreadable lines (they would
    otherwise be lost), ``EndpointError`` when the teacher fails."""
    out = Path(out)
    if out.suffix.lower() == ".txt":
        raise ValueError(
            f"{out}: the output is JSONL, but a .txt name reads back as a plain list of requests; name it .jsonl"
        )
    summary = PromptSetSummary(out)
    prefix, existing = "", []
    if out.exists() and out.stat().st_size and not _is_jsonl(out, out.read_bytes().split(b"\n")):
        raise ValueError(f"{out} exists and is not a JSONL prompt file; choose another --out")
    if out.exists():
        existing, problems = read_prompt_file(out, require_images=False)
        if problems:
            shown = "\n  ".join(map(str, problems[:10]))
            raise ValueError(
                f"{out} exists but {len(problems)} line(s) cannot be read, and "
                f"resuming would rewrite the file; fix or move it first:\n  {shown}"
            )
        prefix = out.read_text(encoding="utf-8")
        prefix += "\n" if prefix and not prefix.endswith("\n") else ""
    done = {row["subcategory"] for row in existing}
    summary.existing = len(existing)
    summary.skipped = [s.id for s in taxonomy if s.id in done]
    todo = [s for s in taxonomy if s.id not in done]
    lines: list[str] = []

    def save(result: SubcategoryResult) -> None:
        summary.written += len(result.rows)
        summary.dropped_exact += result.dropped_exact
        summary.dropped_near += result.dropped_near
        summary.invalid += result.invalid
        if result.failed:
            summary.failed.append(result.subcategory.id)
        if result.rows:
            lines.extend(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows)
            _write_atomic(out, prefix + "".join(lines))
        if on_progress is not None:
            on_progress(result)

    generate_prompts(
        todo,
        model,
        per_subcategory=per_subcategory,
        seed=seed,
        max_concurrency=max_concurrency,
        on_progress=save,
        existing=existing,
        near_threshold=near_threshold,
        attempts=attempts,
    )
    if not out.exists():
        _write_atomic(out, "")
    return summary


# --------------------------------------------------------------------------- command line


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The command's options; with ``subparsers`` it is mounted there as ``prompts``, as
    ``interleave datagen prompts`` mounts it."""
    options = dict(
        description="Ask a teacher LLM for user requests per taxonomy subcategory, remove exact "
        "and near duplicates, and write JSONL rows (id, request, images, "
        "needs_images, domain, subcategory) for `datagen run`. Re-running with the "
        "same --out skips subcategories that already have rows there.",
        epilog="Exit codes: 0 done; 1 some subcategories got no usable teacher reply (the "
        "others are written; run again to retry them); 2 bad input (taxonomy, options, "
        "unreadable existing --out); 4 teacher endpoint unreachable or refusing "
        "(finished subcategories are saved; run again to continue); 130 interrupted. "
        "The API key is read from INTERLEAVE_TEACHER_API_KEY when --teacher-api-key is "
        "not given.",
    )
    if subparsers is not None:
        parser = subparsers.add_parser("prompts", **options)
    else:
        parser = argparse.ArgumentParser(prog="interleave datagen prompts", **options)
    add = parser.add_argument
    add(
        "--taxonomy",
        type=Path,
        default=DEFAULT_TAXONOMY,
        metavar="FILE",
        help="taxonomy YAML (domains -> subcategories); default: the shipped training/data/taxonomy.yaml",
    )
    add(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="output JSONL; if it exists, its subcategories are kept and skipped",
    )
    add(
        "--per-subcategory",
        type=int,
        default=20,
        metavar="N",
        help="requests to ask for per subcategory, before de-duplication (default 20)",
    )
    add(
        "--teacher-base-url",
        required=True,
        metavar="URL",
        help="OpenAI-compatible endpoint of the teacher, e.g. http://localhost:8000/v1",
    )
    add("--teacher-model", required=True, metavar="NAME", help="model name the teacher endpoint serves")
    add(
        "--teacher-api-key",
        default=None,
        metavar="KEY",
        help="API key (default: $INTERLEAVE_TEACHER_API_KEY, else 'EMPTY')",
    )
    add("--concurrency", type=int, default=4, metavar="N", help="subcategories asked at the same time (default 4)")
    add(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="base sampling seed; each subcategory and retry derives its own (default 0)",
    )
    add(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="teacher sampling temperature; high values give more varied requests (default 1.0)",
    )
    add("--max-tokens", type=int, default=4096, metavar="N", help="longest teacher reply in tokens (default 4096)")
    add(
        "--timeout-s", type=float, default=180.0, metavar="S", help="seconds one teacher request may take (default 180)"
    )
    add(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="HTTP retries on connection errors, 429 and 5xx answers (default 2)",
    )
    add(
        "--attempts",
        type=int,
        default=3,
        metavar="N",
        help="how many times in all a subcategory is asked when its replies do not parse, "
        "before it is reported as failed (default 3)",
    )
    add(
        "--near-duplicate-threshold",
        type=float,
        default=NEAR_THRESHOLD,
        metavar="F",
        help="word-bigram Jaccard similarity at or above which a request counts as a near "
        f"duplicate of an earlier one (default {NEAR_THRESHOLD})",
    )
    add("-v", "--verbose", action="store_true", help="log each failed parse")
    return parser


def _progress(result: SubcategoryResult) -> None:
    sub = result.subcategory
    if result.failed:
        note = f"FAILED after {result.attempts} attempt(s): {result.failures[-1]}"
    else:
        dropped = result.dropped_exact + result.dropped_near
        note = f"{len(result.rows)} kept of {result.received}, {dropped} duplicate(s) dropped"
    print(f"[{result.index}/{result.total}] {sub.id}: {note}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run(make_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Build the prompt file as the parsed options say; the exit code."""
    from tools.logs import configure_logging

    configure_logging(logging.INFO if args.verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    from tools.llm.chat import openai_model

    started = time.monotonic()
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        api_key = args.teacher_api_key or os.environ.get("INTERLEAVE_TEACHER_API_KEY", "EMPTY")
        model = openai_model(
            args.teacher_base_url,
            api_key,
            args.teacher_model,
            args.max_tokens,
            args.temperature,
            args.timeout_s,
            args.retries,
        )
        summary = build_prompt_file(
            taxonomy,
            model,
            args.out,
            per_subcategory=args.per_subcategory,
            seed=args.seed,
            max_concurrency=args.concurrency,
            on_progress=_progress,
            near_threshold=args.near_duplicate_threshold,
            attempts=args.attempts,
        )
    except KeyboardInterrupt:
        print("\ninterrupted; finished subcategories are saved, run again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EndpointError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # may quote a model or a file
        return EXIT_UNREACHABLE
    except (ValueError, OSError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # may quote a model or a file
        return EXIT_BAD_INPUT
    print(
        f"{summary.out}: {summary.written} new request(s), {summary.existing} already there; "
        f"{len(summary.skipped)} subcategories skipped as complete; dropped "
        f"{summary.dropped_exact} exact and {summary.dropped_near} near duplicate(s), "
        f"{summary.invalid} unusable item(s); {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if summary.failed:
        print(
            f"no usable teacher reply for {len(summary.failed)} subcategories "
            f"({', '.join(summary.failed)}); run the same command again to retry them",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
