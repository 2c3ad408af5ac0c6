"""The judge's answer cache: one SQLite table of answers, so that no question is asked twice.

Why: a judge call is a paid (or GPU-bound) VLM request of seconds; data scoring, RL rewards and
benchmark reruns ask the same questions again and again. An answer depends only on what the
judge was shown and asked (the system text, the question text, every image's sha256, request
options), the judge model and its version, and the prompt version, so those make the key
(``answer_key``); a rerun reads the answer back instead of asking.

Every judge question in the project goes through this one table, whoever asks it: each half
of a semantic-consistency / perceptual-quality judgment (``tools.judge.judge.Judge.judge``) and
each benchmark rubric or score request (``Judge.ask``). A row holds the parsed value, every raw
reply, and for a failure its error and reason code; failures are stored too, and whether a
stored failure is served or asked again is the judge's policy, not this module's.

The file is shared safely through ``checkpoints.sqlite.connect_file`` (WAL, busy timeout) and
``retry_locked``; one lock around this object's connection serves the threads of one process
(a lookup or a write takes microseconds next to a judge call). The table may live in a file
with other tables: the benchmark harness keeps it in its ``results.sqlite``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from checkpoints.sqlite import connect_file, retry_locked

TABLE = "judge_answers"


def answer_key(*parts: Any) -> str:
    """The key of one answer: a sha256 over the JSON of everything that decides it.

    >>> a = answer_key("judge", "v1", "judge-m", "a red cube", ["ab" * 32])
    >>> a == answer_key("judge", "v2", "judge-m", "a red cube", ["ab" * 32]), len(a)
    (False, 64)
    """
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    """Answers by key in a SQLite file (created with its folder when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = connect_file(
            self.path, what="judge cache", fix="pass another cache path (or --out folder)", autocommit=True
        )
        retry_locked(
            lambda: self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, label TEXT, "
                "judge_model TEXT, prompt_version TEXT, data TEXT, updated_at REAL)"
            )
        )

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return retry_locked(lambda: self._conn.execute(sql, args).fetchall())

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer for ``key`` (decoded), or None."""
        rows = self._run(f"SELECT data FROM {TABLE} WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def put(self, key: str, data: dict[str, Any], *, label: str, judge_model: str, prompt_version: str) -> None:
        """Store (or replace) the answer under ``key``."""
        self._run(
            f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?)",
            (key, label, judge_model, prompt_version, json.dumps(data, ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        return self._run(f"SELECT COUNT(*) FROM {TABLE}")[0][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
