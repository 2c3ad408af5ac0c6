"""The run database: one SQLite file in the runs directory holding LangGraph checkpoints (one
thread per run) and the run registry.

Connections use WAL with a busy timeout so a Studio server, a CLI run and ``interleave list`` can
share the file without "database is locked" errors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from checkpoints.serde import BlockedCheckpointType, CompressedSerializer
from checkpoints.sqlite import connect_file, retry_locked

DATABASE_NAME = "interleave.sqlite"

__all__ = ["CompressedSerializer", "RunSaver", "connect", "database_path", "open_checkpointer"]


def _thread_of(config: Any) -> str | None:
    return ((config or {}).get("configurable") or {}).get("thread_id")


class RunSaver(SqliteSaver):
    """The SqliteSaver of the runs database, reading with the allow-listed serializer
    (``checkpoints.serde``): a checkpoint holding any other type is a ``BlockedCheckpointType``
    error that names the run it belongs to."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn, serde=CompressedSerializer())

    def get_tuple(self, config: Any) -> Any:
        try:
            return super().get_tuple(config)
        except BlockedCheckpointType as exc:
            raise exc.for_run(_thread_of(config)) from None

    def list(self, config: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from super().list(config, **kwargs)
        except BlockedCheckpointType as exc:
            raise exc.for_run(_thread_of(config)) from None

    def get_delta_channel_history(self, *, config: Any, channels: Any) -> Any:
        try:
            return super().get_delta_channel_history(config=config, channels=channels)
        except BlockedCheckpointType as exc:
            raise exc.for_run(_thread_of(config)) from None


def database_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / DATABASE_NAME


def connect(runs_dir: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the run database; with ``create=False`` a missing database is an error that says so."""
    path = database_path(runs_dir)
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(
            f"the runs folder {runs_dir} is a file, not a folder; pass --runs-dir "
            f"pointing at a folder (it is created when missing)"
        )
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no run database at {path}; start a run with `interleave run` or `interleave demo`, "
                f"or pass --runs-dir pointing at an existing runs folder"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    return connect_file(path, what="run database", fix="pass --runs-dir pointing at a runs folder of this tool")


@contextmanager
def open_checkpointer(runs_dir: str | Path) -> Iterator[RunSaver]:
    """The saver on the runs directory's database, set up and closed for you."""
    conn = connect(runs_dir)
    try:
        saver = RunSaver(conn)
        retry_locked(saver.setup)
        yield saver
    finally:
        conn.close()
