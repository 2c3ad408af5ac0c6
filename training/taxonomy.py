"""The taxonomy of prompt sets: domains -> subcategories, read from YAML and checked.

Why this module exists: the taxonomy (``training/taxonomy.yaml``) fixes which kinds of
interleaved tasks the training requests cover, and every row id derives from a subcategory id.
A mistake in the file (a repeated id, a missing key, a typo in a key) would silently skew or
break a whole prompt set, so it is read here on its own and every problem is reported with its
line and the fix before any teacher is asked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_LINE = object()  # key under which the YAML loader records the line of each mapping


@dataclass(frozen=True)
class Subcategory:
    """One leaf of the taxonomy, with its domain's name and description copied in."""

    id: str
    name: str
    description: str
    domain: str
    domain_name: str
    domain_description: str
    examples: tuple[str, ...] = ()
    needs_images: bool = False


def _yaml(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Loader, node: Any) -> dict:
        value = loader.construct_mapping(node, deep=True)
        value[_LINE] = node.start_mark.line + 1
        return value

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _check_entry(entry: Any, where: str, required: dict[str, type], optional: dict[str, type],
                 errors: list[str]) -> bool:
    """Append a message per problem of one mapping; True when it can be read further."""
    if not isinstance(entry, dict):
        errors.append(f"{where}: expected a mapping with keys {sorted(required)}, "
                      f"got {type(entry).__name__}")
        return False
    where = f"line {entry[_LINE]} ({where})"
    ok = True
    for key, kind in {**required, **optional}.items():
        if key not in entry:
            if key in required:
                errors.append(f"{where}: missing '{key}'; add it")
                ok = False
            continue
        value = entry[key]
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            errors.append(f"{where}: '{key}' must be a non-empty {kind.__name__}, "
                          f"got {value!r}")
            ok = False
    unknown = sorted(str(k) for k in entry if k is not _LINE and k not in required
                     and k not in optional)
    if unknown:
        errors.append(f"{where}: unknown key(s) {unknown}; allowed: "
                      f"{sorted([*required, *optional])}")
    if ok and "id" in required and not _SLUG.match(entry["id"]):
        errors.append(f"{where}: id {entry['id']!r} is not a slug; use lower-case letters, "
                      f"digits and single hyphens, e.g. 'paper-crafts'")
    return ok


def load_taxonomy(path: str | os.PathLike) -> list[Subcategory]:
    """Read and check a taxonomy file (YAML; JSON is YAML too). Raises ``ValueError`` listing
    every problem with its line and the fix; see ``training/taxonomy.yaml`` for the shape."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        data = _yaml(raw.decode("utf-8"))
    except Exception as exc:  # yaml.YAMLError or UnicodeDecodeError; both name the position
        raise ValueError(f"{path}: not a readable YAML file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("domains"), list) \
            or not data["domains"]:
        raise ValueError(f"{path}: expected a top-level 'domains:' list with at least one "
                         f"domain (see training/taxonomy.yaml)")
    errors: list[str] = []
    seen_domains: dict[str, int] = {}
    seen: dict[str, int] = {}
    found: list[Subcategory] = []
    for d, domain in enumerate(data["domains"]):
        where = f"domains[{d}]"
        if not _check_entry(domain, where, {"id": str, "name": str, "description": str,
                                            "subcategories": list}, {}, errors):
            continue
        if domain["id"] in seen_domains:
            errors.append(f"line {domain[_LINE]} ({where}): domain id {domain['id']!r} is also "
                          f"used at line {seen_domains[domain['id']]}; rename one")
        seen_domains.setdefault(domain["id"], domain[_LINE])
        if not domain["subcategories"]:
            errors.append(f"line {domain[_LINE]} ({where}): 'subcategories' is empty; add one")
        for s, sub in enumerate(domain["subcategories"]):
            here = f"{where}.subcategories[{s}]"
            if not _check_entry(sub, here, {"id": str, "name": str, "description": str},
                                {"examples": list, "needs_images": bool}, errors):
                continue
            examples = sub.get("examples", [])
            if any(not isinstance(e, str) or not e.strip() for e in examples):
                errors.append(f"line {sub[_LINE]} ({here}): every example must be a "
                              f"non-empty string")
            if sub["id"] in seen:
                errors.append(f"line {sub[_LINE]} ({here}): subcategory id {sub['id']!r} is "
                              f"also used at line {seen[sub['id']]}; ids must be unique across "
                              f"the file (row ids derive from them), rename one")
                continue
            seen[sub["id"]] = sub[_LINE]
            found.append(Subcategory(
                id=sub["id"], name=sub["name"].strip(), description=sub["description"].strip(),
                domain=domain["id"], domain_name=domain["name"].strip(),
                domain_description=domain["description"].strip(),
                examples=tuple(e.strip() for e in examples if isinstance(e, str)),
                needs_images=sub.get("needs_images", False)))
    if errors:
        raise ValueError(f"{path}: {len(errors)} problem(s) in the taxonomy:\n  "
                         + "\n  ".join(errors))
    return found


# --------------------------------------------------------------------------- de-duplication
@dataclass(frozen=True)
class PromptProblem:
    """One line of a prompt file that was skipped, and why."""

    line: int
    id: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}{f' (id {self.id!r})' if self.id else ''}: {self.message}"


def _is_jsonl(path: Path, lines: list[bytes]) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix == ".txt":
        return False
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(b"#")),
                 b"")
    return first.startswith(b"{")


def _jsonl_row(text: str, base: Path, require_images: bool) -> tuple[dict | None, str | None,
                                                                      str | None]:
    """(row, id, problem) of one JSONL line."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, None, f"expected a JSON object, got {type(data).__name__}"
    row_id = data.get("id")
    if not isinstance(row_id, str) or not row_id.strip():
        return None, None, f"'id' must be a non-empty string, got {row_id!r}"
    request = data.get("request")
    if not isinstance(request, str) or not request.strip():
        return None, row_id, f"'request' must be a non-empty string, got {request!r}"
    images = data.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        return None, row_id, f"'images' must be a list of file paths, got {images!r}"
    for key, kind in (("domain", str), ("subcategory", str), ("needs_images", bool)):
        if key in data and not isinstance(data[key], kind):
            return None, row_id, f"'{key}' must be a {kind.__name__}, got {data[key]!r}"
    paths = [Path(p).expanduser() for p in images]
    paths = [p if p.is_absolute() else base / p for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return None, row_id, f"image file(s) not found: {missing} (relative paths are read " \
                             f"from the prompt file's folder)"
    markers = request.count(IMAGE_MARKER)
    if data.get("needs_images") and not images and require_images:
        return None, row_id, ("needs input images but 'images' is empty; attach one file per "
                              f"{IMAGE_MARKER} marker")
    if markers and (images or require_images) and markers != len(images):
        return None, row_id, (f"the request has {markers} {IMAGE_MARKER} marker(s) but "
                              f"{len(images)} image(s); give one image per marker")
    row = {**data, "id": row_id, "request": request, "images": [str(p) for p in paths],
           "needs_images": data.get("needs_images", False), "domain": data.get("domain", ""),
           "subcategory": data.get("subcategory", "")}
    return row, row_id, None


def read_prompt_file(path: str | os.PathLike, *, require_images: bool = True
                     ) -> tuple[list[dict], list[PromptProblem]]:
    """Read a prompt file as ``datagen run`` does: (usable rows, problems); unusable lines are
    skipped and each is reported with its line number (and id when it has one).

    JSONL (``.jsonl``/``.ndjson``/``.json``, or any other name whose first line starts with
    ``{``): one object per line with a non-empty string ``id`` and ``request``; optional
    ``images`` (existing files; relative paths are resolved against the file's folder and
    returned absolute), ``domain``, ``subcategory``, ``needs_images``; other keys are kept. A
    repeated id, a missing image, a ``needs_images`` row without images (unless
    ``require_images=False``) and a count of ``<image>`` markers that differs from the number of
    images are problems. Blank lines are ignored.

    Plain text (``.txt``, or a first line not starting with ``{``): one request per line, id
    ``line-00007`` from the line number; blank lines and lines starting with ``#`` are ignored;
    a line with ``<image>`` markers is a problem (text files cannot carry images).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    jsonl = _is_jsonl(path, lines)
    rows: list[dict] = []
    problems: list[PromptProblem] = []
    first_line: dict[str, int] = {}
    for number, data in enumerate(lines, 1):
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            problems.append(PromptProblem(number, None, f"not UTF-8 text ({exc.reason})"))
            continue
        if not text or (not jsonl and text.startswith("#")):
            continue
        if jsonl:
            row, row_id, problem = _jsonl_row(text, path.parent, require_images)
        elif IMAGE_MARKER in text:
            row, row_id = None, f"line-{number:05d}"
            problem = (f"the request has {IMAGE_MARKER} markers, but a plain-text prompt file "
                       f"cannot carry images; use JSONL with an 'images' list")
        else:
            row_id, problem = f"line-{number:05d}", None
            row = {"id": row_id, "request": text, "images": [], "needs_images": False,
                   "domain": "", "subcategory": ""}
        if row is not None and row_id in first_line:
            row, problem = None, f"duplicate id; line {first_line[row_id]} already uses it"
        if row is None:
            problems.append(PromptProblem(number, row_id, problem or "unusable line"))
            continue
        first_line[row_id] = number
        rows.append(row)
    return rows, problems


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
    existing: int = 0            # rows that were already in the file
    written: int = 0             # rows added by this run
    skipped: list[str] = field(default_factory=list)   # subcategories already complete
    failed: list[str] = field(default_factory=list)    # subcategories with no usable reply
    dropped_exact: int = 0
    dropped_near: int = 0
    invalid: int = 0


def build_prompt_file(taxonomy: Sequence[Subcategory], model: BaseChatModel,
                      out: str | os.PathLike, *, per_subcategory: int, seed: int = 0,
                      max_concurrency: int = 4,
                      on_progress: Callable[[SubcategoryResult], None] | None = None,
                      near_threshold: float = NEAR_THRESHOLD, attempts: int = 3
                      ) -> PromptSetSummary:
    """Generate into ``out``, resuming: subcategories that already have rows there are skipped,
    existing lines are kept verbatim, and the file is rewritten atomically after each
    subcategory. Raises ``ValueError`` when ``out`` exists but has unreadable lines (they would
    otherwise be lost), ``EndpointError`` when the teacher fails."""
    out = Path(out)
    if out.suffix.lower() == ".txt":
        raise ValueError(f"{out}: the output is JSONL, but a .txt name reads back as a plain "
                         f"list of requests; name it .jsonl")
    summary = PromptSetSummary(out)
    prefix, existing = "", []
    if out.exists() and out.stat().st_size and not _is_jsonl(out, out.read_bytes().split(b"\n")):
        raise ValueError(f"{out} exists and is not a JSONL prompt file; choose another --out")
    if out.exists():
        existing, problems = read_prompt_file(out, require_images=False)
        if problems:
            shown = "\n  ".join(map(str, problems[:10]))
            raise ValueError(f"{out} exists but {len(problems)} line(s) cannot be read, and "
                             f"resuming would rewrite the file; fix or move it first:\n  {shown}")
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

    generate_prompts(todo, model, per_subcategory=per_subcategory, seed=seed,
                     max_concurrency=max_concurrency, on_progress=save, existing=existing,
                     near_threshold=near_threshold, attempts=attempts)
    if not out.exists():
        _write_atomic(out, "")
    return summary


# --------------------------------------------------------------------------- command line

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interleave datagen prompts",
        description="Ask a teacher LLM for user requests per taxonomy subcategory, remove exact "
                    "and near duplicates, and write JSONL rows (id, request, images, "
                    "needs_images, domain, subcategory) for `datagen run`. Re-running with the "
                    "same --out skips subcategories that already have rows there.",
        epilog="Exit codes: 0 done; 1 some subcategories got no usable teacher reply (the "
               "others are written; run again to retry them); 2 bad input (taxonomy, options, "
               "unreadable existing --out); 4 teacher endpoint unreachable or refusing "
               "(finished subcategories are saved; run again to continue); 130 interrupted. "
               "The API key is read from INTERLEAVE_TEACHER_API_KEY when --teacher-api-key is "
               "not given.")
    add = parser.add_argument
    add("--taxonomy", type=Path, default=DEFAULT_TAXONOMY, metavar="FILE",
        help="taxonomy YAML (domains -> subcategories); default: the shipped "
             "training/taxonomy.yaml")
    add("--out", type=Path, required=True, metavar="FILE",
        help="output JSONL; if it exists, its subcategories are kept and skipped")
    add("--per-subcategory", type=int, default=20, metavar="N",
        help="requests to ask for per subcategory, before de-duplication (default 20)")
    add("--teacher-base-url", required=True, metavar="URL",
        help="OpenAI-compatible endpoint of the teacher, e.g. http://localhost:8000/v1")
    add("--teacher-model", required=True, metavar="NAME",
        help="model name the teacher endpoint serves")
    add("--teacher-api-key", default=None, metavar="KEY",
        help="API key (default: $INTERLEAVE_TEACHER_API_KEY, else 'EMPTY')")
    add("--concurrency", type=int, default=4, metavar="N",
        help="subcategories asked at the same time (default 4)")
    add("--seed", type=int, default=0, metavar="N",
        help="base sampling seed; each subcategory and retry derives its own (default 0)")
    add("--temperature", type=float, default=1.0, metavar="T",
        help="teacher sampling temperature; high values give more varied requests (default 1.0)")
    add("--max-tokens", type=int, default=4096, metavar="N",
        help="longest teacher reply in tokens (default 4096)")
    add("--timeout-s", type=float, default=180.0, metavar="S",
        help="seconds one teacher request may take (default 180)")
    add("--retries", type=int, default=2, metavar="N",
        help="HTTP retries on connection errors, 429 and 5xx answers (default 2)")
    add("--attempts", type=int, default=3, metavar="N",
        help="how many times in all a subcategory is asked when its replies do not parse, "
             "before it is reported as failed (default 3)")
    add("--near-duplicate-threshold", type=float, default=NEAR_THRESHOLD, metavar="F",
        help="word-bigram Jaccard similarity at or above which a request counts as a near "
             f"duplicate of an earlier one (default {NEAR_THRESHOLD})")
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
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from tools.chat import openai_model

    started = time.monotonic()
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        api_key = args.teacher_api_key or os.environ.get("INTERLEAVE_TEACHER_API_KEY", "EMPTY")
        model = openai_model(args.teacher_base_url, api_key, args.teacher_model, args.max_tokens,
                             args.temperature, args.timeout_s, args.retries)
        summary = build_prompt_file(
            taxonomy, model, args.out, per_subcategory=args.per_subcategory, seed=args.seed,
            max_concurrency=args.concurrency, on_progress=_progress,
            near_threshold=args.near_duplicate_threshold, attempts=args.attempts)
    except KeyboardInterrupt:
        print("\ninterrupted; finished subcategories are saved, run again to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except EndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{summary.out}: {summary.written} new request(s), {summary.existing} already there; "
          f"{len(summary.skipped)} subcategories skipped as complete; dropped "
          f"{summary.dropped_exact} exact and {summary.dropped_near} near duplicate(s), "
          f"{summary.invalid} unusable item(s); {time.monotonic() - started:.1f} s",
          file=sys.stderr)
    if summary.failed:
        print(f"no usable teacher reply for {len(summary.failed)} subcategories "
              f"({', '.join(summary.failed)}); run the same command again to retry them",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
