"""Opening a SQLite file the one way every database of this project is opened: the run
database (checkpoints and registry), the judge cache and the benchmark result stores.

Several processes share these files (a Studio server, CLI runs, ``interleave list``, training
ranks scoring with one judge cache), so every connection gets WAL, a busy timeout and
``synchronous=NORMAL``, and the two "database is locked" answers that SQLite gives at once,
without waiting, are retried (``retry_locked``). A file that is not SQLite is reported as a
``ValueError`` naming the file and the fix, and is left as it is.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000


def retry_locked(action: Callable[[], T]) -> T:
    """Run ``action``, retrying while SQLite says the database is locked, up to the busy timeout.

    The busy timeout covers ordinary writes, but SQLite answers "database is locked" at once,
    without waiting, in two cases that concurrent runs on a fresh runs folder hit: switching the
    file to WAL while another connection opens it, and creating the schema while another
    connection's snapshot is older than the newest write. Both pass on a retry.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def connect_file(
    path: str | Path, *, what: str = "database", fix: str = "pass another path", autocommit: bool = False
) -> sqlite3.Connection:
    """A shared-use connection to the SQLite file ``path`` (its folder is created when missing).

    ``what`` and ``fix`` word the error for a file that is not SQLite ("the judge cache X cannot be
    opened as SQLite (...); pass another cache path or delete the file"). ``autocommit`` opens the
    connection without implicit transactions (every statement commits on its own).
    """
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path,
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_MS / 1000,
        **({"isolation_level": None} if autocommit else {}),
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        # NORMAL is durable against a killed process in WAL mode; only a power cut can drop the
        # newest transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ValueError(f"the {what} {path} cannot be opened as SQLite ({exc}); {fix} or delete the file") from exc
    return conn
