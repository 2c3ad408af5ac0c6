"""Near-JSON repair: finding one ``{...}`` object in a model's answer text and reading it.

Why this module exists: sampled language models write answer objects that are almost, but not
quite, JSON: Python dicts (single quotes, ``True``/``None``), smart quotes, bare keys, trailing
commas, comments, an object JSON-escaped once more, prose and code fences around it, example
objects before the real one, and objects cut off at the token limit. Reading those safely is a
job of its own, apart from knowing the reply format (``<think>``/``<answer>`` tags) and the
plan and verdict contracts, which stay in ``tools.replies.parsing``:

* repairs are made only where they are unambiguous (quotes, commas, literals, keys), by one
  linear pass over the text (``_to_json``), never by backtracking regular expressions;
* an object that never closes is reported as truncated, never completed, and stops the search
  (every later ``{`` lies inside it);
* the search is bounded: at most ``MAX_CANDIDATES`` ``{`` positions and about
  ``MAX_OBJECT_CHARS`` of text, nesting at most ``MAX_DEPTH`` levels, and ``ast.literal_eval``
  is a fallback for objects of at most ``LITERAL_EVAL_CHARS`` characters only, so a runaway
  reply costs milliseconds and ``literal_eval`` only sees small, shallow text.

Failures are ``_Failure`` exceptions carrying a reason code of ``tools.replies.parsing.REASONS``;
``tools.replies.parsing`` turns them into ``ReplyParseError``. The limits are importable from
``tools.replies.parsing`` too.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

MAX_OBJECT_CHARS = 300_000  # one answer object
MAX_DEPTH = 32  # a plan is 3 levels deep
MAX_CANDIDATES = 32  # "{" positions tried per answer text
LITERAL_EVAL_CHARS = 50_000  # ast.literal_eval is a fallback for small objects only


class _Failure(Exception):
    """Internal: why one piece of text yielded no object (turned into a ReplyParseError)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_NEXT = re.compile(r"""["'“”‘’{}\[\],#/\\]|[A-Za-z_]""")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s*")
_OPEN_QUOTES = {'"': '"', "'": "'", "“": '”“"', "”": '”“"', "‘": "’‘'", "’": "’‘'"}
_STRING_BODY = {q: re.compile(r"[^%s\\]*(?:\\.[^%s\\]*)*" % (c, c), re.S) for q, c in _OPEN_QUOTES.items()}
_CLOSES_VALUE = frozenset(",:}]\"'“”‘’#/")
_LITERALS = {
    "true": "true",
    "True": "true",
    "false": "false",
    "False": "false",
    "null": "null",
    "None": "null",
    "none": "null",
    "NULL": "null",
}
_ESCAPE = re.compile(r"\\(U[0-9a-fA-F]{8}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "a": "\a",
    "/": "/",
    '"': '"',
    "'": "'",
    "\\": "\\",
    "\n": "",
}


def _unescape_char(match: re.Match) -> str:
    code = match.group(1)
    if code[0] in "uUx" and len(code) > 1:
        value = int(code[1:], 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _SIMPLE_ESCAPES.get(code, match.group(0))


def _unescape(body: str) -> str:
    """Decode JSON and Python string escapes leniently (an unknown escape stays as written)."""
    text = _ESCAPE.sub(_unescape_char, body)
    try:  # join "\ud83d\ude00"-style surrogate pairs into one character
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        return text


def _peek(text: str, index: int) -> str:
    """The next non-space character at or after ``index`` ("" at the end)."""
    index = _SPACE.match(text, index).end()
    return text[index] if index < len(text) else ""


def _string_end(text: str, index: int) -> int:
    """Given an opening quote at ``index``, the index of its closing quote. A quote that is not
    followed by ``, : } ]``, another quote or the end is taken as part of the text (models write
    ``"a sign reading "OPEN""``). Raises _Failure("truncated") if the string never closes."""
    body, closers = _STRING_BODY[text[index]], _OPEN_QUOTES[text[index]]
    position = index + 1
    while True:
        position = body.match(text, position).end()
        if position >= len(text) or text[position] not in closers:
            raise _Failure("truncated", "the reply ends inside a string")
        following = _peek(text, position + 1)
        if not following or following in _CLOSES_VALUE:
            return position
        position += 1


def _to_json(text: str, start: int) -> tuple[str, int]:
    """Rewrite the object opening at ``text[start] == "{"`` as strict JSON, in one pass.

    Outside strings: single, smart or double quotes become JSON strings; bare keys get quoted;
    True/False/None become JSON literals; trailing commas and ``//``/``#`` comments go.
    Returns (json text, index after the closing brace). Raises _Failure for an object that
    never closes ("truncated"), is nested too deep or is too long.
    """
    out: list[str] = []
    depth, index, limit = 0, start, min(len(text), start + MAX_OBJECT_CHARS)
    while index < limit:
        match = _NEXT.search(text, index, limit)
        if match is None:
            break
        out.append(text[index : match.start()])
        index, char = match.start(), match.group()
        if char in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Failure("too_deep", f"the object is nested more than {MAX_DEPTH} levels")
            out.append(char)
        elif char in "}]":
            depth -= 1
            out.append(char)
            if depth == 0:
                return "".join(out), index + 1
        elif char in _OPEN_QUOTES:
            end = _string_end(text, index)
            out.append(json.dumps(_unescape(text[index + 1 : end]), ensure_ascii=False))
            index = end
        elif char == ",":
            if _peek(text, index + 1) not in ("}", "]", ","):
                out.append(char)
        elif char == "#" or text.startswith("//", index):
            newline = text.find("\n", index)
            index = (newline if newline >= 0 else len(text)) - 1
        elif char == "\\" and text[index + 1 : index + 2] in ("n", "t", "r"):
            out.append(" ")  # a literal "\n" between tokens
            index += 1
        elif char in "/\\":
            out.append(char)
        else:
            word = _WORD.match(text, index).group()
            out.append(json.dumps(word) if _peek(text, index + len(word)) == ":" else _LITERALS.get(word, word))
            index += len(word) - 1
        index += 1
    if limit < len(text):
        raise _Failure("too_large", f"the object is longer than {MAX_OBJECT_CHARS} characters")
    raise _Failure("truncated", "the reply ends before the object closes")


_READ_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError)


def _load(raw: str, repaired: str) -> Any:
    """Read an object: as JSON, then repaired JSON, then (if small) as a Python literal."""
    for attempt in (raw, repaired):
        try:
            return json.loads(attempt, strict=False)
        except _READ_ERRORS:
            pass
    if len(raw) <= LITERAL_EVAL_CHARS:
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" and the like
                warnings.simplefilter("ignore")
                return ast.literal_eval(raw)
        except _READ_ERRORS:
            pass
    raise _Failure("syntax", "the {...} object is neither JSON nor a Python dict literal")


def _objects(text: str, key: str | None) -> dict[str, Any]:
    """The first object in ``text`` holding ``key`` (else the first object at all).

    Tries up to MAX_CANDIDATES "{" positions and about MAX_OBJECT_CHARS of text. An object that
    runs to the end of the text stops the search: every later "{" lies inside it, so reading one
    would invent an answer out of a truncated reply.
    """
    found, failure, index, scanned = None, None, text.find("{"), 0
    for _ in range(MAX_CANDIDATES):
        if index < 0 or scanned > MAX_OBJECT_CHARS:
            break
        try:
            repaired, end = _to_json(text, index)
            scanned += end - index
            value = _load(text[index:end], repaired)
        except _Failure as exc:
            failure = exc
            if exc.reason != "syntax":
                break
            index = text.find("{", index + 1)
            continue
        if isinstance(value, dict):
            if key is None or key in value:
                return value
            found = found if found is not None else value
        index = text.find("{", end)
    if found is not None:
        return found
    raise failure or _Failure("not_an_object", "the answer holds no {...} object")


def _escaped(text: str) -> str | None:
    """``{\\"key\\": …}`` (an answer JSON-escaped once more) unescaped, else None."""
    brace = text.find("{")
    if brace < 0 or not text.startswith('\\"', _SPACE.match(text, brace + 1).end()):
        return None
    return _unescape(text)


def _read_answer_text(text: str, key: str | None) -> dict[str, Any]:
    if not text.strip():
        raise _Failure("no_answer", "the answer is empty")
    if "{" not in text:
        raise _Failure("not_an_object", "the answer holds no {...} object")
    unescaped = _escaped(text)
    return _objects(unescaped if unescaped is not None else text, key)


_LEADS_OBJECT = frozenset("\n`:")


def _trailing_object(text: str, key: str | None) -> tuple[dict[str, Any], int] | None:
    """(object, where it starts) for an object holding ``key`` that ends the text (after a
    newline, fence or colon), in a reply whose ``<think>`` never closed and that has no
    ``<answer>``; else None."""
    end = len(text.rstrip().rstrip("`").rstrip())
    index = text.rfind("{", 0, end)
    for _ in range(MAX_CANDIDATES):
        if index < 0:
            return None
        before = text[:index].rstrip(" \t")
        if not before or before[-1] in _LEADS_OBJECT:
            try:
                repaired, stop = _to_json(text, index)
                value = _load(text[index:stop], repaired)
            except _Failure:
                value = None
            if isinstance(value, dict) and stop == end and (key is None or key in value):
                return value, index
        index = text.rfind("{", 0, index)
    return None
