"""`interleave run` at a real terminal (a pseudo-terminal): live progress while the planner is
asked, and Ctrl-C (a real SIGINT) that stops the run within a few seconds while a planner request
is in flight against a slow scripted server, leaving it resumable."""

from __future__ import annotations

import os
import re
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REQUEST
from graph.cli.main import EXIT_INTERRUPTED, EXIT_OK, main
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer

REPO = Path(__file__).resolve().parents[2]


class Terminal:
    """A command running on a pseudo-terminal; ``read_until`` collects what it draws."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        os.close(slave)
        self.text = ""

    def read_until(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.text and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the command ended
                    break
        return needle in self.text

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        os.close(self.master)


def test_ctrl_c_stops_a_run_while_the_planner_is_asked_and_it_resumes(runs_dir, tiny_pipeline, capsys):
    slow, released = threading.Event(), threading.Event()
    slow.set()

    def respond(body: dict) -> str:
        if slow.is_set():  # a planner that takes minutes (the default timeout is 600 s)
            released.wait(120)
        return demo_script.respond(body)

    with ScriptedChatServer(respond) as server:
        settings = [
            "--planner-base-url",
            server.base_url,
            "--critic-base-url",
            server.base_url,
            "--planner-model",
            demo_script.PLANNER_MODEL,
            "--critic-model",
            demo_script.CRITIC_MODEL,
            "--generator-model",
            str(tiny_pipeline),
            "--device",
            "cpu",
            "--width",
            "64",
            "--height",
            "64",
            "--num-inference-steps",
            "2",
        ]
        terminal = Terminal(
            [
                sys.executable,
                "-m",
                "graph.cli.main",
                "run",
                REQUEST,
                "--run-id",
                "slow",
                "--runs-dir",
                runs_dir,
                *settings,
            ]
        )
        try:
            assert terminal.read_until("planning: waiting for the planner (demo-planner)", 120), terminal.text
            # At a terminal the waiting line ticks with its elapsed time, redrawn in place.
            terminal.read_until("never printed", 3.5)
            ticks = re.findall(r"\(demo-planner\) · (\d+)s", terminal.text)
            assert len(set(ticks)) >= 2 and "\r\x1b[K" in terminal.text, terminal.text
            terminal.process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            code = terminal.process.wait(timeout=30)
            stopped_in = time.monotonic() - sent
            terminal.read_until("interleave resume slow", 5)
        finally:
            terminal.close()
        assert code == EXIT_INTERRUPTED
        assert stopped_in < 5, f"Ctrl-C took {stopped_in:.1f}s"
        assert "interrupted; run slow is saved at its last completed node (interleave resume slow)" in terminal.text

        assert main(["--runs-dir", runs_dir, "list"]) == EXIT_OK
        assert "slow  interrupted" in capsys.readouterr().out

        slow.clear()
        released.set()  # the planner answers now: the run continues where it stopped
        assert main(["resume", "slow", "--runs-dir", runs_dir]) == EXIT_OK
        out, err = capsys.readouterr()
        assert "run slow finished" in out
        assert "plan ready: 3 steps" in err and "step 3/3 accepted" in err
