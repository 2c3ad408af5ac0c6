"""The run database: one SQLite file in the runs directory holding LangGraph checkpoints (one
thread per run) and the run registry.

Connections use WAL with a busy timeout so a Studio server, a CLI run and ``interleave list`` can
share the file without "database is locked" errors.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from checkpoints.sqlite import connect_file, retry_locked

DATABASE_NAME = "interleave.sqlite"


COMPRESSED_SUFFIX = "+zlib"
COMPRESS_FROM_BYTES = 512  # smaller blobs are stored as they are


class CompressedSerializer(JsonPlusSerializer):
    """LangGraph's serializer with zlib on top for blobs of 512 bytes or more.

    SqliteSaver stores the full state in every checkpoint, so the database grows with (steps x
    checkpoints); the state is mostly repetitive text (prompts, reasoning, hashes) and compresses
    several times over. The type tag records the compression, so databases written without it
    still load.
    """

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, data = super().dumps_typed(obj)
        if len(data) >= COMPRESS_FROM_BYTES:
            return kind + COMPRESSED_SUFFIX, zlib.compress(data, 6)
        return kind, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind.endswith(COMPRESSED_SUFFIX):
            return super().loads_typed((kind[: -len(COMPRESSED_SUFFIX)], zlib.decompress(payload)))
        return super().loads_typed(data)


def database_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / DATABASE_NAME


def connect(runs_dir: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the run database; with ``create=False`` a missing database is an error that says so."""
    path = database_path(runs_dir)
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no run database at {path}; start a run with `interleave run` or `interleave demo`, "
                f"or pass --runs-dir pointing at an existing runs folder")
        path.parent.mkdir(parents=True, exist_ok=True)
    return connect_file(path, what="run database",
                        fix="pass --runs-dir pointing at a runs folder of this tool")


@contextmanager
def open_checkpointer(runs_dir: str | Path) -> Iterator[SqliteSaver]:
    """A SqliteSaver on the runs directory's database, set up and closed for you."""
    conn = connect(runs_dir)
    try:
        saver = SqliteSaver(conn, serde=CompressedSerializer())
        retry_locked(saver.setup)
        yield saver
    finally:
        conn.close()
