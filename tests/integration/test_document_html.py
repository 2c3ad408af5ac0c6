"""The HTML document of a guidance run, as a reader sees it: the request shows the user's
images where its <image> markers stood, given images are marked as given (no empty attempt
tables), models are named without local paths, a demo document says its images are noise, and
the files are readable like any other (0644 under the usual umask)."""

import os
import re
import stat
from pathlib import Path

from PIL import Image

from graph.cli.progress import ProgressPrinter
from graph.runs.demo import demo_pipeline_path
from graph.runs.runner import start_run


def image_file(folder: Path, name: str, colour) -> str:
    path = folder / name
    Image.new("RGB", (96, 64), colour).save(path)
    return str(path)


def test_a_continued_sequence_reads_as_the_user_gave_it(make_context, tmp_path):
    given = [image_file(tmp_path, "a.png", (200, 30, 30)), image_file(tmp_path, "b.png", (30, 30, 200))]
    request = "My sketch started like this <image> and now looks like this <image>. Continue it."
    seen = []
    outcome = start_run(request, make_context(), images=given, on_event=seen.append)
    assert outcome.status == "finished", outcome.error
    page = (Path(outcome.document_dir) / "document.html").read_text()

    assert "&lt;image&gt;" not in page and "<image>" not in page
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert title == "My sketch started like this [image 1] and now looks like this [image 2]. Continue it."
    heading = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert heading.count("<img ") == 2 and heading.startswith("My sketch started like this <img ")
    made = page.split("How each step was made")[1]
    assert made.count("<table>") == 2  # steps 3 and 4; the two given images have no table
    assert made.count("the user's own image; nothing was generated") == 2
    assert "your image, given with the request" in page.split("How each step was made")[0]

    # Progress lines for the same run count steps through the given images: 3/4, never 3/2.
    lines = []
    printer = ProgressPrinter(_Lines(lines))
    for event in seen:
        printer(event)
    text = "".join(lines)
    assert "step 3/4 accepted" in text and "step 4/4 accepted" in text and "step 3/2" not in text


class _Lines:
    def __init__(self, out):
        self.out = out

    def write(self, text):
        self.out.append(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def test_models_are_named_without_local_paths_and_files_are_0644(make_context, tiny_pipeline):
    outcome = start_run("How do I fold a paper crane?", make_context(), run_id="modes")
    assert outcome.status == "finished", outcome.error
    page = (Path(outcome.document_dir) / "document.html").read_text()
    assert str(tiny_pipeline) not in page and str(tiny_pipeline.parent) not in page
    assert f"generator {tiny_pipeline.name} (local folder)" in page
    assert "planner demo-planner · critic demo-critic" in page
    assert "images are noise" not in page  # the test pipeline carries no random-weights marker
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("document.html", "document.md", "document.json"):
        mode = stat.S_IMODE((Path(outcome.document_dir) / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_a_demo_document_says_its_images_are_noise(make_context, runs_dir):
    pipeline = demo_pipeline_path(runs_dir)
    outcome = start_run("How do I fold a paper crane?", make_context(generator_model=str(pipeline)), run_id="demo-like")
    assert outcome.status == "finished", outcome.error
    page = (Path(outcome.document_dir) / "document.html").read_text()
    assert "These images are noise: the generator has random weights" in page
