"""Benchmark: resume latency (process start to first new node) with a database holding many runs,
and the database size of one 30-step run.

Offline, like bench_orchestration: the tiny random-weight klein pipeline on CPU and the scripted
planner/critic over real HTTP (a K-step plan; the critic rejects step 2's first attempt once).

  1. A runs folder whose database holds --runs-in-db finished runs, each a real --filler-steps
     step run made with graph.runs.runner.start_run (not copies), plus one --steps step run started in a
     child process and SIGKILLed once step --kill-at-step was accepted (at the first event of the
     step after it). The database is then folded (wal_checkpoint TRUNCATE) and copied aside.
  2. --repeats times: put that copy back (every measurement resumes the same state), start a fresh
     ``python -c`` process that imports graph.runs.runner, loads the pipeline (timed on its own: the
     torch/diffusers import and from_pretrained, i.e. "model loading"), then calls resume_run and
     stops at the resumed node's first image. Times are wall clock from just before the process was
     spawned. One last resume runs to the end and must finish the run.
  3. One uninterrupted --steps step run in the same database: file growth (database + WAL after a
     wal_checkpoint(TRUNCATE)) and the bytes of its thread's checkpoint and write rows.

Targets (from the issue): <= 1 s from process start to the first new node excluding model loading,
<= 2 MB per 30-step run.

    python -m evals.perf.resume [--runs-in-db 100] [--repeats 5] [--out figures.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from evals.perf.orchestration import db_bytes, request_for, respond

TARGET_S = 1.0
TARGET_BYTES = 2 * 1024 * 1024
LONG_RUN_ID = "long-killed"
CLEAN_RUN_ID = "long-clean"
CHILD_TIMEOUT_S = 300

# A run started in a child process, printing its events as JSON lines (the parent SIGKILLs it).
START_CODE = r"""
import json, sys
from graph.context import Context
from graph.runs.runner import start_run
settings, request, run_id = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
start_run(request, Context(**settings), run_id=run_id, on_event=lambda e: print(json.dumps(e), flush=True))
"""

# One timed resume in a fresh process. argv: spawn time (parent's clock), runs dir, run id, mode
# ("measure": stop at the resumed node's first image; "finish": run to the end).
RESUME_CODE = r"""
import time
t_main = time.time()
import json, os, sys
spawned, runs_dir, run_id, mode = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
from graph.runs.runner import resume_run
t_imports = time.time()
from contextlib import closing
from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
with closing(connect(runs_dir, create=False)) as conn:
    settings = RunRegistry(conn).get(run_id)["settings"]
from tools.generator import diffusion
t_load = time.time()
diffusion.load_pipeline(settings["generator_model"], settings["device"], settings["dtype"])
t_loaded = time.time()
marks = {}

def report(**extra):
    print(json.dumps({"spawned": spawned, "main": t_main, "imports": t_imports, "load": t_load,
                      "loaded": t_loaded, "enter": t_enter, **marks, **extra}), flush=True)

def on_event(event):
    now = time.time()
    if "first_event" not in marks:
        marks.update(first_event=now, first_event_name=event["event"], first_step=event.get("step_number"))
    if event["event"] == "image_ready" and "first_image" not in marks:
        marks["first_image"] = now
        if mode == "measure":
            report(status="stopped at the first image")
            os._exit(0)

t_enter = time.time()
outcome = resume_run(run_id, runs_dir, on_event=on_event)
report(status=outcome.status, error=None if outcome.error is None else repr(outcome.error))
"""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.perf.resume",
        description="Resume latency (fresh process start to the first new node, with and without model "
        "loading) with a run database holding many runs, and the database size of one "
        "30-step run; tiny pipeline on CPU, scripted planner/critic. Targets: <= 1 s to the "
        "first new node excluding model loading, <= 2 MB per 30-step run.",
    )
    p.add_argument(
        "--runs-in-db", type=int, default=100, help="finished runs in the database before the killed run (default 100)"
    )
    p.add_argument(
        "--filler-steps", type=int, default=3, help="plan length of those runs, made with start_run (default 3)"
    )
    p.add_argument(
        "--steps", type=int, default=30, help="plan length of the killed run and of the size run (default 30)"
    )
    p.add_argument(
        "--kill-at-step", type=int, default=15, help="the killed run dies once this step is accepted (default 15)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed resumes, each a fresh process (default 5)")
    p.add_argument("--size", type=int, default=64, help="image width and height, a multiple of 16, >= 64 (default 64)")
    p.add_argument("--out", help="also write every figure as JSON to this path")
    p.add_argument(
        "--runs-dir", help="an empty or new folder for pipeline, database and images (default: temp, removed)"
    )
    return p


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def fold_wal(db: Path) -> int:
    """Fold the WAL into the database file; return database + WAL bytes."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def restore(backup: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def start_and_kill(settings: dict, request: str, kill_before_step: int, log: Path) -> list[dict]:
    """Start a run in a child process; SIGKILL it at the first event of ``kill_before_step``."""
    events = []
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", START_CODE, json.dumps(settings), request, LONG_RUN_ID],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=child_env(),
        )
        try:
            for line in child.stdout:
                if not line.startswith("{"):
                    continue
                events.append(json.loads(line))
                if events[-1].get("step_number") == kill_before_step:
                    child.send_signal(signal.SIGKILL)
                    break
            child.wait(timeout=CHILD_TIMEOUT_S)
        finally:
            if child.poll() is None:
                child.kill()
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"the run to kill ended before step {kill_before_step} (rc {child.returncode}); "
            f"see {log}:\n{log.read_text()[-2000:]}"
        )
    return events


def timed_resume(runs_dir: Path, mode: str, log: Path) -> dict:
    spawned = time.time()
    with open(log, "w") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", RESUME_CODE, repr(spawned), str(runs_dir), LONG_RUN_ID, mode],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"resume child failed (rc {done.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    t = json.loads(lines[-1])
    load = t["loaded"] - t["load"]
    return {
        "status": t["status"],
        "first_event": f"{t.get('first_event_name')} step {t.get('first_step')}",
        "interpreter_s": t["main"] - t["spawned"],
        "imports_s": t["imports"] - t["main"],
        "settings_read_s": t["load"] - t["imports"],
        "model_load_s": load,
        "to_resume_entered_excl_model_s": t["enter"] - t["spawned"] - load,
        "resume_to_first_event_s": t["first_event"] - t["enter"],
        "resume_to_first_image_s": t["first_image"] - t["enter"],
        "to_first_node_excl_model_s": t["first_event"] - t["spawned"] - load,
        "to_first_node_incl_model_s": t["first_event"] - t["spawned"],
    }


def import_breakdown(top: int = 6) -> list[tuple[str, float]]:
    """Seconds of ``import graph.runs.runner`` per top-level package (self times summed), one process."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import graph.runs.runner"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=CHILD_TIMEOUT_S,
    )
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(m.group(1)) / 1e6
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:top]


def median_of(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(args, how: str, timing: dict, first_event: str, size: dict, db_before: int, imports: list) -> None:
    mb = 1024 * 1024
    print(f"\nresume latency: fresh process each time, median (min-max) of {args.repeats}; {how}")
    rows = [
        ("(a) process start -> resume_run entered, excl. model load", "to_resume_entered_excl_model_s"),
        ("      of which interpreter start", "interpreter_s"),
        ("      of which import graph.runs.runner", "imports_s"),
        ("      of which run settings read", "settings_read_s"),
        ("model load (torch + diffusers import, from_pretrained)", "model_load_s"),
        ("(b) resume_run entered -> first event of the new node", "resume_to_first_event_s"),
        ("    resume_run entered -> that node's image ready", "resume_to_first_image_s"),
        ("process start -> first new node, incl. model load", "to_first_node_incl_model_s"),
    ]
    for label, key in rows:
        s = timing[key]
        print(f"  {label:58s} {s['median']:6.3f} s ({s['min']:.3f}-{s['max']:.3f})")
    print(
        f"  (the new node's first event: {first_event}; import graph.runs.runner by package, one "
        f"process: " + ", ".join(f"{name} {sec:.2f} s" for name, sec in imports) + ")"
    )
    print(
        f"database: {db_before / mb:.1f} MB with {args.runs_in_db} finished {args.filler_steps}-step runs "
        f"and the killed run; one uninterrupted {args.steps}-step run: {size['generations']} attempts, "
        f"{size['checkpoints']} checkpoints, largest {size['largest_checkpoint'] / 1024:.1f} KB, "
        f"writes {size['write_bytes'] / 1024:.0f} KB"
    )
    latency = timing["to_first_node_excl_model_s"]["median"]
    verdict = lambda ok: "meets" if ok else "MISSES"
    print(f"\n  {'figure':62s} {'measured':>10s}   target")
    print(
        f"  {'process start -> first new node, excluding model loading':62s} {latency:8.3f} s   "
        f"<= {TARGET_S:.0f} s ({verdict(latency <= TARGET_S)})"
    )
    print(
        f"  {f'database file growth per {args.steps}-step run (db + WAL, folded)':62s} "
        f"{size['file_growth'] / mb:7.2f} MB   <= {TARGET_BYTES // mb} MB "
        f"({verdict(size['file_growth'] <= TARGET_BYTES)})"
    )
    print(
        f"  {'checkpoint + write rows of that run (table bytes)':62s} "
        f"{size['table_bytes'] / mb:7.2f} MB   <= {TARGET_BYTES // mb} MB "
        f"({verdict(size['table_bytes'] <= TARGET_BYTES)})"
    )


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if (
        args.runs_in_db < 0
        or args.filler_steps < 1
        or args.repeats < 1
        or args.size < 64
        or args.size % 16
        or not 1 <= args.kill_at_step < args.steps
    ):
        raise SystemExit(
            "--runs-in-db must be >= 0, --filler-steps and --repeats >= 1, --kill-at-step "
            "between 1 and --steps - 1, and --size a multiple of 16 of at least 64"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect, database_path, open_checkpointer
    from graph.builder import build_graph
    from graph.runs.demo import demo_context
    from graph.runs.runner import start_run
    from tools.generator.diffusion import silence_library_progress_bars
    from tools.doubles.scripted_chat import ScriptedChatServer
    from tools.doubles.tiny_klein import save_tiny_klein

    silence_library_progress_bars()
    if args.runs_dir and Path(args.runs_dir).exists() and any(Path(args.runs_dir).iterdir()):
        raise SystemExit(f"--runs-dir {args.runs_dir} is not empty; give a new or empty folder")
    temp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="bench-resume-")
    root = Path(args.runs_dir or temp.name)
    runs_dir = root / "runs"
    db = database_path(runs_dir)
    how = (
        f"database with {args.runs_in_db} finished {args.filler_steps}-step runs (each made with "
        f"start_run, not copied) + the {args.steps}-step run, killed (SIGKILL, child process) once step "
        f"{args.kill_at_step} was accepted; the database is restored from a copy before every resume"
    )
    try:
        pipeline = save_tiny_klein(root / "_model" / "tiny-flux2-klein")
        with ScriptedChatServer(respond) as server:
            context = demo_context(str(runs_dir), server.base_url, pipeline, width=args.size, height=args.size)
            started = time.perf_counter()
            for i in range(args.runs_in_db):
                outcome = start_run(request_for(args.filler_steps), context, run_id=f"filler-{i:04d}")
                if outcome.status != "finished":
                    raise RuntimeError(f"filler run failed: {outcome.error!r}")
                if (i + 1) % 25 == 0 or i + 1 == args.runs_in_db:
                    print(
                        f"  {i + 1}/{args.runs_in_db} finished runs in the database "
                        f"({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )

            events = start_and_kill(
                context.to_record(), request_for(args.steps), args.kill_at_step + 1, root / "killed-run.log"
            )
            with open_checkpointer(runs_dir) as saver:
                values = build_graph(saver).get_state({"configurable": {"thread_id": LONG_RUN_ID}}).values
            accepted = len(values.get("accepted", []))
            print(
                f"  {args.steps}-step run killed after {len(events)} events with {accepted} steps accepted", flush=True
            )
            if accepted != args.kill_at_step:
                raise RuntimeError(f"expected {args.kill_at_step} accepted steps at the kill, found {accepted}")
            db_before = fold_wal(db)
            backup = root / "killed-state.sqlite"
            shutil.copyfile(db, backup)

            runs = []
            for r in range(args.repeats):
                restore(backup, db)
                runs.append(timed_resume(runs_dir, "measure", root / f"resume-{r}.log"))
                print(
                    f"  resume {r + 1}/{args.repeats}: first new node after "
                    f"{runs[-1]['to_first_node_excl_model_s']:.3f} s excl. model load "
                    f"({runs[-1]['model_load_s']:.2f} s model load; {runs[-1]['first_event']})",
                    flush=True,
                )
            restore(backup, db)
            final = timed_resume(runs_dir, "finish", root / "resume-final.log")
            with closing(connect(runs_dir)) as conn:
                row = RunRegistry(conn).get(LONG_RUN_ID)
            if final["status"] != "finished" or row["steps_done"] != args.steps:
                raise RuntimeError(
                    f"the resumed run did not finish: {final['status']}, {row['steps_done']}/{args.steps} steps"
                )
            print(
                f"  a last resume ran the killed run to the end: {row['status']}, "
                f"{row['steps_done']}/{args.steps} steps",
                flush=True,
            )

            before = fold_wal(db)
            outcome = start_run(request_for(args.steps), context, run_id=CLEAN_RUN_ID)
            if outcome.status != "finished":
                raise RuntimeError(f"size run failed: {outcome.error!r}")
            after = fold_wal(db)
            with closing(connect(runs_dir)) as conn:
                generations = RunRegistry(conn).get(CLEAN_RUN_ID)["generations"]
            size = {
                **db_bytes(str(runs_dir), CLEAN_RUN_ID, generations),
                "file_growth": after - before,
                "file_before": before,
                "file_after": after,
            }
        imports = import_breakdown()
    finally:
        if temp is not None:
            temp.cleanup()

    keys = [k for k in runs[0] if k.endswith("_s")]
    timing = {k: median_of(runs, k) for k in keys}
    first_events = sorted({r["first_event"] for r in runs})
    report(args, how, timing, ", ".join(first_events), size, db_before, imports)
    if args.out:
        figures = {
            **vars(args),
            "how": how,
            "timing": timing,
            "raw": runs,
            "final_resume": final,
            "database_bytes_before_resume": db_before,
            "size": size,
            "import_breakdown_s": imports,
            "targets": {"to_first_node_excl_model_s": TARGET_S, "bytes_per_run": TARGET_BYTES},
        }
        Path(args.out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
