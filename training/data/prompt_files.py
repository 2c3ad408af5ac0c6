"""Prompt files: reading the JSONL or plain-text file of requests that ``datagen run`` uses.

Why this module exists: a prompt file is written by ``datagen prompts`` or by hand, and a line
that is silently dropped is a request that silently never runs. ``read_prompt_file`` therefore
reports every unusable line as a ``PromptProblem`` with its line number and id (and skips it),
and checks what a run would otherwise fail on later: repeated ids, missing image files, and
``<image>`` markers that do not match the attached images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_MARKER = "<image>"


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
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(b"#")), b"")
    return first.startswith(b"{")


def _jsonl_row(text: str, base: Path, require_images: bool) -> tuple[dict | None, str | None, str | None]:
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
        return (
            None,
            row_id,
            f"image file(s) not found: {missing} (relative paths are read from the prompt file's folder)",
        )
    markers = request.count(IMAGE_MARKER)
    if data.get("needs_images") and not images and require_images:
        return None, row_id, (f"needs input images but 'images' is empty; attach one file per {IMAGE_MARKER} marker")
    if markers and (images or require_images) and markers != len(images):
        return (
            None,
            row_id,
            (
                f"the request has {markers} {IMAGE_MARKER} marker(s) but "
                f"{len(images)} image(s); give one image per marker"
            ),
        )
    row = {
        **data,
        "id": row_id,
        "request": request,
        "images": [str(p) for p in paths],
        "needs_images": data.get("needs_images", False),
        "domain": data.get("domain", ""),
        "subcategory": data.get("subcategory", ""),
    }
    return row, row_id, None


def read_prompt_file(path: str | os.PathLike, *, require_images: bool = True) -> tuple[list[dict], list[PromptProblem]]:
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
    if b"\x00" in raw[:65536]:
        # A binary file (an image, an archive) decodes line by line into a few lucky "requests";
        # refuse it whole instead of running them.
        raise ValueError(
            f"{path} is not a prompt file: it holds binary data (NUL bytes). Pass a "
            f'JSONL file (one {{"id", "request"}} object per line) or plain text, one '
            f"request per line"
        )
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
            problem = (
                f"the request has {IMAGE_MARKER} markers, but a plain-text prompt file "
                f"cannot carry images; use JSONL with an 'images' list"
            )
        else:
            row_id, problem = f"line-{number:05d}", None
            row = {"id": row_id, "request": text, "images": [], "needs_images": False, "domain": "", "subcategory": ""}
        if row is not None and row_id in first_line:
            row, problem = None, f"duplicate id; line {first_line[row_id]} already uses it"
        if row is None:
            problems.append(PromptProblem(number, row_id, problem or "unusable line"))
            continue
        first_line[row_id] = number
        rows.append(row)
    return rows, problems
