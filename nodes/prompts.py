"""Every prompt the graph sends, in one place. Bump ``PROMPT_VERSION`` when a text changes: it is
recorded with each run so that data and scores can be traced to the prompts that made them."""

from __future__ import annotations

import re
import string

PROMPT_VERSION = "2026-11-23.2"

PLANNER_SYSTEM = """\
You plan interleaved text-and-image answers. An image model will draw step 1 from text and then \
produce every later step by editing the image of the step before, so your plan is executed one \
image operation at a time. Write the whole plan now, before any image exists.

Think first inside <think>...</think>. Then give the plan inside <answer>...</answer> as one JSON \
object and nothing else:
{"execution_plan": [{"step_number": 1, "step_name": "...", "instruction": "...", "prompt": "...", \
"auxiliary_text": null}, ...]}

Rules for the fields:
- step_number: 1, 2, 3, ... in order.
- step_name: a short title for the step.
- instruction: one or two sentences a reader sees, describing what this step shows.
- prompt: text for the image model. For step 1, a detailed text-to-image description of step 1 \
only (subject, setting, lighting, viewpoint, composition, style), with nothing that belongs to \
later steps. For later steps, a short, concrete edit that turns the previous image into this \
step (what changes, where, and what stays the same). No "Step 3:" prefixes, no commentary.
- auxiliary_text: a caption, explanation or answer the user asked for with this step; otherwise null.

Choose the number of steps yourself unless the user names it; then use exactly that many. Every \
step changes the image; there are no text-only steps. The last step shows the finished result."""

PLANNER_GUIDANCE_SYSTEM = """\
You plan interleaved text-and-image answers for a request that comes with images from the user. \
The images appear in the request where <image> stood in the user's text, numbered 1, 2, 3, ... \
in order. Decide from the request which of two tasks it asks for:

Task A - the images are complete and the user wants text for them (an explanation, a caption, an \
answer per image or per step). Make one step per image the user asks about, numbered like the \
image it belongs to. Put the text in auxiliary_text and set instruction and prompt to null: \
nothing is drawn for these steps.

Task B - the images are the beginning of a sequence and the user wants it continued. Number the \
new steps after the last given image (with 3 images the first new step is 4). Each new step is \
drawn by editing the image before it: the first new step edits the last given image. Its prompt \
is a short, concrete edit (what changes, where, and what stays the same).

Think first inside <think>...</think>. Then give the plan inside <answer>...</answer> as one JSON \
object and nothing else:
{"execution_plan": [{"step_number": 4, "step_name": "...", "instruction": "...", "prompt": "...", \
"auxiliary_text": null}, ...]}

step_name is a short title; instruction is one or two sentences a reader sees (null in Task A); \
prompt is text for the image model (null in Task A), with no "Step 3:" prefixes and no commentary; \
auxiliary_text is the text the user asked for with that step, otherwise null. Use exactly the \
number of steps the user names, if any. In Task B the last step shows the finished result."""

PLANNER_USER = "Request:\n{request}"

CRITIC_SYSTEM = """\
You review one step of an image sequence. You get two images, BEFORE then AFTER, the step's \
original instruction, and the rewritten prompt that actually produced AFTER. A plain white \
BEFORE image means AFTER was generated from scratch for the first step.

Judge two things:
A. Intent: does the change from BEFORE to AFTER carry out the instruction? (For a white BEFORE: \
does AFTER show what the instruction describes?)
B. Faults: anatomy errors (extra or missing limbs or fingers, body parts in impossible places, \
distorted faces) or collateral damage (regions the step did not ask to change were changed, the \
background bled, the subject lost its identity).
The step succeeds only if A holds and B finds nothing.

Think first inside <think>...</think>, naming what you checked. Then answer inside \
<answer>...</answer> with one JSON object:
{"previous_step_success": true or false, "refine_prompt": "..."}

If the step succeeded, refine_prompt repeats the prompt that was used. If it failed, refine_prompt \
is a better prompt for regenerating AFTER from the same BEFORE, fixing what you found: add \
concrete colours, positions, sizes and relations where the result was vague; reduce a \
contradictory prompt to its core intent; add explicit "keep ... unchanged" clauses for details \
that were lost; state foreground, background and relative scale for misplaced objects; name \
materials, textures and lighting for a wrong style; use degree words for too much or too little \
change. For a first-step image, write a full text-to-image prompt (subject, setting, lighting, \
camera, composition, style) without anything that was not asked for, such as stray text."""

CRITIC_USER = """\
Original instruction: {original}
Rewritten prompt: {rewritten}
The first image is BEFORE, the second is AFTER."""


def template_reader(template: str):
    """A function that reads back the fields ``template.format(...)`` wrote into a text.

    The literal parts of the template become the anchors of a regular expression, each field a
    lazy group, so the reader follows the template's wording wherever it changes. Scripted models
    (the demo, the tests) read our messages with it instead of keeping their own copy of the text.
    """
    pattern, names = [], []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if field is not None:
            names.append(field)
            pattern.append(f"(?P<{field}>.*?)")
    regex = re.compile("".join(pattern) + r"\Z", re.S)

    def read(text: str) -> dict[str, str]:
        match = regex.search(text)
        if match is None:
            raise ValueError(f"the text does not follow the template (fields {names}): {text[:200]!r}")
        return match.groupdict()

    return read


def read_critic_user(text: str) -> tuple[str, str]:
    """(original instruction, rewritten prompt) from a critic message written by ``critic_user``."""
    fields = _CRITIC_READER(text)
    return fields["original"], fields["rewritten"]


def planner_user(request: str) -> str:
    return PLANNER_USER.format(request=request.strip())


def planner_system(guidance: bool) -> str:
    """The planner's instructions: guidance mode when the user gave images, else narrative."""
    return PLANNER_GUIDANCE_SYSTEM if guidance else PLANNER_SYSTEM


def critic_user(original: str, rewritten: str) -> str:
    """The critic's text. The "rewritten prompt" slot always holds the prompt that produced the
    judged image, so on a first attempt it repeats the plan's prompt (never left empty). Training
    data export builds critic samples with this same function, so the critic sees at training
    time exactly what it sees at inference (the reference left the slot empty in its data but
    filled it at inference)."""
    return CRITIC_USER.format(original=original, rewritten=rewritten or original)


_CRITIC_READER = template_reader(CRITIC_USER)
