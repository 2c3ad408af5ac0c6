"""The finished document of a run, as JSON, Markdown and one self-contained HTML page.

``document.json`` is the source of truth (ordered steps with text and image, plus every attempt
with the prompt that produced it, its seed and the critic's verdict); Markdown and HTML are
rendered from it, so ``interleave export`` can rebuild them at any time. The HTML embeds its
images, so it can be mailed or opened anywhere; Markdown links to the image store.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

FORMATS = ("json", "md", "html")
GIVEN_IMAGE_NOTE = "the user's own image; nothing was generated for this step"
DOCUMENT_MODE = 0o666  # less the umask, as open() would give
IMAGE_MARKER = "<image>"  # as nodes.guidance places the user's images in the request
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"  # a file in a generator folder whose weights are random


def build_record(
    *,
    run_id: str,
    request: str,
    input_images: list,
    plan: list,
    plan_reasoning: str,
    entries: list,
    attempts: list,
    settings: dict,
    prompt_version: str,
    forked_from: dict | None = None,
    plan_mode: str = "narrative",
    structured_output: dict | None = None,
) -> dict[str, Any]:
    """The document as data. ``entries`` may start with images the user gave that the plan does
    not cover (a continued sequence); those steps are marked ``given``. ``structured_output``:
    with ``--vlm-structured-output auto``, the form each endpoint accepted (base URL -> form)."""
    planned = {step["step_number"]: step for step in plan}
    steps = []
    for entry in entries:
        number = entry["step_number"]
        step = planned.get(number) or {
            "step_number": number,
            "step_name": entry["step_name"],
            "instruction": None,
            "prompt": None,
            "auxiliary_text": None,
            "given": True,
        }
        steps.append(
            {
                **step,
                "text": entry["text"],
                "image": entry["image"],
                "attempts": [a for a in attempts if a["step_number"] == number],
            }
        )
    return {
        "run_id": run_id,
        "request": request,
        "input_images": input_images,
        "plan_mode": plan_mode,
        "plan_reasoning": plan_reasoning,
        "steps": steps,
        "settings": settings,
        "structured_output": structured_output or {},
        "prompt_version": prompt_version,
        "forked_from": forked_from,
    }


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
    # NamedTemporaryFile makes 0600 files; a document is read like any other file (0644 under
    # the usual umask), e.g. by a web server or a colleague on the same machine.
    os.chmod(tmp.name, DOCUMENT_MODE & ~_umask())
    os.replace(tmp.name, path)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_all(folder: Path, record: dict[str, Any], runs_dir: Path) -> dict[str, Path]:
    """Write document.json, document.md and document.html into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return {fmt: write_one(folder, record, runs_dir, fmt) for fmt in FORMATS}


def write_one(folder: Path, record: dict[str, Any], runs_dir: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown document format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = folder / f"document.{fmt}"
    if fmt == "json":
        text = json.dumps(record, indent=2, ensure_ascii=False)
    elif fmt == "md":
        text = render_markdown(record, image_prefix=os.path.relpath(runs_dir, folder))
    else:
        text = render_html(record, runs_dir)
    _write_atomic(path, text)
    return path


def _verdict_label(attempt: dict) -> str:
    verdict = attempt.get("verdict")
    if verdict is None:
        return "accepted without critic (last allowed attempt)" if attempt["last_allowed"] else "not judged"
    if verdict["success"] is None:
        return f"critic reply unusable: {verdict['error']}"
    return "passed" if verdict["success"] else "rejected"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()#!|~{}+.-])")


def md_text(text: Any) -> str:
    r"""Model or user text as inert Markdown: HTML escaped (a viewer that renders raw HTML gets
    text, not tags or scripts), Markdown syntax backslash-escaped (no links or images of the
    model's choosing) and line breaks kept inside the paragraph.

    >>> print(md_text("<img src=x onerror=alert(1)> [a](javascript:x)"))
    &lt;img src=x onerror=alert\(1\)&gt; \[a\]\(javascript:x\)
    """
    escaped = _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))
    return "  \n".join(escaped.splitlines()) or escaped


def render_markdown(record: dict[str, Any], image_prefix: str) -> str:
    md = md_text
    lines = [f"# {md(record['request'])}", ""]
    if record.get("forked_from"):
        origin = record["forked_from"]
        lines += [f"> Forked from run {md(origin['run_id'])} at step {origin['step_number']}.", ""]
    for step in record["steps"]:
        lines += [f"## {step['step_number']}. {md(step['step_name'])}", "", md(step["text"]), ""]
        if step["image"]:
            lines += [f"![{md(step['step_name'])}]({image_prefix}/{step['image']['path']})", ""]
    lines += ["---", "", "## How each step was made", ""]
    for step in record["steps"]:
        lines.append(f"### Step {step['step_number']}: {md(step['step_name'])}")
        if not step["attempts"]:
            lines.append(f"- {GIVEN_IMAGE_NOTE}")
        for a in step["attempts"]:
            lines.append(
                f"- attempt {a['attempt']} (seed {a['seed']}): {md(_verdict_label(a))}; prompt: {md(a['prompt'])}"
            )
            verdict = a.get("verdict") or {}
            if verdict.get("success") is False:
                lines.append(f"  - critic: {md(verdict['reasoning'])}")
                lines.append(f"  - refined prompt: {md(verdict['refine_prompt'])}")
        lines.append("")
    return "\n".join(lines)


_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#222;
line-height:1.45;overflow-wrap:anywhere}
h1{font-size:1.6rem} h1 img{height:2.2em;width:auto;vertical-align:middle;border-radius:4px;margin:0 .2em}
.step{margin:2rem 0} .step img{max-width:100%;width:512px;height:auto;border-radius:6px;
image-rendering:pixelated;border:1px solid #ddd} .attempts{border-top:2px solid #eee;margin-top:3rem}
table{border-collapse:collapse;width:100%;font-size:.9rem} td,th{border:1px solid #ddd;padding:.4rem;
vertical-align:top;text-align:left} td img{width:128px;max-width:100%;height:auto;image-rendering:pixelated}
.passed{color:#176d2c} .rejected{color:#a3261b} .other{color:#8a6d00} tr.accepted{background:#f1f8f2}
details{margin:.3rem 0} .meta{color:#666;font-size:.85rem}
.fork{background:#eef3fb;border-left:4px solid #3b6fb6;padding:.4rem .8rem}
.noise{background:#fff6e0;border-left:4px solid #c98a00;padding:.4rem .8rem}
.given{color:#555;font-style:italic}
@media (max-width:640px){
 body{margin:1rem auto}
 table,tbody,tr,td{display:block;width:100%} tr.head{display:none}
 tr{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.2rem} td{border:none}
 td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:#555}
 td img{width:160px}
}
"""


def model_label(name: str) -> str:
    """A model as a reader should see it: the model id, or a local folder's own name rather
    than where it happens to lie on the machine that made the run.

    >>> model_label("black-forest-labs/FLUX.2-klein-4B"), model_label("/home/me/runs/_demo/tiny-klein")
    ('black-forest-labs/FLUX.2-klein-4B', 'tiny-klein (local folder)')
    """
    name = str(name or "")
    if name.startswith(("/", "./", "../", "~")) or (os.sep in name and Path(name).exists()):
        return f"{Path(name).name} (local folder)"
    return name


def random_weights(settings: dict) -> bool:
    """Whether the generator's weights are random (the offline demo's tiny models): its folder
    carries the ``RANDOM_WEIGHTS`` marker file."""
    folder = Path(str(settings.get("generator_model") or ""))
    return (folder / RANDOM_WEIGHTS_MARKER).is_file()


def _data_url(runs_dir: Path, ref: dict) -> str:
    from tools.store.images import ImageStore

    data = ImageStore(runs_dir).read_png(ref)  # inside the store and matching its sha256
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_html(record: dict[str, Any], runs_dir: Path) -> str:
    """One page: the interleaved sequence first, then each step's attempts and verdicts.

    Readable from a 390 px phone to a desktop: below 640 px each attempt's table row becomes a
    labelled block instead of five narrow columns. In guidance runs the request shows the
    user's images where its ``<image>`` markers stand, and their steps are marked as given.
    """
    esc = html.escape
    cache: dict[str, str] = {}

    def img(ref: dict, alt: str) -> str:
        if ref["sha256"] not in cache:
            cache[ref["sha256"]] = _data_url(runs_dir, ref)
        return f'<img src="{cache[ref["sha256"]]}" alt="{esc(alt)}" width="{ref["width"]}" height="{ref["height"]}">'

    settings = record.get("settings") or {}
    inputs = record.get("input_images") or []
    request = record["request"]
    pieces = request.split(IMAGE_MARKER)
    title = request
    heading = esc(request)
    if inputs and len(pieces) - 1 == len(inputs):  # markers stand for the images, in order
        title = "".join(p + (f"[image {k + 1}]" if k < len(inputs) else "") for k, p in enumerate(pieces))
        heading = "".join(
            esc(p) + (img(inputs[k], f"image {k + 1}") if k < len(inputs) else "") for k, p in enumerate(pieces)
        )
    elif inputs:  # without markers the images follow the text
        heading = esc(request) + "".join(img(ref, f"image {k}") for k, ref in enumerate(inputs, 1))
    models = " · ".join(
        f"{role} {esc(model_label(settings[key]))}"
        for role, key in (("planner", "planner_model"), ("critic", "critic_model"), ("generator", "generator_model"))
        if settings.get(key)
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{heading}</h1>",
        f"<p class='meta'>run {esc(record['run_id'])} · {models}</p>",
    ]
    if random_weights(settings):
        parts.append(
            "<p class='noise'>These images are noise: the generator has random weights "
            "(the offline demo). Run with a real generator model for real pictures.</p>"
        )
    origin = record.get("forked_from")
    if origin:
        changed = " with a new prompt" if origin.get("prompt_changed") else ""
        parts.append(
            f"<p class='fork'>Forked from run <b>{esc(origin['run_id'])}</b> at step "
            f"{origin['step_number']}{changed}; steps before it are shared with that run.</p>"
        )
    parts.append("<main>")
    branch_at = origin["step_number"] if origin else None
    for step in record["steps"]:
        if branch_at is not None and step["step_number"] == branch_at:
            parts.append(f"<p class='fork'>↳ this run branches here from {esc(origin['run_id'])}</p>")
        parts.append(
            f"<section class='step' id='step-{step['step_number']}'>"
            f"<h2>{step['step_number']}. {esc(step['step_name'])}</h2>"
        )
        if step["text"]:
            parts.append(f"<p>{esc(step['text'])}</p>")
        if step.get("given") or (not step["attempts"] and step["image"]):
            parts.append("<p class='given'>your image, given with the request</p>")
        if step["image"]:
            parts.append(img(step["image"], step["step_name"]))
        parts.append("</section>")
    parts.append("</main><section class='attempts'><h2>How each step was made</h2>")
    for step in record["steps"]:
        parts.append(f"<h3>Step {step['step_number']}: {esc(step['step_name'])}</h3>")
        if not step["attempts"]:  # a given image: nothing was generated, no table to show
            parts.append(f"<p class='given'>{GIVEN_IMAGE_NOTE}</p>")
            continue
        accepted = step["image"]["sha256"] if step["image"] else None
        parts.append(
            f"<p class='meta'>plan prompt: {esc(step['prompt'] or '')}</p><table>"
            "<tr class='head'><th>#</th><th>image</th><th>prompt used</th><th>critic</th>"
            "<th>time</th></tr>"
        )
        for a in step["attempts"]:
            label = _verdict_label(a)
            kind = label if label in ("passed", "rejected") else "other"
            verdict = a.get("verdict") or {}
            critic = f"<span class='{kind}'>{esc(label)}</span>"
            if verdict.get("reasoning"):
                critic += f"<details><summary>reasoning</summary>{esc(verdict['reasoning'])}</details>"
            if verdict.get("success") is False:
                critic += f"<p>refined prompt: {esc(verdict['refine_prompt'])}</p>"
            row = "accepted" if a["image"]["sha256"] == accepted and a is step["attempts"][-1] else ""
            timing = f"{a['generate_s']:.2f} s" + (
                f" + {a['critique_s']:.2f} s critic" if a.get("critique_s") is not None else ""
            )
            parts.append(
                f"<tr class='{row}'><td data-label='attempt'>{a['attempt']}</td>"
                f"<td>{img(a['image'], 'attempt')}</td>"
                f"<td data-label='prompt used'>{esc(a['prompt'])}"
                f"<div class='meta'>seed {a['seed']}</div></td>"
                f"<td data-label='critic'>{critic}</td>"
                f"<td data-label='time'>{timing}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</section></body></html>")
    return "".join(parts)
