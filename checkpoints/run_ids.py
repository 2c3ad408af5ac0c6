"""What a run id is, and where a run may write: the one definition every entry point checks.

A run id names a folder of the runs directory (``runs/<run_id>/document.*``), a LangGraph
thread and a registry row, and it is printed by ``interleave list``. So it is a short safe slug:
1 to 64 characters of ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
digit, not ending in ``.sqlite`` (the database's own name) and not one of the folders the tool
keeps beside the runs (``images``, ``_demo``, ...). That rules out ``..``, ``/``, absolute paths,
control characters and ANSI escapes in every place an id enters (CLI ``--run-id``, ``fork
--run-id``, the sub-agent tool, Studio input, the planner's failure files). Every write path is
also resolved and checked to lie inside the runs folder (``inside_runs_dir``), so a symlink or a
stored path cannot lead a write elsewhere either.
"""

from __future__ import annotations

import re
from pathlib import Path

MAX_LENGTH = 128
_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Names the tool uses inside the runs folder for things other than runs.
RESERVED = frozenset({"images", "_demo", "_compile_cache", "evals"})


class InvalidRunIdError(ValueError):
    pass


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a valid run id, else raise ``InvalidRunIdError`` saying why.

    >>> check_run_id("crane-2")
    'crane-2'
    """
    if not isinstance(run_id, str):
        raise InvalidRunIdError(f"a run id is text, not {type(run_id).__name__} ({run_id!r})")
    hint = "use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. crane-2)"
    if not (len(run_id) <= MAX_LENGTH and _PATTERN.fullmatch(run_id)):
        raise InvalidRunIdError(f"run id {run_id!r} is not allowed: {hint}")
    if run_id.lower() in RESERVED or run_id.lower().endswith((".sqlite", ".sqlite-wal", ".sqlite-shm")):
        raise InvalidRunIdError(f"run id {run_id!r} is a name the runs folder uses for its own files; choose another")
    return run_id


def inside_runs_dir(runs_dir: str | Path, path: str | Path) -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside ``runs_dir``."""
    root = Path(runs_dir).resolve()
    target = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{path} resolves to {target}, outside the runs folder {root}; refusing to use it")
    return target


def run_folder(runs_dir: str | Path, run_id: str) -> Path:
    """The folder of run ``run_id`` (checked id, resolved inside the runs folder)."""
    return inside_runs_dir(runs_dir, check_run_id(run_id))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """Text for a terminal: control characters (ANSI escapes included) shown as ``\\xNN``.

    >>> printable("a\\x1b[2Jb")
    'a\\\\x1b[2Jb'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
