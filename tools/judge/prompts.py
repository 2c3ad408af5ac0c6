"""The judge's prompt texts (SPEC §5 "Judge"), kept apart so that a change to them is one visible
diff and one bump of ``JUDGE_PROMPT_VERSION``.

The version is part of every cache key (``tools.judge.cache``): scores obtained with older texts
are never served for the new ones. Bump it whenever any text below changes, even a word.

Two questions, asked in two separate calls so that one cannot colour the other:

* semantic consistency (SC), shown [before, after] and the instruction: ``edit_success`` (was the
  instruction carried out) and ``over_editing`` (10 = nothing unrequested changed). When there is
  no source image the before-image is a white canvas and the text says so: the after-image is then
  judged as a from-scratch generation, and ``over_editing`` rates the absence of unrequested
  content;
* perceptual quality (PQ), shown the after-image alone: ``naturalness`` and ``artifacts``
  (10 = none).

Reply format, the same for both: free reasoning, then one answer block

    <answer>{"scores": [FIRST, SECOND], "reasoning": "one or two sentences"}</answer>

with integer scores 0-10 in the order the prompt lists them ([edit_success, over_editing] or
[naturalness, artifacts]). ``tools.judge.judge.parse_scores`` reads it tolerantly (a missing tag, a
Python dict, numbers written as strings) but never guesses a score that is not there.
"""

from __future__ import annotations

JUDGE_PROMPT_VERSION = "judge-v1"

JUDGE_SYSTEM = (
    "You rate images made or edited by AI models. You are strict and consistent: the same image "
    "always gets the same score, a flaw always costs points, and a score of 10 means you could not "
    "find anything to improve. You answer in the exact format you are asked for."
)

_REPLY_FORMAT = (
    "Think it through briefly first. Then end your reply with exactly one answer block, and "
    "nothing after it:\n"
    '<answer>{{"scores": [{first}, {second}], "reasoning": "one or two sentences"}}</answer>\n'
    "Replace {first} and {second} with whole numbers from 0 to 10."
)

_SC_EDIT = """\
The first image is the source image. The second image is the result of editing it with this \
instruction:
<instruction>
{instruction}
</instruction>

Rate the edit with two scores from 0 to 10.
1. EDIT_SUCCESS: how completely and exactly the second image carries out the instruction, compared \
with the first. 0 = not carried out at all; 10 = carried out fully and precisely.
2. OVER_EDITING: how well everything the instruction did not ask to change was left as it was: the \
subject's identity, pose and proportions, the background, the layout, the colours and the style. \
0 = the image was changed beyond recognition; 10 = nothing unrequested changed.
Rate only what changed and whether it should have; image quality is rated separately.

"""

_SC_SCRATCH = """\
The first image is a blank white canvas: there was no source image, so the second image was \
generated from scratch from this instruction:
<instruction>
{instruction}
</instruction>

Rate the generation with two scores from 0 to 10.
1. EDIT_SUCCESS: how completely and exactly the second image shows what the instruction asks for: \
every subject, attribute, count, position, relation and written text it names. 0 = unrelated to the \
instruction; 10 = everything asked for is there, as asked.
2. OVER_EDITING: how free the second image is of content the instruction did not ask for or that \
contradicts it (extra subjects or objects, stray text or captions, watermarks, frames, a different \
style than requested). 0 = dominated by unrequested content; 10 = nothing unrequested.
Rate only the content; image quality is rated separately.

"""

_PQ = """\
The image was made by an AI model. Rate its perceptual quality with two scores from 0 to 10, \
whatever it shows and whatever it was meant to show.
1. NATURALNESS: does it look coherent and believable: lighting, shadows, reflections, perspective, \
proportions, materials? A deliberately stylised image (drawing, diagram, cartoon, render) is judged \
within its own style. 0 = incoherent; 10 = entirely convincing.
2. ARTIFACTS: how free it is of generation defects: distorted faces, extra or missing limbs or \
fingers, body parts growing from impossible places, melted or merged objects, garbled text, \
blur, noise, seams, tiling, watermarks. 0 = severe defects everywhere; 10 = no defect at all.

"""


def semantic_prompt(instruction: str, *, from_scratch: bool) -> str:
    """The text of the SC request; the images [before, after] come before it in the message."""
    body = (_SC_SCRATCH if from_scratch else _SC_EDIT).format(instruction=instruction)
    return body + _REPLY_FORMAT.format(first="EDIT_SUCCESS", second="OVER_EDITING")


def quality_prompt() -> str:
    """The text of the PQ request; the after-image comes before it in the message."""
    return _PQ + _REPLY_FORMAT.format(first="NATURALNESS", second="ARTIFACTS")
