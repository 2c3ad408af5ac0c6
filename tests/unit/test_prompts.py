"""The critic's message can be read back field for field: the scripted models of the demo and
the tests read it with the product's own reader, so rewording a prompt never breaks them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes import prompts
from tools.doubles import demo_script


# A field that itself contains the template's next anchor line cannot be told apart from it.
FIELD = st.text(min_size=1).filter(lambda s: "Rewritten prompt:" not in s and "The first image" not in s)


@given(original=FIELD, rewritten=FIELD)
def test_the_critic_message_reads_back_exactly(original, rewritten):
    assert prompts.read_critic_user(prompts.critic_user(original, rewritten)) == (original, rewritten)


def test_an_empty_rewritten_prompt_reads_back_as_the_original():
    assert prompts.read_critic_user(prompts.critic_user("make it red", "")) == ("make it red", "make it red")


def test_a_reworded_template_is_still_read():
    template = "Judge this.\nStep asked for: {original}\nWhat was drawn from: {rewritten}\nEnd."
    read = prompts.template_reader(template)
    assert read(template.format(original="a cat", rewritten="a cat, centred")) == {
        "original": "a cat",
        "rewritten": "a cat, centred",
    }


def test_text_that_does_not_follow_the_template_is_refused_with_its_fields():
    with pytest.raises(ValueError, match=r"fields \['original', 'rewritten'\]"):
        prompts.read_critic_user("Please judge these two images.")


def test_the_demo_critic_rejects_the_middle_step_once_then_accepts_the_refined_prompt():
    def critic_body(original, used):
        return {
            "model": demo_script.CRITIC_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": prompts.critic_user(original, used)},
                    ],
                }
            ],
        }

    first = demo_script.respond(critic_body(demo_script.SECOND_STEP_PROMPT, demo_script.SECOND_STEP_PROMPT))
    again = demo_script.respond(critic_body(demo_script.SECOND_STEP_PROMPT, demo_script.REFINED_SECOND_STEP_PROMPT))
    assert '"previous_step_success": false' in first and demo_script.REFINED_SECOND_STEP_PROMPT in first
    assert '"previous_step_success": true' in again
