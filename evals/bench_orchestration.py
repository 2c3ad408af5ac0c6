"""Benchmark: orchestration cost per node transition, and checkpoint bytes per attempt.

Runs the whole graph offline (tiny random-weight klein pipeline on CPU, scripted planner/critic
over real HTTP) in three variants, interleaved round by round so drift hits all of them alike:

  baseline  build_graph(None), streamed with the same stream modes as start_run: no persistence
  memory    build_graph(InMemorySaver()), durability="sync": LangGraph checkpoint bookkeeping
  sqlite    graph.runner.start_run: SqliteSaver (sync) + registry row updated per node update

Orchestration overhead per transition = (variant - baseline) / transitions. "non-model" is the
wall time minus the time the nodes spent in model work (generate_s + critique_s from the state),
which removes most of the model's run-to-run noise from the comparison. Image-store writes and
document writes happen in every variant (the nodes do them), so they are timed on their own.

    python -m evals.bench_orchestration [--runs 5] [--steps 6] [--size 64] [--out figures.json]
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

from tools import demo_script
from tools.scripted_chat import message_text

TARGET_MS = 10.0
TARGET_BYTES = 20 * 1024
_STEPS = re.compile(r"in (\d+) steps")
VARIANTS = ("baseline", "memory", "sqlite")
LABELS = {"baseline": "no checkpointer (baseline)", "memory": "in-memory saver, sync",
          "sqlite": "sqlite saver + registry, sync"}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.bench_orchestration",
        description="Orchestration cost per node transition (checkpoint write + image store + "
                    "registry update) with the tiny pipeline and the scripted server on CPU, "
                    "against a no-checkpointer baseline measured in the same run; plus checkpoint "
                    "database bytes per attempt. Targets: <= 10 ms/transition, <= 20 KB/attempt.")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--steps", type=int, default=6, help="plan length K (default 6)")
    p.add_argument("--long-steps", type=int, default=30,
                   help="plan length of one extra sqlite run for bytes/attempt growth (default 30; 0 skips)")
    p.add_argument("--size", type=int, default=64, help="image width and height, multiple of 16 (default 64)")
    p.add_argument("--out", help="also write every figure as JSON to this path")
    p.add_argument("--runs-dir", help="folder for the pipeline, databases and images (default: a temp dir, removed)")
    return p


def request_for(steps: int) -> str:
    return f"Show how to fold a paper crane in {steps} steps"


def respond(body: dict) -> str:
    """Scripted planner with a K-step plan (K read from the request); the demo's critic, which
    rejects the first attempt of step 2 once, so every run has one regeneration."""
    if body.get("model") == demo_script.CRITIC_MODEL:
        return demo_script.respond(body)
    k = int(_STEPS.search(message_text(body["messages"][-1])).group(1))
    base = demo_script.demo_plan("fold a paper crane")
    steps = [base[n - 1] if n <= 2 else
             {"step_number": n, "step_name": f"Fold {n}", "instruction": f"Make fold number {n}.",
              "prompt": f"Make fold number {n}; keep the table, lighting and camera unchanged",
              "auxiliary_text": None} for n in range(1, k + 1)]
    return (f"<think>{k} image operations, each editing the one before.</think>"
            f"<answer>{json.dumps({'execution_plan': steps})}</answer>")


def model_seconds(attempts: list[dict]) -> float:
    return sum((a.get("generate_s") or 0) + (a.get("critique_s") or 0) for a in attempts)


def run_sqlite(ctx, request: str) -> dict:
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect, open_checkpointer
    from graph.builder import build_graph
    from graph.runner import start_run

    started = time.perf_counter()
    outcome = start_run(request, ctx)
    total = time.perf_counter() - started
    if outcome.status != "finished":
        raise RuntimeError(f"benchmark run failed: {outcome.error!r}")
    with closing(connect(ctx.runs_dir)) as conn:
        row = RunRegistry(conn).get(outcome.run_id)
    with open_checkpointer(ctx.runs_dir) as saver:
        values = build_graph(saver).get_state({"configurable": {"thread_id": outcome.run_id}}).values
    transitions = 2 + row["generations"] + row["critic_calls"] + row["steps_total"]  # + plan, compose
    return {"total_s": total, "transitions": transitions, "model_s": model_seconds(values["attempts"]),
            "generations": row["generations"], "run_id": outcome.run_id, "values": values}


def run_stream(ctx, request: str, run_id: str, checkpointer) -> dict:
    from graph.builder import build_graph

    transitions, model = 0, 0.0
    # durability="sync" without a checkpointer warns, then fails at the end (langgraph 1.2.22)
    durability = {"durability": "sync"} if checkpointer is not None else {}
    started = time.perf_counter()
    graph = build_graph(checkpointer)
    for mode, chunk in graph.stream({"request": request, "images": [], "run_id": run_id},
                                    {"configurable": {"thread_id": run_id}}, context=ctx,
                                    stream_mode=["updates", "custom"], **durability):
        if mode == "updates":
            transitions += len(chunk)
            for node, update in chunk.items():  # the critic's update repeats the attempt's generate_s
                for a in (update or {}).get("attempts", []):
                    model += a["generate_s"] if node == "generate" else a.get("critique_s") or 0
    total = time.perf_counter() - started
    return {"total_s": total, "transitions": transitions, "model_s": model}


def db_bytes(runs_dir: str, run_id: str, generations: int) -> dict:
    import sqlite3

    from checkpoints.saver import database_path

    path = database_path(runs_dir)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        n_cp, cp_bytes, cp_max = conn.execute(
            "SELECT count(*), coalesce(sum(length(checkpoint) + length(metadata)), 0), "
            "coalesce(max(length(checkpoint)), 0) FROM checkpoints WHERE thread_id = ?", (run_id,)).fetchone()
        n_wr, wr_bytes = conn.execute("SELECT count(*), coalesce(sum(length(value)), 0) FROM writes "
                                      "WHERE thread_id = ?", (run_id,)).fetchone()
    wal = path.with_name(path.name + "-wal")
    file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return {"checkpoints": n_cp, "writes": n_wr, "checkpoint_bytes": cp_bytes, "write_bytes": wr_bytes,
            "table_bytes": cp_bytes + wr_bytes,
            "largest_checkpoint": cp_max, "file_bytes": file_bytes, "generations": generations,
            "table_per_attempt": (cp_bytes + wr_bytes) / generations, "file_per_attempt": file_bytes / generations}


def timed_ms(fn, repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def time_parts(root: Path, size: int, final_values: dict) -> dict:
    from langgraph.checkpoint.base.id import uuid6
    from PIL import Image

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect, open_checkpointer
    from graph.builder import build_graph
    from tools.image_store import ImageStore

    store = ImageStore(root / "parts")  # distinct noise images: the content-addressed store skips repeats
    images = [Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)) for _ in range(50)]
    parts = {"image_store_put_ms": timed_ms(lambda i: store.put(images[i]), 50)}
    with closing(connect(root / "parts")) as conn:
        registry = RunRegistry(conn)
        registry.create("bench", "bench", [], {})
        parts["registry_update_ms"] = timed_ms(lambda i: registry.update(
            "bench", steps_total=6, steps_done=i % 6, generations=i, critic_calls=i, rejections=1), 200)
    config = {"configurable": {"thread_id": "bench-final-state"}}
    with open_checkpointer(root / "parts") as saver:
        graph = build_graph(saver)
        graph.update_state(config, final_values, as_node="compose")
        parts["sqlite_update_state_ms"] = timed_ms(
            lambda i: graph.update_state(config, final_values, as_node="compose"), 50)
        latest = saver.get_tuple(config)
        parts["sqlite_saver_put_ms"] = timed_ms(lambda i: saver.put(
            latest.config, {**latest.checkpoint, "id": str(uuid6())}, latest.metadata, {}), 50)
    return parts


def summarize(runs: list[dict], baseline: list[dict] | None) -> dict:
    per = [r["total_s"] * 1000 / r["transitions"] for r in runs]
    non_model = [(r["total_s"] - r["model_s"]) * 1000 / r["transitions"] for r in runs]
    out = {"ms_per_transition": statistics.median(per), "min": min(per), "max": max(per),
           "non_model_ms_per_transition": statistics.median(non_model),
           "non_model_min": min(non_model), "non_model_max": max(non_model),
           "total_s": statistics.median(r["total_s"] for r in runs), "transitions": runs[0]["transitions"]}
    if baseline is not None:  # paired by round: same position in the interleaved schedule
        out["paired_overhead_ms"] = statistics.median(
            (r["total_s"] - b["total_s"]) * 1000 / r["transitions"] for r, b in zip(runs, baseline))
        out["paired_non_model_overhead_ms"] = statistics.median(
            ((r["total_s"] - r["model_s"]) - (b["total_s"] - b["model_s"])) * 1000 / r["transitions"]
            for r, b in zip(runs, baseline))
    return out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.demo import demo_context
    from tools.diffusion import silence_library_progress_bars
    from tools.scripted_chat import ScriptedChatServer
    from tools.tiny_klein import save_tiny_klein

    silence_library_progress_bars()
    temp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="bench-orch-")
    root = Path(args.runs_dir or temp.name)
    pipeline = save_tiny_klein(root / "_model" / "tiny-flux2-klein")
    counter = iter(range(10**6))
    request = request_for(args.steps)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    sizes = []
    with ScriptedChatServer(respond) as server:
        def context(tag: str):  # a fresh runs dir per run: every run writes its images and db
            return demo_context(str(root / f"{tag}-{next(counter)}"), server.base_url, pipeline,
                                width=args.size, height=args.size)

        print(f"warm-up: one untimed run per variant ({args.steps} steps, {args.size}x{args.size}) ...",
              flush=True)
        run_sqlite(context("warmup"), request)
        run_stream(context("warmup"), request, "warmup-baseline", None)
        run_stream(context("warmup"), request, "warmup-memory", InMemorySaver())
        for i in range(args.runs):
            for variant in VARIANTS:
                ctx = context(variant)
                if variant == "sqlite":
                    r = run_sqlite(ctx, request)
                    sizes.append(db_bytes(ctx.runs_dir, r["run_id"], r["generations"]))
                else:
                    r = run_stream(ctx, request, f"{variant}-{i}",
                                   InMemorySaver() if variant == "memory" else None)
                results[variant].append(r)
                print(f"  run {i + 1}/{args.runs} {variant:8s} {r['total_s']:.3f} s "
                      f"{r['transitions']} transitions", flush=True)
        long = None
        if args.long_steps:
            ctx = context("long")
            r = run_sqlite(ctx, request_for(args.long_steps))
            long = {**db_bytes(ctx.runs_dir, r["run_id"], r["generations"]),
                    "ms_per_transition": r["total_s"] * 1000 / r["transitions"], "transitions": r["transitions"]}
            print(f"  long run {args.long_steps} steps {r['total_s']:.3f} s {r['transitions']} transitions")
        parts = time_parts(root, args.size, results["sqlite"][-1]["values"])
    if temp is not None:
        temp.cleanup()

    counts = {v: {r["transitions"] for r in results[v]} for v in VARIANTS}
    if len(set().union(*counts.values())) != 1:
        print(f"WARNING: transition counts differ between variants: {counts}")
    base = summarize(results["baseline"], None)
    summary = {"baseline": base, "memory": summarize(results["memory"], results["baseline"]),
               "sqlite": summarize(results["sqlite"], results["baseline"])}
    bytes_k = {k: statistics.median(s[k] for s in sizes) for k in sizes[0]}

    print(f"\norchestration cost per node transition (median of {args.runs} runs, {args.steps}-step plan, "
          f"{args.size}x{args.size}, CPU, {base['transitions']} transitions/run)")
    print(f"  {'':30s} {'wall (min-max)':>20s} {'non-model (min-max)':>19s}   overhead vs baseline: wall | non-model")
    for v in VARIANTS:
        s = summary[v]
        line = (f"  {LABELS[v]:30s} {s['ms_per_transition']:5.1f} ms ({s['min']:4.1f}-{s['max']:5.1f})"
                f" {s['non_model_ms_per_transition']:4.1f} ms ({s['non_model_min']:.1f}-{s['non_model_max']:.1f})")
        if v != "baseline":
            line += (f"   {s['ms_per_transition'] - base['ms_per_transition']:+5.1f} | "
                     f"{s['paired_non_model_overhead_ms']:+4.1f} ms")
            if v == "sqlite":
                line += f"   target overhead <= {TARGET_MS:.0f} ms"
        print(line)
    print(f"  (baseline total {base['total_s']:.2f} s/run; non-model = wall minus the nodes' generate_s + "
          f"critique_s, paired by round; wall swings with CPU load)")
    print(f"parts (median): image store put {parts['image_store_put_ms']:.2f} ms"
          f" · registry update {parts['registry_update_ms']:.2f} ms"
          f" · sqlite update_state(final state) {parts['sqlite_update_state_ms']:.2f} ms"
          f" · raw SqliteSaver.put {parts['sqlite_saver_put_ms']:.2f} ms")
    line = (f"checkpoint db bytes per attempt: {args.steps} steps: {bytes_k['table_per_attempt'] / 1024:.1f} KB "
            f"(table sums) / {bytes_k['file_per_attempt'] / 1024:.1f} KB (file)")
    if long:
        line += (f"   {args.long_steps} steps: {long['table_per_attempt'] / 1024:.1f} KB / "
                 f"{long['file_per_attempt'] / 1024:.1f} KB")
    print(line + f"   target <= {TARGET_BYTES // 1024} KB")
    desc = [f"{args.steps} steps: {bytes_k['checkpoints']:.0f} checkpoints, largest "
            f"{bytes_k['largest_checkpoint'] / 1024:.1f} KB, writes {bytes_k['write_bytes'] / 1024:.0f} KB of "
            f"{bytes_k['table_bytes'] / 1024:.0f} KB"]
    if long:
        desc.append(f"{args.long_steps} steps: {long['checkpoints']} checkpoints, largest "
                    f"{long['largest_checkpoint'] / 1024:.1f} KB, writes {long['write_bytes'] / 1024:.0f} KB of "
                    f"{long['table_bytes'] / 1024:.0f} KB")
    print("  (every checkpoint stores the full state: " + "; ".join(desc) + ")")

    if args.out:
        for r in results["sqlite"]:
            r.pop("values", None)
        figures = {"runs": args.runs, "steps": args.steps, "size": args.size, "summary": summary,
                   "parts_ms": parts, "bytes": {"per_run": sizes, "median": bytes_k, "long": long},
                   "raw": results, "targets": {"ms_per_transition": TARGET_MS, "bytes_per_attempt": TARGET_BYTES}}
        Path(args.out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
