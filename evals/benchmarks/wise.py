"""WISE (world-knowledge text-to-image): one image per prompt, in two protocols.

``interleave eval wise --wise-protocol verified`` (the default, as in the official repository
since 2026-04-19) or ``--wise-protocol legacy`` (the original release, the paper's numbers).
Official sources, github.com/PKU-YuanGroup/WISE at commit eb51174 (2026-04-25): README.md,
``vllm_eval.py`` and ``calculate_verified.py`` (added in d6bfe42, 2026-04-19), ``leadboard.md``,
``WISE_legacy/gpt_eval.py`` (last changed in 5663144, 2026-04-08) and ``WISE_legacy/Calculate.py``.

WISE_Verified (``vllm_eval.py``, ``calculate_verified.py``):

* Prompt set: ``data_verified/cultural_common_sense_verified.json`` (ids 1-400),
  ``spatio-temporal_reasoning_verified.json`` (401-640), ``natural_science_verified.json``
  (641-1000); items ``prompt_id``, ``Prompt``, ``Explanation``, ``Category``, ``Subcategory``.
  Without ``--data`` the three files of ``--wise-repo`` are read (not ``merge.json``, a copy).
* Judge prompt: the messages of ``build_evaluation_messages`` in ``--wise-repo``'s
  ``vllm_eval.py``, read at run time (``evals.benchmarks.official``): its system text, its user
  text with the item's Prompt and Explanation filled in, then the image as a PNG data URL.
* Judge request: Qwen3.5-35B-A3B served by vLLM's OpenAI API (README), ``temperature`` 0,
  ``max_tokens`` 500, ``chat_template_kwargs: {"enable_thinking": false}``; a reply is read
  after removing ``<think>...</think>`` (and a lone ``</think>``). Up to 3 tries
  (``MAX_EXTRACT_RETRIES``), each the same request at temperature 0: our ``--judge-retries 2``
  default gives the same 3, and our retries do not re-sample in this protocol.
* Score: ``extract_scores`` takes the first ``Score: 0|1`` (optional ``**`` and colon, any
  case), else a reply whose only bare ``0``/``1`` line is one line; the per-image WiScore is
  that binary score (``calculate_wiscore``).
* Categories by prompt id (``calculate_verified.py``): CULTURE 1-400, TIME 401-520, SPACE
  521-640, BIOLOGY 641-760, PHYSICS 761-880, CHEMISTRY 881-1000; a category is the mean score of
  its images, ``Overall = 0.40 CULTURE + 0.12 (TIME + SPACE + BIOLOGY + PHYSICS + CHEMISTRY)``
  (the README's formula; checked against the leaderboard: NanoBanana-Pro 0.4 * 0.8975 + 0.12 *
  (0.8167 + 0.9333 + 0.8167 + 0.8667 + 0.8750) = 0.8760).

Legacy WISE (``WISE_legacy/gpt_eval.py``, ``WISE_legacy/Calculate.py``):

* Prompt files ``WISE_legacy/data/*.json`` (items as above). Judge gpt-4o-2024-05-13,
  temperature 0, ``max_tokens`` 2000; three scores on 0-2, consistency, realism, aesthetic
  quality. With ``--wise-repo`` the judge prompt is ``build_evaluation_messages`` of
  ``WISE_legacy/gpt_eval.py`` and replies are read like its ``extract_scores``
  (``Consistency: N`` lines, else three bare 0-2 lines); without it, our own wording with an
  ``<answer>{...}</answer>`` reply (the report says so: not comparable with the leaderboard).
* ``WiScore = (0.7 consistency + 0.2 realism + 0.1 aesthetic) / 2``; categories CULTURE 1-400,
  TIME 401-567, SPACE 568-700, BIOLOGY 701-800, PHYSICS 801-900, CHEMISTRY 901-1000;
  ``overall = 0.4 culture + 0.167 time + 0.133 space + 0.1 (biology + physics + chemistry)``.

Unreadable replies, both protocols: since commit dd0b900 (2025-06-03) the official evaluators
write no score for a prompt whose replies could not be read after 3 tries (they log
"extract_fail"; the 999 placeholder scores of earlier versions are gone), and the calculators,
run with ``--category all``, refuse the overall while any prompt id is missing. Ours: such an
item is a judge failure, counted in the report; category means are over scored items, and the
overall is given only when every item of the run is scored and all six categories have items.

Where we differ on purpose: the calculators need all 1000 prompt ids; ours gives an overall for
any complete run (``--limit`` or a subset file included), which is then not comparable with the
leaderboard; the report states the number of items. Legacy ``extract_scores`` accepts any digit
(``Consistency: 5``) and folds it into the mean; ours asks again on a score outside 0-2. The
graph is asked for a single image; when the planner still plans several steps, the last step's
image is the answer. The bare generator gets the prompt as is.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.data import DataFormatError, Item, need, read_records, unique_ids
from evals.benchmarks.official import MessagesTemplate, check_repo, messages_template
from tools.judge.judge import Question
from tools.replies.parsing import ReplyParseError, read_answer

VERIFIED, LEGACY = "verified", "legacy"
PROTOCOLS = (VERIFIED, LEGACY)
PROMPT_VERSION = "wise-v1"  # our own legacy wording
REPO = "PKU-YuanGroup/WISE"
VERIFIED_FILE, LEGACY_FILE = "vllm_eval.py", "WISE_legacy/gpt_eval.py"
VERIFIED_DATA = (
    "data_verified/cultural_common_sense_verified.json",
    "data_verified/spatio-temporal_reasoning_verified.json",
    "data_verified/natural_science_verified.json",
)
CATEGORIES = (
    ("CULTURE", 1, 400, 0.4),
    ("TIME", 401, 567, 0.167),
    ("SPACE", 568, 700, 0.133),
    ("BIOLOGY", 701, 800, 0.1),
    ("PHYSICS", 801, 900, 0.1),
    ("CHEMISTRY", 901, 1000, 0.1),
)
VERIFIED_CATEGORIES = (
    ("CULTURE", 1, 400, 0.4),
    ("TIME", 401, 520, 0.12),
    ("SPACE", 521, 640, 0.12),
    ("BIOLOGY", 641, 760, 0.12),
    ("PHYSICS", 761, 880, 0.12),
    ("CHEMISTRY", 881, 1000, 0.12),
)
DIMENSIONS = ("consistency", "realism", "aesthetic_quality")
EXPECTED = "prompt_id (1-1000), Prompt and Explanation, as in PKU-YuanGroup/WISE's data files"
# vllm_eval.py's request options beside model and messages (temperature 0 is the judge's own).
VERIFIED_CALL = {"max_tokens": 500, "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
LEGACY_CALL = {"max_tokens": 2000}

SYSTEM = (
    "You audit images made by text-to-image models. You are exceptionally strict: the top "
    "score is rare and reserved for images without any flaw, and when in doubt you give the "
    "lower score. You answer in the exact format you are asked for."
)

_QUESTION = """The image above was generated from this prompt:
<prompt>
{prompt}
</prompt>
What the prompt refers to, which the image has to show:
<explanation>
{explanation}
</explanation>

Score the image on three criteria, each 0, 1 or 2.
1. consistency: does the image show exactly what the prompt, read with its explanation, asks \
for? 0 = it misses or contradicts the key content; 1 = partly right, some elements missing or \
inaccurate; 2 = every element and nuance is there, unambiguously.
2. realism: 0 = physically implausible, obviously artificial; 1 = believable but with \
noticeable flaws; 2 = indistinguishable from a real photograph, physics, materials and \
spatial relations all correct.
3. aesthetic_quality: 0 = poor composition, unappealing; 1 = acceptable composition and \
colour, nothing more; 2 = outstanding, masterpiece-level composition, palette and style.

Think it through briefly, then end your reply with exactly one answer block:
<answer>{{"consistency": 0, "realism": 0, "aesthetic_quality": 0}}</answer>
with each 0 replaced by your whole-number score."""


def category(prompt_id: int, protocol: str = LEGACY) -> str:
    """The category of a prompt id, as the protocol's official calculator assigns it.

    >>> category(1), category(567), category(568), category(1000)
    ('CULTURE', 'TIME', 'SPACE', 'CHEMISTRY')
    >>> category(520, VERIFIED), category(521, VERIFIED), category(641, VERIFIED)
    ('TIME', 'SPACE', 'BIOLOGY')
    """
    for name, first, last, _ in VERIFIED_CATEGORIES if protocol == VERIFIED else CATEGORIES:
        if first <= prompt_id <= last:
            return name
    raise ValueError(f"prompt_id {prompt_id} is outside 1-1000, so it has no WISE category")


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """The legacy WiScore of one image (0-1) from its three 0-2 scores.

    >>> round(wiscore(2, 1, 0), 6)
    0.8
    """
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


def parse_scores(text: str) -> dict[str, int]:
    """The three 0-2 scores of a reply to our own legacy prompt; anything else raises
    ReplyParseError.

    >>> parse_scores('<answer>{"consistency": 2, "realism": "1", "aesthetic_quality": 0.0}</answer>')
    {'consistency': 2, 'realism': 1, 'aesthetic_quality': 0}
    """
    _, answer = read_answer(text, "consistency")
    scores = {}
    for name in DIMENSIONS:
        value = answer.get(name)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1, 2):
            raise ReplyParseError(f"{name} must be 0, 1 or 2, got {value!r:.30}", text, "schema")
        scores[name] = int(value)
    return scores


def _without_thinking(text: str) -> str:
    """A reply as vllm_eval.py reads it: ``<think>...</think>`` and a lone ``</think>`` removed."""
    text = re.sub(r"<think>.*?</think>\s*", "", text, flags=re.DOTALL)
    return re.sub(r"</think>\s*", "", text).strip()


_VERIFIED_SCORE = re.compile(r"\*{0,2}Score\*{0,2}\s*:?\s*([01])\b", re.IGNORECASE)
_LEGACY_SCORE = re.compile(r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*:?\s*(\d)", re.IGNORECASE)


def parse_verified(text: str) -> int:
    """The binary score of a WISE_Verified reply, read as ``vllm_eval.extract_scores`` reads it:
    the first ``Score: 0|1``, else the one bare ``0``/``1`` line. Raises ReplyParseError.

    >>> parse_verified("<think>hm</think>**Score**: 1"), parse_verified("0"), parse_verified("SCORE 1")
    (1, 0, 1)
    """
    reply = _without_thinking(text)
    found = _VERIFIED_SCORE.search(reply)
    if found:
        return int(found.group(1))
    bare = re.findall(r"(?m)^\s*([01])\s*$", reply)
    if len(bare) == 1:
        return int(bare[0])
    raise ReplyParseError("no 'Score: 0' or 'Score: 1' in the reply", text, "no_answer")


def parse_legacy(text: str) -> dict[str, int]:
    """The three scores of a reply to the official legacy prompt, read as
    ``WISE_legacy/gpt_eval.extract_scores`` reads it ("Consistency: 2" lines, a later line of
    the same name winning; else the first three bare 0-2 lines), then checked to be 0-2.

    >>> parse_legacy("Consistency: 2\\nRealism: 1\\nAesthetic Quality: 0")
    {'consistency': 2, 'realism': 1, 'aesthetic_quality': 0}
    """
    text = text.replace("\\n", "\n")
    found = {name.lower().replace(" ", "_"): int(value) for name, value in _LEGACY_SCORE.findall(text)}
    if not found:
        bare = re.findall(r"(?m)^\s*([0-2])\s*$", text)
        if len(bare) >= 3:
            found = dict(zip(DIMENSIONS, map(int, bare[:3])))
    missing = [d for d in DIMENSIONS if d not in found]
    if missing:
        raise ReplyParseError(f"the reply has no {', '.join(missing)} score", text, "no_answer")
    outside = [d for d in DIMENSIONS if found[d] not in (0, 1, 2)]
    if outside:
        raise ReplyParseError(f"{outside[0]} is {found[outside[0]]}, outside 0-2", text, "schema")
    return {d: found[d] for d in DIMENSIONS}


def load(path: Path, images_root: Path | None = None, *, protocol: str = LEGACY) -> list[Item]:
    items = []
    for where, record in read_records(path):
        need(record, {"prompt_id": int, "Prompt": str, "Explanation": str}, where, EXPECTED)
        try:
            name = category(record["prompt_id"], protocol)
        except ValueError as exc:
            raise DataFormatError(f"{where}: {exc}. Expected items with {EXPECTED}") from None
        items.append(
            Item(
                str(record["prompt_id"]),
                name,
                {
                    "prompt": record["Prompt"],
                    "explanation": record["Explanation"],
                    "subcategory": record.get("Subcategory"),
                },
            )
        )
    return unique_ids(items)


def _load_verified(path: Path | None, images_root: Path | None, *, repo: Path) -> list[Item]:
    """``--data``, or the three verified prompt files of the official repository."""
    if path is not None and str(path) != "":
        return load(path, images_root, protocol=VERIFIED)
    return unique_ids([item for name in VERIFIED_DATA for item in load(repo / name, images_root, protocol=VERIFIED)])


def request(item: Item) -> tuple[str, list[str]]:
    return ("Make a single image, in one step, that shows exactly this: " + item.record["prompt"]), []


def bare_request(item: Item) -> tuple[str, str | None]:
    return item.record["prompt"], None


def pick(item: Item, document: dict[str, Any]) -> dict[str, Any]:
    made = [s["image"] for s in document["steps"] if s["image"] and s["attempts"]]
    return {"text": "", "images": made[-1:], "inputs": []}


def questions(item: Item, output: dict[str, Any], store: Any = None) -> list[Question]:
    """Our own legacy wording: images first, then the text with the answer format."""
    if not output["images"]:
        return []
    text = _QUESTION.format(prompt=item.record["prompt"], explanation=item.record["explanation"])
    return [Question("scores", text, tuple(output["images"]), parse_scores)]


def official_questions(
    item: Item, output: dict[str, Any], store: Any = None, *, template: MessagesTemplate, verified: bool
) -> list[Question]:
    """The official messages: system text, user text with the item filled in, then the image."""
    if not output["images"]:
        return []
    values = {
        "Prompt": item.record["prompt"],
        "Explanation": item.record["explanation"],
        "Subcategory": item.record["subcategory"],
    }
    unknown = [name for name in template.fields if name not in values]
    if unknown:
        raise ValueError(f"{template.source} fills in {unknown}, which a WISE item does not have")
    return [
        Question(
            "verified" if verified else "scores",
            template.render(values),
            tuple(output["images"][-1:]),
            parse_verified if verified else parse_legacy,
            system=template.system,
            text_first=template.text_first,
            call=VERIFIED_CALL if verified else LEGACY_CALL,
            resample=not verified,
        )
    ]


def score(item: Item, output: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    if not answers:
        return {"status": "judge_failed", "scores": {}, "failures": [], "error": "the run produced no image"}
    answer = answers[0]
    if answer["error"] is not None:
        return {
            "status": "judge_failed",
            "scores": {},
            "failures": [{"question": "scores", "reason": answer["reason"], "error": answer["error"]}],
            "error": f"[{answer['reason']}] {answer['error']}",
        }
    values = answer["value"]
    if isinstance(values, dict):
        scores = {**values, "wiscore": wiscore(*(values[d] for d in DIMENSIONS))}
    else:  # WISE_Verified: the binary score is the WiScore
        scores = {"score": values, "wiscore": float(values)}
    return {"status": "scored", "scores": scores, "failures": [], "error": None}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    scored: list[tuple[Item, dict[str, Any]]],
    unscorable: list[tuple[Item, dict[str, Any]]] = (),
    *,
    protocol: str = LEGACY,
) -> dict[str, Any]:
    """Mean WiScore per category and the weighted overall (None until every item is scored and
    all six categories have items)."""
    table = VERIFIED_CATEGORIES if protocol == VERIFIED else CATEGORIES
    keys = ("score",) if protocol == VERIFIED else DIMENSIONS
    by_category = {}
    for name, *_ in table:
        results = [r["scores"] for item, r in scored if item.category == name]
        if results:
            by_category[name] = {
                "wiscore": _mean([r["wiscore"] for r in results]),
                **{d: _mean([r[d] for r in results if d in r]) for d in keys},
                "items": len(results),
            }
    complete = len(by_category) == len(table) and not unscorable
    overall = sum(weight * by_category[name]["wiscore"] for name, _, _, weight in table) if complete else None
    headline = {
        "overall": overall,
        **{name.lower(): by_category.get(name, {}).get("wiscore") for name, *_ in table},
        "items": len(scored) + len(unscorable),
        "unscorable": len(unscorable),
    }
    return {"headline": headline, "by_category": by_category}


def benchmark(protocol: str = VERIFIED, repo: str | Path | None = None) -> Benchmark:
    """WISE under ``protocol``; ``repo`` is the user's copy of PKU-YuanGroup/WISE (required for
    WISE_Verified, whose judge prompt is read from it; optional for legacy)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--wise-protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    headline = ("overall", "culture", "time", "space", "biology", "physics", "chemistry", "items", "unscorable")
    common = dict(
        name="wise",
        judge_system=SYSTEM,
        request=request,
        bare_request=bare_request,
        pick=pick,
        score=score,
        headline=headline,
        summarize=functools.partial(summarize, protocol=protocol),
    )
    if protocol == VERIFIED:
        root = check_repo(repo, "--wise-repo", REPO, (VERIFIED_FILE, *VERIFIED_DATA))
        template = messages_template(root / VERIFIED_FILE, "build_evaluation_messages")
        return Benchmark(
            prompt_version=f"wise-verified-{template.digest}",
            load=lambda path, images_root: _load_verified(path, images_root, repo=root),
            questions=functools.partial(official_questions, template=template, verified=True),
            protocol={
                "protocol": "WISE_Verified (binary score; Overall = 0.40 CULTURE + 0.12 "
                "each of TIME, SPACE, BIOLOGY, PHYSICS, CHEMISTRY)",
                "official_code": f"{REPO} vllm_eval.py, calculate_verified.py (d6bfe42)",
                "judge_prompt": f"read from {template.source}",
                "official_judge": "Qwen3.5-35B-A3B via vLLM, temperature 0, max_tokens 500, thinking off",
            },
            **common,
        )
    if repo is None:
        return Benchmark(
            prompt_version=PROMPT_VERSION,
            load=load,
            questions=questions,
            protocol={
                "protocol": "WISE legacy (WiScore 0.7/0.2/0.1 of three 0-2 scores)",
                "official_code": f"{REPO} WISE_legacy/gpt_eval.py, Calculate.py (5663144)",
                "judge_prompt": "ours (pass --wise-repo to use the official legacy prompt; "
                "scores are not comparable with the leaderboard without "
                "it)",
                "official_judge": "gpt-4o-2024-05-13, temperature 0",
            },
            **common,
        )
    root = check_repo(repo, "--wise-repo", REPO, (LEGACY_FILE,))
    template = messages_template(root / LEGACY_FILE, "build_evaluation_messages")
    return Benchmark(
        prompt_version=f"wise-legacy-{template.digest}",
        load=load,
        questions=functools.partial(official_questions, template=template, verified=False),
        protocol={
            "protocol": "WISE legacy (WiScore 0.7/0.2/0.1 of three 0-2 scores)",
            "official_code": f"{REPO} WISE_legacy/gpt_eval.py, Calculate.py (5663144)",
            "judge_prompt": f"read from {template.source}",
            "official_judge": "gpt-4o-2024-05-13, temperature 0, max_tokens 2000",
        },
        **common,
    )
