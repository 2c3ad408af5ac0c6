"""The resumable result store of a benchmark run: one SQLite file (``<out>/results.sqlite``).

Two tables: ``outputs`` (an item's images, text, trajectory and cost under one configuration,
or why it could not be made) and ``results`` (an item's scores under one judge identity and one
prompt version). The judge's own answers live in the same file, in the table of
``tools.judge.cache`` (one answer cache for the whole project). WAL and a busy timeout through
``checkpoints.sqlite.connect_file``; one lock around the connection for this process's threads.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from checkpoints.sqlite import connect_file, retry_locked


class ResultStore:
    """Outputs and item results of a benchmark run (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        conn = connect_file(self.path, what="results file", fix="pass another --out folder", autocommit=True)
        for ddl in (
            "CREATE TABLE IF NOT EXISTS outputs (benchmark TEXT, config TEXT, item TEXT, "
            "status TEXT, data TEXT, error TEXT, updated_at REAL, "
            "PRIMARY KEY (benchmark, config, item))",
            "CREATE TABLE IF NOT EXISTS results (benchmark TEXT, config TEXT, item TEXT, "
            "judge_model TEXT, prompt_version TEXT, status TEXT, data TEXT, updated_at REAL, "
            "PRIMARY KEY (benchmark, config, item, judge_model, prompt_version))",
        ):
            retry_locked(lambda ddl=ddl: conn.execute(ddl))
        self._conn = conn

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return retry_locked(lambda: self._conn.execute(sql, args).fetchall())

    def output(self, benchmark: str, config: str, item: str) -> dict[str, Any] | None:
        rows = self._run(
            "SELECT status, data, error FROM outputs WHERE benchmark=? AND config=? AND item=?",
            (benchmark, config, item),
        )
        return {"status": rows[0][0], "error": rows[0][2], **json.loads(rows[0][1] or "{}")} if rows else None

    def put_output(
        self, benchmark: str, config: str, item: str, status: str, data: dict[str, Any], error: str | None = None
    ) -> None:
        self._run(
            "INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?,?)",
            (benchmark, config, item, status, json.dumps(data), error, time.time()),
        )

    def result(
        self, benchmark: str, config: str, item: str, judge_model: str, prompt_version: str
    ) -> dict[str, Any] | None:
        rows = self._run(
            "SELECT data FROM results WHERE benchmark=? AND config=? AND item=? AND judge_model=? AND prompt_version=?",
            (benchmark, config, item, judge_model, prompt_version),
        )
        return json.loads(rows[0][0]) if rows else None

    def put_result(
        self, benchmark: str, config: str, item: str, judge_model: str, prompt_version: str, data: dict[str, Any]
    ) -> None:
        self._run(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?)",
            (benchmark, config, item, judge_model, prompt_version, data["status"], json.dumps(data), time.time()),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
