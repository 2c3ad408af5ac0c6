"""The run database: one SQLite file in the runs directory holding LangGraph checkpoints (one
thread per run) and the run registry.

Connections use WAL with a busy timeout so a Studio server, a CLI run and ``interleave list`` can
share the file without "database is locked" errors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from checkpoints.serde import BlockedCheckpointType, CompressedSerializer
from checkpoints.shape import StateShape
from checkpoints.sqlite import connect_file, retry_locked

DATABASE_NAME = "interleave.sqlite"

__all__ = ["CompressedSerializer", "RunSaver", "connect", "database_path", "open_checkpointer"]


def _thread_of(config: Any) -> str | None:
    return ((config or {}).get("configurable") or {}).get("thread_id")


class RunSaver(SqliteSaver):
    """The SqliteSaver of the runs database, reading with the allow-listed serializer
    (``checkpoints.serde``): a checkpoint holding any other type is a ``BlockedCheckpointType``
    error that names the run it belongs to. With a ``shape`` (the graph sets its own when it is
    compiled with this saver, ``graph.builder``), every checkpoint read back and the writes
    pending on it must also have the declared types, or it is a ``MalformedCheckpoint``
    (``checkpoints.shape``). Either error comes before LangGraph uses any of it, and nothing is
    written."""

    def __init__(self, conn: sqlite3.Connection, shape: StateShape | None = None) -> None:
        super().__init__(conn, serde=CompressedSerializer())
        self.shape = shape

    def _checked(self, saved: Any, config: Any) -> Any:
        if saved is not None and self.shape is not None:
            checkpoint = saved.checkpoint
            values = checkpoint.get("channel_values", {}) if isinstance(checkpoint, Mapping) else checkpoint
            run_id = _thread_of(saved.config) or _thread_of(config)
            self.shape.check(values, saved.pending_writes or (), run_id=run_id)
        return saved

    def get_tuple(self, config: Any) -> Any:
        try:
            saved = super().get_tuple(config)
        except BlockedCheckpointType as exc:
            raise exc.for_run(_thread_of(config)) from None
        return self._checked(saved, config)

    def list(self, config: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            for saved in super().list(config, **kwargs):
                yield self._checked(saved, config)
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
