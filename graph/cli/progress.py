"""Live progress for the command line: what the run is doing now, and for how long.

One module for every long phase a person waits through: planning, loading the generator,
generating (denoising), judging, retrying a request, and batch or scoring counts with an ETA.
It knows whether it writes to a terminal:
- at a terminal, the current phase is one line redrawn in place (``\\r``) with its elapsed time,
  ticking every second even while a model request is in flight;
- in a log (not a TTY) only whole lines are written, never ``\\r``, and a phase that lasts
  gets a "still waiting" line every ``heartbeat_s`` seconds, so a log never goes silent.

The events come from the graph's ``custom`` stream (``nodes.events``) plus the node-start
notices the runner sends; retries and generator loading are read from the libraries' log
records (the OpenAI client's "Retrying request" and our generator's "loading generator").
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any, TextIO

from checkpoints.run_ids import printable
from nodes import events
from tools.logs import install as install_redaction

HEARTBEAT_S = 30.0
_REASON = re.compile(r"^\[([a-z_]+)\] ")
_PARSER_REASON = re.compile(r"^[a-z ]+ reply is not a valid [a-z ]+ \(([a-z_]+)\): (.*)$", re.DOTALL)


def plural(count: int, noun: str) -> str:
    """Count and noun, in the singular for one.

    >>> plural(1, "step"), plural(3, "step")
    ('1 step', '3 steps')"""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def clock(seconds: float) -> str:
    """Elapsed time, short.

    >>> clock(7.24), clock(75), clock(3725)
    ('7s', '1m15s', '1h02m')"""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def reason_once(error: str | None) -> str:
    """An unusable reply's error, short, with its reason code shown once: the parser's form
    (``critic reply is not a valid verdict (schema): …``) and that of runs stored before it
    (``[missing_answer] missing_answer: …``).

    >>> reason_once("critic reply is not a valid verdict (schema): 'refine_prompt' is missing")
    "schema: 'refine_prompt' is missing"
    >>> reason_once("[missing_answer] missing_answer: no <answer> tag")
    'missing_answer: no <answer> tag'
    >>> reason_once("[bad_json] the answer is not JSON")
    'bad_json: the answer is not JSON'
    """
    text = error or ""
    parsed = _PARSER_REASON.match(text)
    if parsed:
        return f"{parsed.group(1)}: {parsed.group(2)}"
    found = _REASON.match(text)
    if not found:
        return text
    rest = text[found.end() :]
    return rest if found.group(1) in rest[: len(found.group(1)) + 2] else f"{found.group(1)}: {rest}"


class _Display:
    """Where lines go: whole lines always; one redrawn status line only at a terminal."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.lock = threading.RLock()
        self._partial = False

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.started:7.1f}s] "

    def line(self, text: str) -> None:
        with self.lock:
            if self._partial:
                self.stream.write("\r\033[K")
                self._partial = False
            self.stream.write(self.stamp() + printable(text) + "\n")
            self.stream.flush()

    def status(self, text: str) -> None:
        """A line redrawn in place at a terminal; nothing in a log."""
        if not self.tty:
            return
        with self.lock:
            self.stream.write("\r\033[K" + self.stamp() + printable(text))
            self._partial = True
            self.stream.flush()

    def finish(self) -> None:
        with self.lock:
            if self._partial:
                self.stream.write("\r\033[K")
                self._partial = False
                self.stream.flush()


class ProgressPrinter:
    """Turns run events into progress lines; use as a context manager to get the ticking clock
    and the library log bridge (``with ProgressPrinter() as printer: start_run(..., on_event=printer)``)."""

    def __init__(self, stream: TextIO | None = None, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.display = _Display(stream)
        self.tty = self.display.tty
        self.heartbeat_s = heartbeat_s
        self.steps_total: int | None = None
        self._phase: tuple[str, float] | None = None
        self._beaten = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._bridge = _LogBridge(self)
        self._generated = False

    # -- the ticking phase -------------------------------------------------------------------
    def phase(self, label: str | None, *, announce: bool = True) -> None:
        """Start a phase (a line now, then the clock), or end the current one with None."""
        with self.display.lock:
            self._phase = (label, time.monotonic()) if label else None
            self._beaten = 0.0
        if label and announce:
            self.display.line(label)

    def tick(self) -> None:
        """Redraw the running phase with its elapsed time (or, in a log, a line now and then)."""
        with self.display.lock:
            if self._phase is None:
                return
            label, since = self._phase
            waited = time.monotonic() - since
            if self.tty:
                self.display.status(f"{label} · {clock(waited)}")
            elif waited - self._beaten >= self.heartbeat_s:
                self._beaten = waited
                self.display.line(f"{label} · still waiting ({clock(waited)})")

    def _run_ticker(self) -> None:
        while not self._stop.wait(1.0 if self.tty else min(1.0, self.heartbeat_s)):
            self.tick()

    def __enter__(self) -> "ProgressPrinter":
        self._stop.clear()
        self._ticker = threading.Thread(target=self._run_ticker, name="progress", daemon=True)
        self._ticker.start()
        self._bridge.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._bridge.remove()
        self.display.finish()

    # -- events --------------------------------------------------------------------------------
    def _where(self, event: dict[str, Any]) -> str:
        total = f"/{self.steps_total}" if self.steps_total else ""
        return f"step {event['step_number']}{total} · attempt {event['attempt']}"

    def _plan(self, numbers: list[int] | None, count: int) -> None:
        # Guidance runs number their new steps after the user's images: step 3 of a 2-step plan
        # is the 3rd of 4, so the total is the last step number, not the plan's length.
        self.steps_total = max(numbers) if numbers else count

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == events.NODE_STARTED:
            self._node_started(event)
        elif kind == events.RUN_RESUMED:
            self._plan(event.get("step_numbers"), event.get("steps") or 0)
            if self.steps_total:
                self.display.line(f"resuming: {event['steps_done']}/{self.steps_total} steps done")
        elif kind == events.PLAN_READY:
            self._plan(event.get("step_numbers"), event["steps"])
            names = "; ".join(event["step_names"])
            self.phase(None)
            ready = "plan given" if event.get("given") else "plan ready"
            self.display.line(f"{ready}: {plural(event['steps'], 'step')} ({names})")
        elif kind == events.ATTEMPT_STARTED:
            self.display.line(
                f"{self._where(event)} · {event['mode']} (seed {event['seed']}): {_short(event['prompt'])}"
            )
            self.phase(f"{self._where(event)} · generating", announce=False)
        elif kind == events.DENOISE_PROGRESS:
            self.phase(f"{self._where(event)} · denoising {event['done']}/{event['total']}", announce=False)
            self.tick()
        elif kind == events.IMAGE_READY:
            self.phase(None)
            self.display.line(f"{self._where(event)} · image ready in {event['seconds']:.2f}s")
        elif kind == events.VERDICT:
            self.phase(None)
            if event["success"] is True:
                said = "critic: passed"
            elif event["success"] is False:
                said = f"critic: rejected → {_short(event['refine_prompt'])}"
            else:
                said = f"critic reply unusable ({_short(reason_once(event['error']))}); regenerating"
            self.display.line(f"{self._where(event)} · {said}")
        elif kind == events.STEP_ACCEPTED:
            self.phase(None)
            total = f"/{self.steps_total}" if self.steps_total else ""
            how = f"attempt {event['attempt']}" if event["attempt"] else "your image, answered"
            self.display.line(f"step {event['step_number']}{total} accepted ({how})")
        elif kind == events.RUN_FINISHED:
            self.phase(None)
            self.display.line(f"document written to {event['document_dir']}")
        elif kind == events.REPLY_RETRY:  # the phase (waiting for that model) goes on
            where = f"{self._where(event)} · " if event.get("step_number") else ""
            self.display.line(
                f"{where}{event['role']} reply {event['try']} of {event['tries']} did not parse "
                f"({event['reason']}); asking again in {event['wait_s']:g} s"
            )

    def _node_started(self, event: dict[str, Any]) -> None:
        node = event.get("node")
        if node == "plan":
            who = f" ({event['model']})" if event.get("model") else ""
            self.phase(f"planning: waiting for the planner{who}")
        elif node == "critique":
            step = f"step {event['step_number']}" if event.get("step_number") else "the image"
            total = f"/{self.steps_total}" if self.steps_total and event.get("step_number") else ""
            self.phase(f"judging {step}{total}: waiting for the critic", announce=False)
        elif node == "generate" and not self._generated:
            # The first generation imports torch/diffusers and loads the model: tens of seconds.
            self._generated = True
            self.phase("preparing the generator (first image: imports and loads the model)")
        elif node == "compose":
            self.phase("writing the document", announce=False)

    def note(self, text: str, *, phase: bool = False) -> None:
        """A line from outside the event stream (a retry, a model loading)."""
        if phase:
            self.phase(text)
        else:
            self.display.line(text)


def quiet_model_loading() -> None:
    """Hush the libraries' own loading bars (transformers' "Loading weights" / "Loading checkpoint
    shards", the Hub's) for every command, once, before anything loads: they would tear through
    the progress display, which says what is loading instead. Nothing heavy is imported for it:
    libraries not yet imported read ``HF_HUB_DISABLE_PROGRESS_BARS`` when they are (child
    processes too); a person who set that variable keeps their choice."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"].strip().lower() in ("0", "false", "no", "off"):
        return
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        if name in sys.modules:  # already imported (embedding code, tests): they read no variable now
            sys.modules[name].disable_progress_bar()


class _LogBridge(logging.Handler):
    """Library log records a person should see while waiting, as progress lines."""

    LOGGERS = ("openai._base_client", "tools.generator.diffusion", "tools.llm.loading")

    def __init__(self, printer: ProgressPrinter) -> None:
        super().__init__(logging.INFO)
        self.printer = printer
        install_redaction(self)  # a retried request's URL may hold a password
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def install(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.propagate))
            if logger.getEffectiveLevel() > logging.INFO:  # not verbose: only we show them
                logger.setLevel(logging.INFO)
                logger.propagate = False
            logger.addHandler(self)

    def remove(self) -> None:
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a malformed record must not break the run
            return
        if record.name == "openai._base_client" and message.startswith("Retrying request"):
            found = re.search(r"in ([\d.]+) seconds \(retry (\d+) of (\d+)\)", message)
            detail = f" in {float(found.group(1)):.1f}s (retry {found.group(2)} of {found.group(3)})" if found else ""
            self.printer.note(f"the endpoint did not answer; retrying{detail}")
        elif message.startswith("loading generator"):
            self.printer.note(message.replace("loading generator", "loading the generator", 1), phase=True)
        elif message.startswith("Loaded VLM"):
            self.printer.note(message.replace("Loaded VLM", "loaded the VLM", 1))
        elif record.levelno >= logging.WARNING:
            self.printer.note(f"warning: {message}")


class CountProgress:
    """Progress of a counted job (batch runs, judged attempts): done/total, elapsed and an ETA.

    At a terminal one line updates in place; in a log a line is written every ``every`` items
    (and for the last), never with ``\\r``.
    """

    def __init__(self, what: str, stream: TextIO | None = None, *, every: int = 0) -> None:
        self.display = _Display(stream)
        self.what = what
        self.every = every

    def eta(self, done: int, total: int) -> str:
        elapsed = time.monotonic() - self.display.started
        if done <= 0 or done >= total:
            return f"{clock(elapsed)} elapsed"
        left = elapsed / done * (total - done)
        return f"{clock(elapsed)} elapsed, ETA {clock(left)}"

    def update(self, done: int, total: int, detail: str = "") -> None:
        text = f"{self.what} {done}/{total}" + (f" · {detail}" if detail else "") + f" · {self.eta(done, total)}"
        every = self.every or max(1, total // 10)
        if self.display.tty and done < total:
            self.display.status(text)
        elif done >= total or (not self.display.tty and done % every == 0):
            self.display.line(text)

    def line(self, done: int, total: int, detail: str) -> None:
        """One whole line per item (batch runs: which run ended and how)."""
        self.display.line(f"[{done}/{total}] {detail} · {self.eta(done, total)}")

    def finish(self) -> None:
        self.display.finish()


def _short(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
