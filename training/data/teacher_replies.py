"""Reading a teacher's reply into a list of request texts, leniently.

Why this module exists: the teacher is a sampled language model. Asked for a JSON object
``{"requests": [...]}``, it also answers with a bare JSON or Python list, a fenced block, a list
of ``{"request": ...}`` objects, or a numbered/bulleted list; each of those is read here. A reply
that still holds no list raises ``ReplyParseError`` so the caller can ask again.
"""

from __future__ import annotations

import ast
import json
import re

from tools.replies.parsing import ReplyParseError, parse_mapping, split_reply
from training.data.dedupe import normalise

_LIST_LINE = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•])\s+(.+?)\s*$")
_NUMBERING = re.compile(r"^\s*\d{1,3}[.)]\s+")
_QUOTES = "\"'“”‘’"


def _array(text: str) -> list | None:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        return None
    body = text[start : end + 1]
    try:
        value = json.loads(body, strict=False)
    except ValueError:
        try:
            value = ast.literal_eval(body) if len(body) <= 200_000 else None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
    return value if isinstance(value, list) else None


def _json_items(body: str) -> list | None:
    brace, bracket = body.find("{"), body.find("[")
    if bracket >= 0 and (brace < 0 or bracket < brace):  # a bare list comes first
        items = _array(body)
        if items is not None:
            return items
    if brace >= 0:
        try:
            mapping = parse_mapping(body)
        except ReplyParseError:
            mapping = {}
        if isinstance(mapping.get("requests"), list):
            return mapping["requests"]
        lists = [v for v in mapping.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return _array(body) if bracket >= 0 else None


def _clean(text: str) -> str:
    text = _NUMBERING.sub("", " ".join(text.split()))
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_requests(reply: str) -> tuple[list[str], int]:
    """(requests, number of unusable list items) from a teacher reply; raises
    ``ReplyParseError`` when the reply holds no list of requests.

    >>> parse_requests('```json\\n{"requests": ["Draw a frog\\'s life cycle.", 3]}\\n```')
    (["Draw a frog's life cycle."], 1)
    """
    if not isinstance(reply, str):
        raise ReplyParseError(f"the reply is a {type(reply).__name__}", reply, "not_text")
    _, body = split_reply(reply)
    items = _json_items(body)
    if items is None:
        lines = [m.group(1) for m in map(_LIST_LINE.match, body.splitlines()) if m]
        items = lines if len(lines) >= 2 else None
    if items is None:
        raise ReplyParseError("no JSON list of requests (and no numbered list) in the reply", reply, "no_answer")
    texts, invalid = [], 0
    for item in items:
        if isinstance(item, dict):  # [{"request": "..."}] is a common variant
            item = item.get("request", item.get("text"))
        text = _clean(item) if isinstance(item, str) else ""
        if normalise(text):
            texts.append(text)
        else:
            invalid += 1
    if not texts:
        raise ReplyParseError(f"the reply's list has no usable request ({len(items)} items)", reply, "schema")
    return texts, invalid
