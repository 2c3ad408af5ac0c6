"""The contracts of the two model replies the loop acts on: a plan step and a critic verdict.

They live here, beside the parser that produces them, so the reply readers (``tools.replies``),
the nodes, the graph state and the training export all name one definition. The key names are
the ones the paper's prompts ask the models to write (``previous_step_success``,
``refine_prompt``), shared by the prompt text, the JSON schemas for structured output, the
parser, the exported training answers and the scripted demo critic.
"""

from __future__ import annotations

# typing_extensions, not typing: on Python < 3.12 pydantic (used by the LangGraph server to build
# Studio's input and output forms) only accepts typing_extensions.TypedDict.
from typing_extensions import NotRequired, TypedDict

#: The keys of a critic's answer object.
SUCCESS_KEY = "previous_step_success"
REFINE_KEY = "refine_prompt"


class PlanStep(TypedDict):
    """One step of the planner's plan (SPEC §2)."""

    step_number: int
    step_name: str
    instruction: str | None
    prompt: str | None
    auxiliary_text: str | None


class Verdict(TypedDict):
    """What the critic said of one attempt.

    ``success`` is None when the critic's reply could not be used (``error`` says why); such
    an attempt is regenerated with the same prompt and a new seed, never judged by an older
    verdict.
    """

    success: bool | None
    refine_prompt: str | None
    reasoning: str
    error: str | None
    # For an unusable reply: the policy that applied ("regenerate" or "accept", the run's
    # ``critic_unparsed`` setting). Absent in runs made before it existed: they regenerate.
    fallback: NotRequired[str | None]


def verdict_answer(success: bool, refine_prompt: str) -> dict:
    """The answer object a critic writes for a verdict (what training targets and the demo
    critic emit).

    >>> verdict_answer(False, "a red cup")
    {'previous_step_success': False, 'refine_prompt': 'a red cup'}
    """
    return {SUCCESS_KEY: success, REFINE_KEY: refine_prompt}
