"""What a person watching a run sees from the progress module: never silent for long, counts
that add up, and no terminal control characters in a log file."""

import io
import re
import time

from graph.cli.progress import CountProgress, ProgressPrinter
from nodes import events


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_wait_in_a_log_gets_still_waiting_lines_and_no_carriage_returns():
    log = io.StringIO()
    with ProgressPrinter(log, heartbeat_s=0.5) as printer:
        printer({"event": events.NODE_STARTED, "node": "plan", "model": "my-planner", "run_id": "r"})
        time.sleep(1.8)
    text = log.getvalue()
    assert "planning: waiting for the planner (my-planner)" in text
    assert "still waiting (" in text
    assert "\r" not in text and "\x1b" not in text


def test_at_a_terminal_the_phase_ticks_in_place():
    screen = Terminal()
    with ProgressPrinter(screen) as printer:
        printer({"event": events.NODE_STARTED, "node": "plan", "model": "p", "run_id": "r"})
        time.sleep(2.3)
    ticks = re.findall(r"\(p\) · (\d+)s", screen.getvalue())
    assert "\r\x1b[K" in screen.getvalue() and len(set(ticks)) >= 2, screen.getvalue()


def steps_of(printer_events, stream=None):
    log = stream or io.StringIO()
    printer = ProgressPrinter(log)
    for event in printer_events:
        printer({"run_id": "r", **event})
    return log.getvalue()


def test_guidance_numbering_and_plural():
    """A continued sequence numbers its new steps after the user's images: step 3 of a 2-step
    plan is shown as 3/4, never 3/2; answered images are not "attempt 0"."""
    text = steps_of(
        [
            {"event": events.PLAN_READY, "steps": 2, "step_names": ["a", "b"], "step_numbers": [3, 4]},
            {"event": events.ATTEMPT_STARTED, "step_number": 3, "attempt": 1, "seed": 5, "mode": "edit", "prompt": "x"},
            {"event": events.STEP_ACCEPTED, "step_number": 3, "attempt": 1, "steps_total": 2},
        ]
    )
    assert "step 3/4 · attempt 1 · edit" in text and "step 3/4 accepted (attempt 1)" in text
    assert "3/2" not in text
    text = steps_of(
        [
            {"event": events.PLAN_READY, "steps": 1, "step_names": ["a"], "step_numbers": [1]},
            {"event": events.STEP_ACCEPTED, "step_number": 1, "attempt": 0, "steps_total": 1},
        ]
    )
    assert "plan ready: 1 step (a)" in text and "1 steps" not in text
    assert "attempt 0" not in text and "step 1/1 accepted (your image, answered)" in text
    given = steps_of(
        [{"event": events.PLAN_READY, "steps": 2, "given": True, "step_names": ["a", "b"], "step_numbers": [1, 2]}]
    )
    assert "plan given: 2 steps (a; b)" in given and "resuming" not in given


def test_resumed_and_forked_runs_show_the_total():
    text = steps_of(
        [
            {"event": events.RUN_RESUMED, "steps": 3, "step_numbers": [1, 2, 3], "steps_done": 1},
            {"event": events.STEP_ACCEPTED, "step_number": 2, "attempt": 2, "steps_total": 3},
        ]
    )
    assert "resuming: 1/3 steps done" in text and "step 2/3 accepted (attempt 2)" in text


def test_an_unusable_verdict_names_its_reason_once():
    text = steps_of(
        [
            {
                "event": events.VERDICT,
                "step_number": 1,
                "attempt": 1,
                "success": None,
                "refine_prompt": None,
                "error": "[missing_answer] missing_answer: no tag",
            }
        ]
    )
    assert "(missing_answer: no tag)" in text and text.count("missing_answer") == 1
    text = steps_of(
        [
            {
                "event": events.VERDICT,
                "step_number": 1,
                "attempt": 1,
                "success": None,
                "refine_prompt": None,
                "error": "critic reply is not a valid verdict (no_answer): no <answer> tag",
            }
        ]
    )
    assert "critic reply unusable (no_answer: no <answer> tag); regenerating" in text


def test_counted_progress_in_a_log_has_eta_and_whole_lines():
    log = io.StringIO()
    progress = CountProgress("judged", log)
    for done in range(1, 21):
        progress.update(done, 20)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[-1].split("] ")[1].startswith("judged 20/20")
    assert "ETA" in lines[0]


def test_a_reply_that_did_not_parse_is_announced_with_its_wait():
    text = steps_of(
        [
            {"event": events.PLAN_READY, "steps": 2, "step_names": ["a", "b"], "step_numbers": [1, 2]},
            {
                "event": events.REPLY_RETRY,
                "role": "planner",
                "try": 1,
                "tries": 3,
                "reason": "truncated",
                "wait_s": 1.0,
            },
            {
                "event": events.REPLY_RETRY,
                "role": "critic",
                "try": 2,
                "tries": 3,
                "reason": "schema",
                "wait_s": 2.5,
                "step_number": 2,
                "attempt": 1,
            },
        ]
    )
    assert "planner reply 1 of 3 did not parse (truncated); asking again in 1 s" in text
    assert "step 2/2 · attempt 1 · critic reply 2 of 3 did not parse (schema); asking again in 2.5 s" in text


def test_model_text_reaches_the_display_escaped():
    text = steps_of(
        [
            {"event": events.PLAN_READY, "steps": 1, "step_names": ["\x1b[2Jgone"], "step_numbers": [1]},
        ]
    )
    assert "\x1b" not in text and "\\x1b[2Jgone" in text
