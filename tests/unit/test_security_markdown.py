"""document.md shows model and user text as text, even in a viewer that renders raw HTML:
no tags, scripts or links of the model's choosing; the step images still render."""

from __future__ import annotations

import pytest

from tools.store.documents import render_markdown

import markdown_it  # noqa: E402  (the test extra installs it: the check must run, not skip)

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "[click](javascript:alert(3))",
    "![x](javascript:alert(4))",
    "<a href='javascript:alert(5)'>a</a>",
    "# heading\n<iframe src=x>",
    "`code` *em* _u_ | table |",
]


def record(text: str) -> dict:
    verdict = {"success": False, "reasoning": text, "refine_prompt": text, "error": None}
    attempt = {
        "step_number": 1,
        "attempt": 1,
        "seed": 1,
        "prompt": text,
        "last_allowed": False,
        "verdict": verdict,
        "image": {"path": "images/ab/ab.png", "sha256": "ab"},
    }
    return {
        "request": text,
        "run_id": "r",
        "forked_from": None,
        "steps": [
            {
                "step_number": 1,
                "step_name": text,
                "text": text,
                "attempts": [attempt],
                "image": {"path": "images/ab/ab.png", "sha256": "ab"},
            }
        ],
    }


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_rendered_with_raw_html_allowed_has_no_active_content(text):
    page = markdown_it.MarkdownIt("commonmark", {"html": True}).render(render_markdown(record(text), ".."))
    lowered = page.lower()
    for active in ("<script", '<img src="x"', "<img src=x", "<iframe", "<a href", 'javascript:alert(4)"'):
        assert active not in lowered, (active, page)
    assert page.count('<img src="../images/ab/ab.png"') == 1  # the step's own image still renders
    assert any(word in page for word in ("alert", "heading", "code"))  # shown, not dropped
