"""Start or resume a run in a child process, printing every progress event as a JSON line (the
long-trajectory test SIGKILLs this process at chosen events, then resumes in a new one).

    python long_child.py start SETTINGS_JSON REQUEST RUN_ID
    python long_child.py resume RUNS_DIR RUN_ID

The last line is ``{"event": "child_done", "status": ..., "error": ...}`` unless the process was
killed first.
"""

import json
import sys

from graph.context import Context
from graph.runs.runner import resume_run, start_run


def show(event):
    print(json.dumps(event), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "start":
        settings, request, run_id = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
        outcome = start_run(request, Context(**settings), run_id=run_id, on_event=show)
    elif mode == "resume":
        runs_dir, run_id = sys.argv[2], sys.argv[3]
        outcome = resume_run(run_id, runs_dir, on_event=show)
    else:
        raise SystemExit(f"unknown mode {mode!r}; use start or resume")
    show(
        {
            "event": "child_done",
            "status": outcome.status,
            "error": None if outcome.error is None else repr(outcome.error),
        }
    )
