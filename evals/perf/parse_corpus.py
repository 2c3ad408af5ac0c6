"""How many messy model replies do the parsers read? Runs ``parse_plan``/``parse_verdict`` over a
corpus of realistic replies (tests/data/messy_replies.jsonl by default) and prints the parse rate
over the entries that should parse, the outcomes by reason code, and any entry whose outcome
disagrees with its label. The same ``check`` backs the corpus unit test.

Corpus line: ``{"id", "kind": "plan"|"verdict", "reply", "expect": "ok"|<reason code>, "note"}``
plus, for ``expect == "ok"``, the fields to compare: ``steps`` and ``first_prompt`` (plan),
``success`` and ``refine_prompt`` (verdict).

    python -m evals.perf.parse_corpus [--corpus FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tools.replies.parsing import ReplyParseError, parse_plan, parse_verdict

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "messy_replies.jsonl"


def load_corpus(path: str | Path = CORPUS) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What parsing the entry's reply gives, in the corpus's field names."""
    if entry["kind"] == "plan":
        _, steps = parse_plan(entry["reply"])
        return {"steps": len(steps), "first_prompt": steps[0]["prompt"]}
    _, success, refine = parse_verdict(entry["reply"])
    return {"success": success, "refine_prompt": refine}


def check(entry: dict[str, Any]) -> dict[str, Any]:
    """Parse one corpus entry: {id, expect, got ("ok" or a reason code), agrees, detail}."""
    try:
        fields = _fields(entry)
    except ReplyParseError as exc:
        return {
            "id": entry["id"],
            "expect": entry["expect"],
            "got": exc.reason,
            "agrees": exc.reason == entry["expect"],
            "detail": str(exc),
        }
    wrong = {k: v for k, v in fields.items() if k in entry and entry[k] != v}
    return {
        "id": entry["id"],
        "expect": entry["expect"],
        "got": "ok",
        "agrees": entry["expect"] == "ok" and not wrong,
        "detail": f"fields differ: {wrong}" if wrong else "",
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    should_parse = [r for r in results if r["expect"] == "ok"]
    parsed = [r for r in should_parse if r["agrees"]]
    return {
        "entries": len(results),
        "should_parse": len(should_parse),
        "parsed": len(parsed),
        "parse_rate": len(parsed) / len(should_parse) if should_parse else None,
        "outcomes": dict(sorted(Counter(r["got"] for r in results).items())),
        "labels_agree": sum(r["agrees"] for r in results),
        "disagreements": [r for r in results if not r["agrees"]],
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS), help="JSONL corpus of labelled replies")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    summary = summarise([check(entry) for entry in load_corpus(args.corpus)])
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(
            f"parse rate: {summary['parsed']}/{summary['should_parse']} replies that should parse "
            f"({summary['parse_rate']:.1%})"
        )
        print(f"labels agree: {summary['labels_agree']}/{summary['entries']}")
        print("outcomes: " + ", ".join(f"{k}={v}" for k, v in summary["outcomes"].items()))
        for r in summary["disagreements"]:
            print(f"  {r['id']}: expected {r['expect']}, got {r['got']} {r['detail']}")
    return 0 if not summary["disagreements"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
