"""The run registry: one row per run (request, status, settings, counters) beside the
checkpoints, so runs can be listed, inspected and resumed with their original settings."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from datetime import datetime
from typing import Any

import sqlite_utils

from checkpoints.run_ids import printable
from checkpoints.sqlite import retry_locked

TABLE = "runs"
STATUSES = ("running", "awaiting_review", "failed", "interrupted", "finished")
COLUMNS = {
    "run_id": str,
    "request": str,
    "images": str,
    "status": str,
    "created_at": str,
    "updated_at": str,
    "settings": str,
    "steps_total": int,
    "steps_done": int,
    "generations": int,
    "critic_calls": int,
    "rejections": int,
    "error": str,
    "document_dir": str,
    "pid": int,
    "parent_run_id": str,
    "forked_at_step": int,
    "host": str,
    "origin": str,  # "server": made through a LangGraph server, which keeps its checkpoints
}
#: A lease held from another host counts as abandoned once its row has not been updated for this
#: long (a driving process updates it after every node); on this host, once its PID is gone.
STALE_LEASE_S = 600


def counters(values: dict[str, Any]) -> dict[str, int]:
    """Registry counters read off the state itself, so a node re-run after a crash is not counted twice."""
    attempts = values.get("attempts", [])
    judged = [a for a in attempts if a["verdict"] is not None]
    return {
        "steps_total": len(values.get("plan", [])),
        "steps_done": len(values.get("accepted", [])),
        "generations": len(attempts),
        "critic_calls": len(judged),
        "rejections": sum(a["verdict"]["success"] is not True for a in judged),
    }


class RunNotFoundError(LookupError):
    pass


class MalformedRunRow(ValueError):
    """A registry row holding what interleave never writes there (a settings column that is not
    a JSON object, an unknown status, text in a counter): a tampered or foreign runs database.
    Reading such a row names the run, the column and the fix; nothing is changed."""

    def __init__(self, run_id: Any, column: str, problem: str) -> None:
        self.run_id, self.column = run_id, column
        super().__init__(
            f"the registry row of run {printable(run_id)} holds {problem} in its {column!r} column, which "
            f"interleave never writes (a tampered or foreign runs database; nothing was changed). Restore "
            f"the runs folder from a copy you trust, or delete that run's row."
        )


_KINDS = {str: "text", int: "a whole number", float: "a fraction", bytes: "bytes"}

#: What ``RunRegistry.list`` reports as the status of a row that cannot be read (``error`` says why).
UNREADABLE = "unreadable"


class RunBusyError(ValueError):
    """Another live process drives the run (it holds the run's lease)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lease_held(pid: int, lease_host: str | None, updated_at: str | None, me: int, host: str) -> bool:
    if (lease_host or host) == host:
        return pid != me and _pid_alive(pid)
    try:
        age = time.time() - datetime.strptime(updated_at or "", "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return False
    return age < STALE_LEASE_S


class RunRegistry:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.db = sqlite_utils.Database(conn)
        self.table = self.db[TABLE]
        retry_locked(self._ensure_schema)

    def _ensure_schema(self) -> None:
        if not self.table.exists():
            self.table.create(COLUMNS, pk="run_id", if_not_exists=True)
            self.table.create_index(["created_at"], if_not_exists=True)
        else:  # a database from an older version: add the columns it lacks, keep its rows
            for name, kind in COLUMNS.items():
                if name not in self.table.columns_dict:
                    self.table.add_column(name, kind)

    def ensure_new(self, run_id: str) -> None:
        if self.exists(run_id):
            raise ValueError(
                f"a run with id {run_id!r} already exists; choose another --run-id or `interleave resume {run_id}`"
            )

    def create(
        self, run_id: str, request: str, images: list[str], settings: dict[str, Any], *, origin: str | None = None
    ) -> None:
        """A new row; ``origin`` ("server") is written with it, so no row is ever seen without it."""
        self.ensure_new(run_id)
        now = _now()
        self.table.insert(
            {
                "run_id": run_id,
                "request": request,
                "images": json.dumps(images),
                "status": "running",
                "created_at": now,
                "updated_at": now,
                "settings": json.dumps(settings),
                "steps_total": 0,
                "steps_done": 0,
                "generations": 0,
                "critic_calls": 0,
                "rejections": 0,
                "error": None,
                "document_dir": None,
                "pid": os.getpid(),
                "origin": origin,
            }
        )

    def claim(self, run_id: str) -> None:
        """Take the run's lease for this process (status running, our PID and host), or raise
        ``RunBusyError`` when another live process holds it, so two ``resume`` processes never
        drive one run. The check and the write are one IMMEDIATE transaction. A lease is stale,
        and taken over, when its process is gone (same host) or its row has not been updated for
        ``STALE_LEASE_S`` (another host)."""
        me, host = os.getpid(), socket.gethostname()
        conn = self.db.conn

        def attempt() -> None:
            if conn.in_transaction:
                conn.commit()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    f"SELECT status, pid, host, updated_at FROM {TABLE} WHERE run_id = ?", (run_id,)
                ).fetchone()
                if row and row[0] == "running" and row[1] and _lease_held(row[1], row[2], row[3], me, host):
                    where = f" on {row[2]}" if row[2] and row[2] != host else ""
                    raise RunBusyError(
                        f"run {run_id} is being driven by PID {row[1]}{where}; wait for it to end "
                        f"or stop that process, then `interleave resume {run_id}`"
                    )
                conn.execute(
                    f"UPDATE {TABLE} SET status = 'running', error = NULL, pid = ?, host = ?, "
                    f"updated_at = ? WHERE run_id = ?",
                    (me, host, _now(), run_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        retry_locked(attempt)

    def exists(self, run_id: str) -> bool:
        return bool(self.table.count_where("run_id = ?", [run_id]))

    def update(self, run_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown registry fields {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status {fields['status']!r} is not one of {STATUSES}")
        self.table.update(run_id, {**fields, "updated_at": _now()})

    def get(self, run_id: str) -> dict[str, Any]:
        try:
            row = self.table.get(run_id)
        except sqlite_utils.db.NotFoundError:
            raise RunNotFoundError(
                f"no run with id {run_id!r} in this runs folder; `interleave list` shows the runs there"
            ) from None
        return self._decode(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest rows; one that cannot be read is listed as ``UNREADABLE`` with the reason
        in ``error`` (and empty settings, images and counters), so it hides no other run."""
        rows = self.table.rows_where(order_by="created_at desc, rowid desc", limit=limit)
        listed = []
        for row in rows:
            try:
                listed.append(self._decode(row))
            except MalformedRunRow as exc:
                listed.append(
                    {name: None for name in COLUMNS}
                    | {"run_id": str(row.get("run_id")), "request": "", "settings": {}, "images": []}
                    | {"status": UNREADABLE, "error": str(exc), "created_at": str(row.get("created_at") or "")}
                )
        return listed

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        run_id = row.get("run_id")
        for name, kind in COLUMNS.items():  # SQLite stores whatever an UPDATE gives it
            value = row.get(name)
            if value is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
                raise MalformedRunRow(
                    run_id, name, f"{_KINDS.get(type(value), 'a value')} where {_KINDS[kind]} belongs"
                )
        if not isinstance(row.get("request"), str):
            raise MalformedRunRow(run_id, "request", "no request")
        if row["status"] not in STATUSES:
            raise MalformedRunRow(run_id, "status", f"the status {printable(repr(row['status']))}")
        row["settings"] = _json_column(row, "settings", "{}", dict, "a JSON object")
        row["images"] = _json_column(row, "images", "[]", list, "a JSON list of paths")
        if not all(isinstance(path, str) for path in row["images"]):
            raise MalformedRunRow(run_id, "images", "a non-text entry where a JSON list of paths belongs")
        # A run marked running whose process is gone was killed: report it as interrupted.
        if row["status"] == "running" and not _pid_alive(row.get("pid")):
            row["status"] = "interrupted"
        return row


def _json_column(row: dict[str, Any], name: str, empty: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(row[name] or empty)
    except ValueError:
        raise MalformedRunRow(row.get("run_id"), name, f"text that is not JSON where {what} belongs") from None
    if not isinstance(value, kind):
        raise MalformedRunRow(row.get("run_id"), name, f"a JSON {type(value).__name__} where {what} belongs")
    return value
