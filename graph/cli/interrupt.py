"""Ctrl-C that stops the command within a few seconds, whatever it is waiting for.

The first Ctrl-C raises ``KeyboardInterrupt`` in the main thread as usual, so the runner records
the run as interrupted and the command exits 130. But a model request in flight on a worker
thread (LangGraph runs nodes on an executor that waits for its tasks; the OpenAI client waits up
to ``vlm_timeout_s``) would keep the process alive until the request ends: minutes. So if the
process is still alive ``grace_s`` seconds later, or at a second Ctrl-C, every run this process
was driving is marked ``interrupted`` in the registry and the process exits at once.

That is safe for the runs: each node's result is checkpointed before the next node starts
(``durability="sync"``, and SQLite survives an abrupt exit), so the interrupted node simply runs
again on ``interleave resume``. The request in flight is abandoned, not half-recorded.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import closing
from typing import Any, TextIO

EXIT_INTERRUPTED = 130
GRACE_S = 2.0


def mark_interrupted(runs_dir: str, since: str) -> list[str]:
    """Mark this process's running runs as interrupted; return the ids of every run this
    process left interrupted since ``since`` (also those the runner marked itself)."""
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect

    try:
        with closing(connect(runs_dir, create=False)) as conn:
            registry = RunRegistry(conn)
            rows = list(
                registry.table.rows_where(
                    "pid = ? AND (status = 'running' OR (status = 'interrupted' AND updated_at >= ?))",
                    [os.getpid(), since],
                    order_by="created_at",
                )
            )
            for row in rows:
                if row["status"] == "running":
                    registry.update(row["run_id"], status="interrupted", error="interrupted by the user")
    except (FileNotFoundError, LookupError):  # no runs folder yet: nothing was started
        return []
    return [row["run_id"] for row in rows]


def interrupted_message(run_ids: list[str]) -> str:
    if len(run_ids) == 1:
        return f"interrupted; run {run_ids[0]} is saved at its last completed node (interleave resume {run_ids[0]})"
    if run_ids:
        return (
            f"interrupted; runs {', '.join(run_ids)} are saved at their last completed node (interleave resume RUN_ID)"
        )
    return "interrupted"


class StopOnInterrupt:
    """Install the Ctrl-C handling above for the duration of a command (main thread only)."""

    def __init__(self, runs_dir: str, *, grace_s: float = GRACE_S, stream: TextIO | None = None):
        self.runs_dir = runs_dir
        self.grace_s = grace_s
        self.stream = stream or sys.stderr
        self.count = 0
        self.reported = threading.Event()
        self._previous: Any = None
        self._timer: threading.Timer | None = None
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def report(self) -> None:
        """Say which runs were interrupted and how to continue them (once)."""
        if not self.reported.is_set():
            self.reported.set()
            self.stream.write("\n" + interrupted_message(mark_interrupted(self.runs_dir, self.since)) + "\n")
            self.stream.flush()

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        # The timer stays armed after a Ctrl-C: the process may still hang at exit, joining
        # the executor thread that waits for the abandoned request.
        if self._previous is not None and self.count == 0:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # the registry's time format
            self._timer = threading.Timer(self.grace_s, self.give_up)
            self._timer.daemon = True
            self._timer.start()
            raise KeyboardInterrupt
        self.give_up()

    def give_up(self) -> None:
        """Record the runs as interrupted and leave now, without waiting for requests in flight."""
        try:
            self.report()
        finally:
            os._exit(EXIT_INTERRUPTED)
