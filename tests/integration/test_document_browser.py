"""The HTML document opens in a real browser with every image rendered.

Needs Chromium (Debian: apt-get install chromium). CI sets INTERLEAVE_REQUIRE_BROWSER=1, so
there a missing browser fails the test instead of skipping it.
"""

import os
import shutil

import pytest
from PIL import Image

from conftest import REQUEST
from graph.runs.runner import start_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("INTERLEAVE_REQUIRE_BROWSER") != "1",
    reason="no Chromium on this machine (apt-get install chromium)",
)


@pytest.mark.browser
@needs_browser
def launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


@pytest.mark.browser
@needs_browser
def test_document_reads_well_on_a_phone_and_a_desktop(make_context, tmp_path):
    """At 390 px (a phone) and 1366 px (a laptop) nothing overflows sideways: the full-page
    screenshot is exactly as wide as the screen, and the attempts' prompt text gets a readable
    line (not one word per line, as a five-column table at 390 px gave)."""
    from playwright.sync_api import sync_playwright

    outcome = start_run(REQUEST, make_context(), run_id="widths")
    assert outcome.status == "finished", outcome.error
    page_path = f"{outcome.document_dir}/document.html"
    measured = {}
    with sync_playwright() as p:
        browser = launch(p)
        for width in (390, 1366):
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(f"file://{page_path}")
            page.wait_for_load_state("load")
            shot = tmp_path / f"page-{width}.png"
            page.screenshot(path=str(shot), full_page=True)
            prompt_cells = page.eval_on_selector_all(
                "td[data-label='prompt used']", "els => els.map(e => e.getBoundingClientRect().width)"
            )
            measured[width] = (
                Image.open(shot).size,
                page.evaluate("document.documentElement.scrollWidth"),
                prompt_cells,
            )
            page.close()
        browser.close()
    for width, ((shot_w, shot_h), scroll_w, cells) in measured.items():
        assert shot_w == width and scroll_w <= width, (width, shot_w, scroll_w)
        assert shot_h > 800
        assert len(cells) == 4 and min(cells) >= (300 if width == 390 else 250), (width, cells)


@pytest.mark.browser
@needs_browser
def test_document_html_renders_every_image(make_context, tmp_path):
    from playwright.sync_api import sync_playwright

    context = make_context()
    outcome = start_run(REQUEST, context, run_id="browser")
    assert outcome.status == "finished", outcome.error
    page_path = f"{outcome.document_dir}/document.html"
    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(f"file://{page_path}")
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, w: e.naturalWidth}))"
        )
        boxes = page.eval_on_selector_all(
            "main img", "els => els.map(e => e.getBoundingClientRect()).map(r => [r.width, r.height])"
        )
        headings = page.eval_on_selector_all("main h2", "els => els.map(e => e.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    # 3 steps in the sequence + 4 attempt thumbnails, all decoded (none broken).
    assert len(images) == 7 and all(i["ok"] for i in images), images
    assert {i["w"] for i in images} == {context.width}
    assert all(abs(w - h) < 1 and w > 100 for w, h in boxes), boxes  # square images stay square
    assert headings == ["1. Get ready", "2. Halfway there", "3. Finished"]
    shutil.copyfile(shot, os.environ.get("INTERLEAVE_SCREENSHOT", os.devnull))
    width, height = Image.open(shot).size
    assert width == 1000 and height > 800  # the full page is taller than one screen
