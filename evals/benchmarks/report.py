"""The benchmark report: every configuration side by side, as JSON (the numbers) and Markdown
(the same numbers for people), rebuilt from the result store at any time.

It is written while an evaluation runs (marked partial, with what is still pending) and at its
end. Each row names the judge model, its version and the prompt version, and carries the cost of
each item: generator calls, critic calls, planner/critic VLM requests and tokens (n/a where the
backend does not report them), judge requests and tokens, and wall time, with a link to the
item's HTML trajectory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from evals.benchmarks.benchmark import Benchmark, relative_link
from evals.benchmarks.configs import Config
from evals.benchmarks.data import Item
from evals.benchmarks.store import ResultStore

FINAL = ("scored", "partial", "judge_failed", "generation_failed")
COST_KEYS = (
    "generator_calls",
    "critic_calls",
    "vlm_requests",
    "vlm_tokens",
    "judge_requests",
    "judge_tokens",
    "wall_s",
    "judge_s",
)


def _item_row(
    bench: Benchmark, item: Item, config: Config, results: ResultStore, judge: dict[str, str] | None, out_dir: Path
) -> tuple[dict[str, Any], dict | None, dict | None]:
    output = results.output(bench.name, config.name, item.id)
    result = (
        results.result(bench.name, config.name, item.id, judge["identity"], bench.prompt_version)
        if judge and output
        else None
    )
    if output is None:
        status, error = "pending", None
    elif output["status"] != "ok":
        status, error = "generation_failed", output["error"]
    elif result is None:
        status, error = "generated", None
    else:
        status, error = result["status"], result.get("error")
    cost: dict[str, Any] = {key: None for key in COST_KEYS}
    if output and output["status"] == "ok":
        made = output["cost"]
        tokens = (
            None
            if made["vlm_input_tokens"] is None or made["vlm_output_tokens"] is None
            else made["vlm_input_tokens"] + made["vlm_output_tokens"]
        )
        cost.update(
            generator_calls=made["generator_calls"],
            critic_calls=made["critic_calls"],
            vlm_requests=made["vlm_requests"],
            vlm_tokens=tokens,
            wall_s=made["wall_s"],
        )
    if result is not None:
        spent = result.get("judge", {})
        cost.update(judge_requests=spent.get("requests"), judge_tokens=spent.get("tokens"), judge_s=spent.get("wall_s"))
    row = {
        "id": item.id,
        "category": item.category,
        "status": status,
        "scores": result["scores"] if result else {},
        "error": error,
        "failures": result.get("failures", []) if result else [],
        "trajectory": relative_link(output.get("trajectory") if output else None, out_dir),
        "run_id": output.get("run_id") if output else None,
        "cost": cost,
    }
    return row, output, result


def _mean_cost(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    means = {}
    for key in COST_KEYS:
        values = [r["cost"][key] for r in rows if r["status"] not in ("pending", "generation_failed")]
        means[key] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    return means


def build_report(
    bench: Benchmark,
    items: list[Item],
    configs: list[Config],
    results: ResultStore,
    *,
    judge: dict[str, str] | None,
    out_dir: Path,
    runs_dir: Path,
    data: str,
) -> dict[str, Any]:
    """The report as data (and, for benchmarks that have one, the submission file per config)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for config in configs:
        rows, scored, unscorable, outputs = [], [], [], []
        for item in items:
            row, output, result = _item_row(bench, item, config, results, judge, out_dir)
            rows.append(row)
            if output and output["status"] == "ok":
                outputs.append((item, output))
            if row["status"] in ("scored", "partial"):
                scored.append((item, result))
            elif row["status"] == "judge_failed":
                unscorable.append((item, result))
        counts = {
            status: sum(r["status"] == status for r in rows)
            for status in ("scored", "partial", "judge_failed", "generation_failed", "generated", "pending")
        }
        exported = (
            bench.export(out_dir, config.name, outputs, runs_dir) if bench.export is not None and outputs else None
        )
        sections.append(
            {
                "name": config.name,
                "kind": config.kind,
                "overrides": config.overrides,
                "counts": counts,
                "metrics": bench.summarize(scored, unscorable),
                "cost_per_item": _mean_cost(rows),
                "submission": relative_link(str(exported) if exported else None, out_dir),
                "items": rows,
            }
        )
    done = all(r["status"] in FINAL for s in sections for r in s["items"])
    return {
        "benchmark": bench.name,
        "data": data,
        "judge": judge,
        "prompt_version": bench.prompt_version,
        "protocol": dict(bench.protocol),
        "headline": list(bench.headline),
        "written_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "complete": done,
        "configs": sections,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return (
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        + [""]
    )


def render_markdown(report: dict[str, Any]) -> str:
    judge = report["judge"] or {}
    state = "complete" if report["complete"] else "PARTIAL (still running or items pending)"
    lines = [
        f"# {report['benchmark'].upper()} report",
        "",
        f"- data: `{report['data']}`",
        f"- judge: `{judge.get('model', 'none')}`, version `{judge.get('version', 'n/a')}`; "
        f"judge prompts `{report['prompt_version']}`",
        f"- written {report['written_at']}; {state}",
    ]
    lines += [f"- {key.replace('_', ' ')}: {_fmt(value)}" for key, value in report.get("protocol", {}).items()]
    lines += ["", "## Scores", ""]
    head = report["headline"]
    cost_head = ["gen calls", "critic calls", "VLM req", "VLM tokens", "judge req", "judge tokens", "wall s", "judge s"]
    lines += _table(
        ["config", "kind", "scored", "failed", *head, *[f"{c} /item" for c in cost_head]],
        [
            [
                s["name"],
                s["kind"],
                s["counts"]["scored"] + s["counts"]["partial"],
                s["counts"]["judge_failed"] + s["counts"]["generation_failed"],
                *[s["metrics"]["headline"].get(k) for k in head],
                *[s["cost_per_item"][k] for k in COST_KEYS],
            ]
            for s in report["configs"]
        ],
    )
    lines += [
        "Settings changed per configuration: "
        + "; ".join(f"{s['name']}: {s['overrides'] or 'defaults'}" for s in report["configs"]),
        "",
    ]
    for section in report["configs"]:
        lines += [f"## {section['name']}", ""]
        if section["submission"]:
            lines += [f"Submission file: [{section['submission']}]({section['submission']})", ""]
        by_category = section["metrics"]["by_category"]
        keys = list(dict.fromkeys(k for block in by_category.values() for k in block))
        if by_category:
            lines += _table(
                ["category", *keys], [[name, *[block.get(k) for k in keys]] for name, block in by_category.items()]
            )
        score_keys = list(dict.fromkeys(k for r in section["items"] for k in r["scores"]))
        lines += _table(
            ["item", "category", "status", *score_keys, "gen calls", "VLM req", "wall s", "trajectory"],
            [
                [
                    r["id"],
                    r["category"],
                    r["status"],
                    *[r["scores"].get(k) for k in score_keys],
                    r["cost"]["generator_calls"],
                    r["cost"]["vlm_requests"],
                    r["cost"]["wall_s"],
                    f"[html]({r['trajectory']})" if r["trajectory"] else None,
                ]
                for r in section["items"]
            ],
        )
        problems = [r for r in section["items"] if r["error"]]
        if problems:
            lines += ["Failures:", ""] + [f"- {r['id']} ({r['status']}): {_fmt(r['error'])}" for r in problems] + [""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)  # a reader never sees half a report


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir``; return their paths."""
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    _write(json_path, json.dumps(report, indent=2, ensure_ascii=False))
    _write(md_path, render_markdown(report))
    return json_path, md_path
