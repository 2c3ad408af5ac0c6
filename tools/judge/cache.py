"""A SQLite cache of judge verdicts, so that scoring the same images twice costs nothing.

Why: a judge call is a paid (or GPU-bound) VLM request of seconds; data scoring, RL rewards and
benchmark reruns ask the same questions again and again. A verdict depends only on the images,
the instruction, the judge model and the prompt texts, so those five things make the key
(``cache_key``), and a rerun reads the answer back instead of asking.

One row per key holds both halves of a judgment (semantic consistency and perceptual quality) as
JSON: scores, reasoning, every raw reply, and the error and reason of a failed half. Failures are
stored too; whether a stored failure is served or asked again is the judge's policy
(``tools.judge.judge``), not this module's.

The file is shared safely: WAL and a busy timeout for other processes, ``retry_locked`` for the
schema creation race, and one lock around this object's connection for the threads of one process
(a lookup or a write takes microseconds next to a judge call).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from checkpoints.sqlite import connect_file, retry_locked

TABLE = "judgments"
COLUMNS = {
    "key": str, "before": str, "after": str, "instruction": str, "judge_model": str,
    "prompt_version": str, "semantic": str, "quality": str, "overall": float, "error": str,
    "updated_at": str,
}


def cache_key(before: str, after: str, instruction: str, judge_model: str,
              prompt_version: str) -> str:
    """The key of one judgment: a sha256 over its five inputs.

    ``before`` is the before-image's sha256, or ``"blank:WxH"`` for a judgment from scratch;
    ``after`` is the after-image's sha256.

    >>> a = cache_key("blank:64x64", "ab" * 32, "a red cube", "judge-m", "v1")
    >>> a == cache_key("blank:64x64", "ab" * 32, "a red cube", "judge-m", "v2"), len(a)
    (False, 64)
    """
    fields = json.dumps([before, after, instruction, judge_model, prompt_version],
                        ensure_ascii=False)
    return hashlib.sha256(fields.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judgments by key in a SQLite file (created with its folder when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        conn = connect_file(self.path, what="judge cache", fix="pass another cache path")
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._table = self._db[TABLE]
        retry_locked(self._ensure_schema)

    def _ensure_schema(self) -> None:
        self._table.create(COLUMNS, pk="key", if_not_exists=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored row for ``key`` with its halves decoded, or None."""
        with self._lock:
            rows = list(self._table.rows_where("key = ?", [key], limit=1))
        if not rows:
            return None
        row = dict(rows[0])
        row["semantic"] = json.loads(row["semantic"]) if row["semantic"] else None
        row["quality"] = json.loads(row["quality"]) if row["quality"] else None
        return row

    def put(self, key: str, *, before: str, after: str, instruction: str, judge_model: str,
            prompt_version: str, semantic: dict[str, Any], quality: dict[str, Any],
            overall: float | None, error: str | None) -> None:
        """Store (or replace) the judgment under ``key``."""
        row = {"key": key, "before": before, "after": after, "instruction": instruction,
               "judge_model": judge_model, "prompt_version": prompt_version,
               "semantic": json.dumps(semantic, ensure_ascii=False),
               "quality": json.dumps(quality, ensure_ascii=False), "overall": overall,
               "error": error, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with self._lock:
            retry_locked(lambda: self._table.upsert(row, pk="key"))

    def __len__(self) -> int:
        with self._lock:
            return self._table.count

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
