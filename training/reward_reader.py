"""How the reference's reward reads a critic reply: the text that format F, accuracy A and the
step-wise regeneration are computed from.

Followed: zhengdian1/InterleaveThinker at commit 94c7593ad600748444e4b2d5efd888a72a93a6bd,
``train/EasyR1/verl/reward_function/interleave_thinker_reward.py`` (``compute_score``,
``tag_format_reward``, ``extract_answer``, ``accuracy_reward``).

Why a module of its own: the graph's reply parser (``tools.replies.parsing``) is tolerant on
purpose (prose, fences, answers outside tags), because at inference time a readable verdict is
worth more than strictness. A reward must instead give a policy exactly the signal the paper's
policy got, or it learns a different format. So this reader does what the reference does, step
by step, and nothing more:

1. **Pre-processing.** All whitespace on either side of every ``<``, ``>`` and ``/`` is removed,
   in the whole reply (JSON strings included: ``"a cat / dog"`` becomes ``"a cat/dog"``, and the
   refined prompt handed to the generator is the altered one, as in the reference).
2. **The answer object.** The first ``<answer>…</answer>`` block, tags in lower case only, shortest
   match; its content stripped and read by the ``json_repair`` package (``json_repair.loads``), as
   the reference does. No block, or an error: no object.
3. **Format.** 1 when all hold, else 0: an ``<answer>…</answer>`` pair exists (any case); the first
   ``<think>`` (any case) comes before the first ``<answer>`` (any case), where a reply with no
   ``<think>`` passes (the reference compares position -1); the object is non-empty, holds both
   ``previous_step_success`` and ``refine_prompt``, the first a JSON boolean and the second a
   string (an empty string is a string).
4. **Accuracy.** ``previous_step_success`` of the object (read as in 2, so lower-case tags are
   needed; the format conditions are not) equals the ground truth.
5. **The regeneration prompt.** ``refine_prompt`` of the object, or the prompt that made the judged
   image (the dataset's ``rewritten_prompt``, the reference's ``previous_prompt``) when it is
   missing or ``""``. Not stripped.

Departures (strict where the reference is an evident accident; also in the README's
"Differences from the reference"):

* Accuracy needs a real boolean. The reference compares with ``==``, so ``0``/``1`` (and ``0.0``,
  ``1.0``) count as ``false``/``true`` and ``-1`` is its own "missing" marker; here only ``true`` or
  ``false`` can earn A = 1 (format already demands a boolean).
* An object that repairs to something other than a JSON object (a list such as two objects in
  one block, a string, a number): the reference's falsy ones (``""``, ``0``, ``[]``) become
  ``{}``; its truthy ones raise inside ``compute_score`` (F = A = 0 and the sample drops out of the
  regeneration queue, which misaligns the batch). Here every non-object reads as ``{}``.
* A ``refine_prompt`` that is not a string (``null``, a number): the reference sends the value to
  its edit server, whose code is not in the repository; here it reads as missing (the rewritten
  prompt is used, as for ``""``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: The official source this reader follows (cited in logs, tests and the README).
REFERENCE = (
    "zhengdian1/InterleaveThinker@94c7593ad600748444e4b2d5efd888a72a93a6bd "
    "train/EasyR1/verl/reward_function/interleave_thinker_reward.py"
)
SUCCESS_KEY = "previous_step_success"
REFINE_KEY = "refine_prompt"

_AROUND_MARKS = re.compile(r"\s*([<>/])\s*")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # case-sensitive, as extract_answer
_ANSWER_PAIR = re.compile(r"<answer>.*?</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)


def normalize(reply: str) -> str:
    """Remove the whitespace around every ``<``, ``>`` and ``/`` (step 1).

    >>> normalize('< think >ok</ think >\\n< answer >{"refine_prompt": "a cat / dog"}</answer >')
    '<think>ok</think><answer>{"refine_prompt": "a cat/dog"}</answer>'
    """
    return _AROUND_MARKS.sub(r"\1", reply)


def answer_value(text: str) -> Any:
    """What ``json_repair`` makes of the first lower-case answer block of normalized ``text``
    (step 2); None without a block or when the repair raises.

    >>> answer_value("<answer>{'previous_step_success': False, 'refine_prompt': 'x',}</answer>")
    {'previous_step_success': False, 'refine_prompt': 'x'}
    >>> answer_value("<ANSWER>{}</ANSWER>") is None
    True
    """
    import json_repair

    match = _ANSWER_BLOCK.search(text)
    if match is None:
        return None
    try:
        return json_repair.loads(match.group(1).strip())
    except Exception:  # noqa: BLE001 - the reference turns any repair error into "no answer"
        return None


def _tags_ok(text: str) -> bool:
    if not _ANSWER_PAIR.search(text):
        return False
    think = _THINK_OPEN.search(text)
    answer = _ANSWER_OPEN.search(text)  # exists: the pair above matched
    return (think.start() if think else -1) < answer.start()


@dataclass(frozen=True)
class Reading:
    """One reply as the reward sees it.

    ``text``: the normalized reply. ``answer``: the answer object (``{}`` when there is none or it
    is not an object). ``format_ok``: step 3. ``success``: ``previous_step_success`` when it is a
    boolean, else None. ``refine``: ``refine_prompt`` when it is a non-empty string, else None.
    """

    text: str
    answer: dict
    format_ok: bool
    success: bool | None
    refine: str | None

    def regeneration_prompt(self, rewritten_prompt: str) -> str:
        """The prompt the step is regenerated with: the refined one, else the rewritten one."""
        return self.refine if self.refine is not None else rewritten_prompt


def read(reply: str) -> Reading:
    """Read ``reply`` as the reference's ``compute_score`` does (module docstring, steps 1-5).

    >>> r = read('<think>the cup is blue</think> <answer>{"previous_step_success": false, '
    ...          '"refine_prompt": "a red cup"}</answer>')
    >>> r.format_ok, r.success, r.refine
    (True, False, 'a red cup')
    >>> r = read('<answer>{"previous_step_success": 0, "refine_prompt": ""}</answer>')
    >>> r.format_ok, r.success, r.regeneration_prompt("a cup")
    (False, None, 'a cup')
    """
    text = normalize(reply)
    value = answer_value(text)
    answer = value if isinstance(value, dict) else {}
    success = answer.get(SUCCESS_KEY)
    refine = answer.get(REFINE_KEY)
    format_ok = (
        bool(answer)
        and _tags_ok(text)
        and SUCCESS_KEY in answer
        and REFINE_KEY in answer
        and isinstance(success, bool)
        and isinstance(refine, str)
    )
    return Reading(
        text=text,
        answer=answer,
        format_ok=format_ok,
        success=success if isinstance(success, bool) else None,
        refine=refine if isinstance(refine, str) and refine != "" else None,
    )
