"""Benchmark: orchestration cost per node transition, and checkpoint-database bytes per attempt.

Runs the whole graph offline (tiny random-weight klein pipeline on CPU, scripted planner/critic
over real HTTP) in three variants, interleaved round by round so drift hits all of them alike:

  baseline  build_graph(None), streamed with start_run's stream modes: no persistence at all
  memory    build_graph(InMemorySaver()), durability="sync": LangGraph's checkpoint bookkeeping
  sqlite    graph.runs.runner.start_run: SqliteSaver (sync) + a registry update per node update

Overhead per transition = (variant - baseline) / transitions. "non-model" is the wall time minus
the nodes' model work (generate_s + critique_s recorded in the state), which takes most of the
model's run-to-run noise out of the comparison. Image-store and document writes happen in every
variant (the nodes do them), so the image store is also timed on its own.

    python -m evals.perf.orchestration [--runs 5] [--steps 6] [--size 64] [--out figures.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

from tools.doubles import demo_script
from tools.doubles.scripted_chat import message_text

TARGET_MS = 10.0
TARGET_BYTES = 20 * 1024
_STEPS = re.compile(r"in (\d+) steps")
LABELS = {
    "baseline": "no checkpointer (baseline)",
    "memory": "in-memory saver, sync",
    "sqlite": "sqlite saver + registry, sync",
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.perf.orchestration",
        description="Orchestration cost per node transition (checkpoint write + image store + registry "
        "update) with the tiny pipeline and the scripted server on CPU, against a "
        "no-checkpointer baseline measured in the same run; plus checkpoint-database bytes "
        "per attempt. Targets: <= 10 ms per transition, <= 20 KB per attempt.",
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--steps", type=int, default=6, help="plan length K (default 6)")
    p.add_argument(
        "--long-steps",
        type=int,
        default=30,
        help="plan length of one extra sqlite run: bytes/attempt growth (default 30; 0 skips)",
    )
    p.add_argument("--size", type=int, default=64, help="image width and height, a multiple of 16, >= 64 (default 64)")
    p.add_argument("--out", help="also write every figure as JSON to this path")
    p.add_argument("--runs-dir", help="folder for pipeline, databases, images (default: temp, removed)")
    return p


def request_for(steps: int) -> str:
    return f"Show how to fold a paper crane in {steps} steps"


def respond(body: dict) -> str:
    """Scripted planner with a K-step plan (K read from the request) and the demo's critic, which
    rejects the first attempt of step 2 once: every run has one regeneration."""
    if body.get("model") == demo_script.CRITIC_MODEL:
        return demo_script.respond(body)
    k = int(_STEPS.search(message_text(body["messages"][-1])).group(1))
    base = demo_script.demo_plan("fold a paper crane")
    steps = [
        base[n - 1]
        if n <= 2
        else {
            "step_number": n,
            "step_name": f"Fold {n}",
            "instruction": f"Make fold number {n}.",
            "prompt": f"Make fold number {n}; keep the table, lighting and camera unchanged",
            "auxiliary_text": None,
        }
        for n in range(1, k + 1)
    ]
    return (
        f"<think>{k} image operations, each editing the one before.</think>"
        f"<answer>{json.dumps({'execution_plan': steps})}</answer>"
    )


def run_sqlite(ctx, request: str) -> dict:
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect, open_checkpointer
    from graph.builder import build_graph
    from graph.runs.runner import start_run

    started = time.perf_counter()
    outcome = start_run(request, ctx)
    total = time.perf_counter() - started
    if outcome.status != "finished":
        raise RuntimeError(f"benchmark run failed: {outcome.error!r}")
    with closing(connect(ctx.runs_dir)) as conn:
        row = RunRegistry(conn).get(outcome.run_id)
    with open_checkpointer(ctx.runs_dir) as saver:
        values = build_graph(saver).get_state({"configurable": {"thread_id": outcome.run_id}}).values
    model = sum(a["generate_s"] + (a["critique_s"] or 0) for a in values["attempts"])
    transitions = 2 + row["generations"] + row["critic_calls"] + row["steps_total"]  # + plan, compose
    return {
        "total_s": total,
        "transitions": transitions,
        "model_s": model,
        "generations": row["generations"],
        "run_id": outcome.run_id,
        "values": values,
    }


def run_stream(ctx, request: str, run_id: str, checkpointer) -> dict:
    from graph.builder import build_graph

    # durability="sync" without a checkpointer warns, then raises at the end (langgraph 1.2.22)
    durability = {"durability": "sync"} if checkpointer is not None else {}
    transitions, model = 0, 0.0
    started = time.perf_counter()
    graph = build_graph(checkpointer)  # start_run builds its graph inside the timing too
    for mode, chunk in graph.stream(
        {"request": request, "images": [], "run_id": run_id},
        {"configurable": {"thread_id": run_id}},
        context=ctx,
        stream_mode=["updates", "custom"],
        **durability,
    ):
        if mode == "updates":
            transitions += len(chunk)
            for node, update in chunk.items():  # the critic's update repeats the attempt's generate_s
                for a in (update or {}).get("attempts", []):
                    model += a["generate_s"] if node == "generate" else a["critique_s"] or 0
    return {"total_s": time.perf_counter() - started, "transitions": transitions, "model_s": model}


def db_bytes(runs_dir: str, run_id: str, generations: int) -> dict:
    import sqlite3

    from checkpoints.saver import database_path

    path = database_path(runs_dir)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fold the WAL into the database file
        n_cp, cp_bytes, cp_max, wr_bytes = conn.execute(
            "SELECT count(*), sum(length(checkpoint) + length(metadata)), max(length(checkpoint)), (SELECT "
            "sum(length(value)) FROM writes WHERE thread_id = ?1) FROM checkpoints WHERE thread_id = ?1",
            (run_id,),
        ).fetchone()
    wal = path.with_name(path.name + "-wal")
    file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return {
        "checkpoints": n_cp,
        "checkpoint_bytes": cp_bytes,
        "write_bytes": wr_bytes,
        "table_bytes": cp_bytes + wr_bytes,
        "largest_checkpoint": cp_max,
        "file_bytes": file_bytes,
        "generations": generations,
        "table_per_attempt": (cp_bytes + wr_bytes) / generations,
        "file_per_attempt": file_bytes / generations,
    }


def timed_ms(fn, repeat: int) -> float:
    def once(i: int) -> float:
        started = time.perf_counter()
        fn(i)
        return (time.perf_counter() - started) * 1000

    return statistics.median(once(i) for i in range(repeat))


def time_parts(root: Path, size: int, final_values: dict) -> dict:
    from langgraph.checkpoint.base.id import uuid6
    from PIL import Image

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect, open_checkpointer
    from graph.builder import build_graph
    from tools.store.images import ImageStore

    store = ImageStore(root / "parts")  # distinct noise images: the content-addressed store skips repeats
    images = [Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)) for _ in range(50)]
    parts = {"image_store_put_ms": timed_ms(lambda i: store.put(images[i]), 50)}

    def setup(i: int) -> None:  # what start_run does once per run before the first node
        with closing(connect(root / "parts" / f"setup-{i}")) as conn:
            RunRegistry(conn).create("bench", "bench", [], {})
        with open_checkpointer(root / "parts" / f"setup-{i}"):
            pass

    parts["run_setup_ms"] = timed_ms(setup, 20)
    with closing(connect(root / "parts")) as conn:
        registry = RunRegistry(conn)
        registry.create("bench", "bench", [], {})
        parts["registry_update_ms"] = timed_ms(
            lambda i: registry.update(
                "bench", steps_total=6, steps_done=i % 6, generations=i, critic_calls=i, rejections=1
            ),
            200,
        )
    config = {"configurable": {"thread_id": "bench-final-state"}}
    with open_checkpointer(root / "parts") as saver:
        graph = build_graph(saver)
        graph.update_state(config, final_values, as_node="compose")
        parts["sqlite_update_state_ms"] = timed_ms(
            lambda i: graph.update_state(config, final_values, as_node="compose"), 50
        )
        latest = saver.get_tuple(config)
        parts["sqlite_saver_put_ms"] = timed_ms(
            lambda i: saver.put(latest.config, {**latest.checkpoint, "id": str(uuid6())}, latest.metadata, {}), 50
        )
    return parts


def summarize(runs: list[dict], baseline: list[dict] | None) -> dict:
    wall = [r["total_s"] * 1000 / r["transitions"] for r in runs]
    rest = [(r["total_s"] - r["model_s"]) * 1000 / r["transitions"] for r in runs]
    out = {
        "ms_per_transition": statistics.median(wall),
        "min": min(wall),
        "max": max(wall),
        "non_model_ms_per_transition": statistics.median(rest),
        "non_model_min": min(rest),
        "non_model_max": max(rest),
        "total_s": statistics.median(r["total_s"] for r in runs),
        "transitions": runs[0]["transitions"],
    }
    if baseline is not None:  # paired by round: neighbours in the interleaved schedule
        out["paired_non_model_overhead_ms"] = statistics.median(
            ((r["total_s"] - r["model_s"]) - (b["total_s"] - b["model_s"])) * 1000 / r["transitions"]
            for r, b in zip(runs, baseline)
        )
    return out


def report(args, summary: dict, parts: dict, size: dict, long: dict | None) -> None:
    base = summary["baseline"]
    print(
        f"\norchestration cost per node transition (median of {args.runs} runs, {args.steps}-step plan, "
        f"{args.size}x{args.size}, CPU, {base['transitions']} transitions/run)"
    )
    print(f"  {'':30s} {'wall (min-max)':>22s} {'non-model (min-max)':>20s}   overhead vs baseline: wall | non-model")
    for name, s in summary.items():
        line = (
            f"  {LABELS[name]:30s} {s['ms_per_transition']:5.1f} ms ({s['min']:5.1f}-{s['max']:5.1f})"
            f" {s['non_model_ms_per_transition']:5.1f} ms ({s['non_model_min']:.1f}-{s['non_model_max']:.1f})"
        )
        if name != "baseline":
            line += (
                f"   {s['ms_per_transition'] - base['ms_per_transition']:+5.1f} | "
                f"{s['paired_non_model_overhead_ms']:+4.1f} ms"
            )
        print(line + (f"   target overhead <= {TARGET_MS:.0f} ms" if name == "sqlite" else ""))
    print(
        f"  (baseline total {base['total_s']:.2f} s/run; non-model = wall minus the nodes' generate_s + "
        f"critique_s, overhead paired by round; wall swings with CPU load)"
    )
    print(
        f"parts (median): image store put {parts['image_store_put_ms']:.2f} ms · registry update "
        f"{parts['registry_update_ms']:.2f} ms · sqlite checkpoint put: update_state(final state) "
        f"{parts['sqlite_update_state_ms']:.2f} ms, raw SqliteSaver.put {parts['sqlite_saver_put_ms']:.2f} ms"
        f" · per-run setup (new db, registry row, saver setup) {parts['run_setup_ms']:.1f} ms"
    )
    runs = [(args.steps, size)] + ([(args.long_steps, long)] if long else [])
    print(
        "checkpoint db bytes per attempt: "
        + "   ".join(
            f"{k} steps: {b['table_per_attempt'] / 1024:.1f} KB (table sums) / {b['file_per_attempt'] / 1024:.1f} KB "
            f"(file)"
            for k, b in runs
        )
        + f"   target <= {TARGET_BYTES // 1024} KB"
    )
    print(
        "  (every checkpoint holds the full state: "
        + "; ".join(
            f"{k} steps: {b['generations']:.0f} attempts, {b['checkpoints']:.0f} checkpoints, largest "
            f"{b['largest_checkpoint'] / 1024:.1f} KB, writes {b['write_bytes'] / 1024:.0f} KB of "
            f"{b['table_bytes'] / 1024:.0f} KB"
            for k, b in runs
        )
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.runs < 1 or args.steps < 1 or args.long_steps < 0 or args.size < 64 or args.size % 16:
        raise SystemExit(
            "--runs and --steps must be >= 1, --long-steps >= 0, and --size a multiple of "
            "16 of at least 64 (the klein pipeline's smallest image)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.runs.demo import demo_context
    from tools.generator.diffusion import silence_library_progress_bars
    from tools.doubles.scripted_chat import ScriptedChatServer
    from tools.doubles.tiny_klein import save_tiny_klein

    silence_library_progress_bars()
    temp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="bench-orchestration-")
    root = Path(args.runs_dir or temp.name)
    counter = iter(range(10**9))
    request = request_for(args.steps)
    results: dict[str, list[dict]] = {name: [] for name in LABELS}
    sizes, long = [], None
    try:
        pipeline = save_tiny_klein(root / "_model" / "tiny-flux2-klein")
        with ScriptedChatServer(respond) as server:

            def context(tag: str):  # a fresh runs dir per run: every run writes its own images and db
                return demo_context(
                    str(root / f"{tag}-{next(counter)}"), server.base_url, pipeline, width=args.size, height=args.size
                )

            def run(name: str, tag: str, req: str) -> dict:
                ctx = context(tag)
                if name == "sqlite":
                    return {**run_sqlite(ctx, req), "runs_dir": ctx.runs_dir}
                return run_stream(ctx, req, Path(ctx.runs_dir).name, InMemorySaver() if name == "memory" else None)

            print(f"warm-up: one untimed run per variant ({args.steps} steps, {args.size}x{args.size})", flush=True)
            for name in LABELS:
                run(name, "warmup", request)
            for i in range(args.runs):
                for name in LABELS:
                    r = run(name, name, request)
                    if name == "sqlite":
                        sizes.append(db_bytes(r["runs_dir"], r["run_id"], r["generations"]))
                    results[name].append(r)
                    print(
                        f"  run {i + 1}/{args.runs} {name:8s} {r['total_s']:.3f} s, {r['transitions']} transitions",
                        flush=True,
                    )
            if args.long_steps:
                r = run("sqlite", "long", request_for(args.long_steps))
                long = {
                    **db_bytes(r["runs_dir"], r["run_id"], r["generations"]),
                    "ms_per_transition": r["total_s"] * 1000 / r["transitions"],
                }
                print(
                    f"  long run ({args.long_steps} steps, sqlite) {r['total_s']:.3f} s, {r['transitions']} transitions"
                )
            parts = time_parts(root, args.size, results["sqlite"][-1]["values"])
    finally:
        if temp is not None:
            temp.cleanup()

    counts = {name: sorted({r["transitions"] for r in runs}) for name, runs in results.items()}
    if len({c for cs in counts.values() for c in cs}) != 1:
        print(f"WARNING: transition counts differ between runs: {counts}")
    summary = {
        name: summarize(runs, None if name == "baseline" else results["baseline"]) for name, runs in results.items()
    }
    size = {k: statistics.median(s[k] for s in sizes) for k in sizes[0]}
    report(args, summary, parts, size, long)
    if args.out:
        for r in results["sqlite"]:
            r.pop("values")
        figures = {
            **vars(args),
            "summary": summary,
            "parts_ms": parts,
            "raw": results,
            "bytes": {"per_run": sizes, "median": size, "long": long},
            "targets": {"ms_per_transition": TARGET_MS, "bytes_per_attempt": TARGET_BYTES},
        }
        Path(args.out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
