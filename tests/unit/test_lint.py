"""The code passes the project's ruff configuration (``[tool.ruff]`` in pyproject.toml): lint and format."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_check_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed; `make install` installs the test extra that holds it"
    done = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_the_code_as_it_is():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed; `make install` installs the test extra that holds it"
    done = subprocess.run(
        [ruff, "format", "--check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, "run `ruff format .` to apply the project's format:\n" + done.stdout + done.stderr
