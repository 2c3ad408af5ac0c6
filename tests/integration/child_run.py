"""Run the graph in a child process, printing every progress event as a JSON line (the resume
tests SIGKILL this process at chosen events)."""

import json
import sys

from graph.context import Context
from graph.runs.runner import start_run

if __name__ == "__main__":
    settings, request, run_id = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

    def show(event):
        print(json.dumps(event), flush=True)

    outcome = start_run(request, Context(**settings), run_id=run_id, on_event=show)
    print(json.dumps({"event": "child_done", "status": outcome.status}), flush=True)
