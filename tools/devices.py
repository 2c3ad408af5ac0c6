"""One lock between CUDA-graph capture and the other GPU work of this process.

While a stream records a CUDA graph, a kernel that another thread launches on the default
stream invalidates the recording (``cudaErrorStreamCaptureInvalidated``), and the failure then
surfaces in whichever call touches the GPU next. Concurrent runs hit exactly that: the critic's
fast decode captures its step graph while the shared generator worker denoises an image for
another run (found by ``evals.perf.trajectories`` on the H200). Capture takes a few
milliseconds, so it holds the lock of its GPU, and so does every pipeline call of the generator
on that GPU (pipelines on other GPUs go on); replaying a captured graph needs no lock.
"""

from __future__ import annotations

import threading
from typing import Any

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def capture_lock(device: Any) -> threading.Lock:
    """The lock of one device (a torch.device or its name); CPU work gets its own, unused lock."""
    key = str(device)
    if key == "cuda":
        import torch

        key = f"cuda:{torch.cuda.current_device()}"
    with _guard:
        return _locks.setdefault(key, threading.Lock())
