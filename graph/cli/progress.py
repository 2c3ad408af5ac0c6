"""Live progress for the command line, drawn from the graph's custom events.

On a terminal the denoising progress updates in place; in a log (not a TTY) only whole lines
are written, one per event that matters.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from nodes import events


class ProgressPrinter:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self.steps_total: int | None = None
        self._partial = False

    def _line(self, text: str, *, transient: bool = False) -> None:
        stamp = f"[{time.perf_counter() - self.started:7.1f}s] "
        if transient:
            if self.tty:
                self.stream.write("\r\033[K" + stamp + text)
                self._partial = True
                self.stream.flush()
            return
        if self._partial:
            self.stream.write("\r\033[K")
            self._partial = False
        self.stream.write(stamp + text + "\n")
        self.stream.flush()

    def _where(self, event: dict[str, Any]) -> str:
        total = f"/{self.steps_total}" if self.steps_total else ""
        return f"step {event['step_number']}{total} · attempt {event['attempt']}"

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == events.PLAN_READY:
            self.steps_total = event["steps"]
            names = "; ".join(event["step_names"])
            self._line(f"plan ready: {event['steps']} steps ({names})")
        elif kind == events.ATTEMPT_STARTED:
            self._line(f"{self._where(event)} · {event['mode']} (seed {event['seed']}): "
                       f"{_short(event['prompt'])}")
        elif kind == events.DENOISE_PROGRESS:
            self._line(f"{self._where(event)} · denoising {event['done']}/{event['total']}",
                       transient=True)
        elif kind == events.IMAGE_READY:
            self._line(f"{self._where(event)} · image ready in {event['seconds']:.2f}s")
        elif kind == events.VERDICT:
            if event["success"] is True:
                said = "critic: passed"
            elif event["success"] is False:
                said = f"critic: rejected → {_short(event['refine_prompt'])}"
            else:
                said = f"critic reply unusable ({_short(event['error'])}); regenerating"
            self._line(f"{self._where(event)} · {said}")
        elif kind == events.STEP_ACCEPTED:
            self._line(f"step {event['step_number']}/{event['steps_total']} accepted "
                       f"(attempt {event['attempt']})")
        elif kind == events.RUN_FINISHED:
            self._line(f"document written to {event['document_dir']}")


def _short(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
