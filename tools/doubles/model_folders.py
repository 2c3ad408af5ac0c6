"""Publishing a model folder built in a temporary directory, safely under concurrency.

Tiny test models are saved once and shared by every test and process that asks for them. A
folder appears at its final path only complete (built beside it, then renamed), an incomplete
one left by a killed process is rebuilt, and two processes building the same folder at once
both end with the complete one.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def publish_folder(tmp: Path, path: Path, is_complete: Callable[[Path], bool], label: str) -> Path:
    """Move the finished folder ``tmp`` to ``path`` (replacing an incomplete one) and return it."""
    if path.exists() or path.is_symlink():
        if is_complete(path):  # another process finished first
            return path
        logger.info("Rebuilding incomplete %s folder %s", label, path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    try:
        os.replace(tmp, path)
    except OSError:
        if is_complete(path):  # lost a race with a concurrent writer
            return path
        raise
    logger.info("Wrote %s to %s", label, path)
    return path
