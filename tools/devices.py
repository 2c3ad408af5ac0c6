"""Devices and dtypes, resolved one way for every model this project loads (VLMs and generators),
and the per-GPU lock between CUDA-graph capture and other GPU work.

``"auto"`` means the GPU when torch sees one, else the CPU; bf16 on a GPU, fp32 on the CPU (the
CPU has no fast bf16 matmul and fp32 keeps CPU tests exact). A device the machine lacks is
refused with a ``ValueError`` that names the value and what to use instead.

Capture lock. While a stream records a CUDA graph, a kernel that another thread launches on the
default stream invalidates the recording (``cudaErrorStreamCaptureInvalidated``), and the failure
then surfaces in whichever call touches the GPU next. Concurrent runs hit exactly that: the
critic's fast decode captures its step graph while the shared generator worker denoises an image
for another run (found by ``evals.perf.trajectories`` on the H200). Capture takes a few
milliseconds, so it holds the lock of its GPU, and so does every pipeline call of the generator
on that GPU (pipelines on other GPUs go on); replaying a captured graph needs no lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: The dtype names a user may ask for.
DTYPES = ("auto", "bfloat16", "float16", "float32")

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def resolve_device(device: str) -> str:
    """A concrete torch device name for ``device`` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...): {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but this torch sees no CUDA GPU; use "
            f"device 'cpu' (slow) or 'auto', or run on a GPU machine"
        )
    return str(resolved)


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype name to load with on ``device`` (already resolved)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def torch_dtype(name: str) -> Any:
    """The torch dtype object of a resolved dtype name."""
    import torch

    return getattr(torch, name)


def capture_lock(device: Any) -> threading.Lock:
    """The lock of one device (a torch.device or its name); CPU work gets its own, unused lock."""
    key = str(device)
    if key == "cuda":
        import torch

        key = f"cuda:{torch.cuda.current_device()}"
    with _guard:
        return _locks.setdefault(key, threading.Lock())


def capture_graph(step: Callable[[], None], device: Any, *, stream: Any = None, pool: Any = None) -> Any:
    """Record ``step`` into a ``torch.cuda.CUDAGraph`` on ``stream`` (memory from ``pool``) while
    holding ``device``'s capture lock, the GPU idle before and after; nothing runs while it
    records, so the caller replays the graph for the step's first real run. ``step`` must have
    run once (eagerly, on that stream) before: the warm-up capture needs.

    CUDA cannot capture on a device's default stream, so a caller that works there (the VLM
    engine with ``own_stream=False``) gets its graph recorded on torch's side capture stream
    instead; replaying it on the default stream afterwards is allowed."""
    import torch

    if stream is not None and stream == torch.cuda.default_stream(stream.device):
        stream = None  # torch.cuda.graph then records on its own side stream
    graph = torch.cuda.CUDAGraph()
    with capture_lock(device):  # nothing else may launch work on the GPU while this records
        torch.cuda.synchronize(device)
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            step()
        torch.cuda.synchronize(device)
    return graph
