"""Images as parts of planner and critic messages, within the pixel budget a VLM can take.

A Qwen-VL-style model turns every 28x28 patch into a token, so one 1024² image is ~1.3k tokens
and eight of them crowd out the text. Two caps apply, per image and aspect kept:
- ``max_pixels`` (the run's ``vlm_image_max_pixels``, default 1024²) always;
- 384x384 pixels once a message holds ``CROWDED_AT`` (5) images or more, as the reference does.

Two ways to send an image:
- ``data``: the bytes inline as a data URL. An image already within its cap is sent as the very
  PNG the store holds (base64 only, ~2 ms for 1024²); a downscaled one is encoded as JPEG
  (quality 90), much cheaper to encode than PNG and smaller on the wire.
- ``file``: a ``file://`` URL of a PNG in the image store (a downscaled copy is stored first). Only
  a vLLM server on the same machine started with ``--allowed-local-media-path`` covering the runs
  folder can read these; nothing is copied into the request.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

from PIL import Image

from tools.store.images import ImageRef, ImageStore, blank_canvas, blank_canvas_png

CROWDED_AT = 5
CROWDED_MAX_PIXELS = 384 * 384
JPEG_QUALITY = 90
TRANSPORTS = ("data", "file")


def pixel_cap(image_count: int, max_pixels: int) -> int:
    """The most pixels each image of a message holding ``image_count`` images may have.

    >>> pixel_cap(2, 1024 * 1024), pixel_cap(5, 1024 * 1024), pixel_cap(8, 256 * 256)
    (1048576, 147456, 65536)
    """
    return min(max_pixels, CROWDED_MAX_PIXELS) if image_count >= CROWDED_AT else max_pixels


def fitted_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect within ``max_pixels`` (never upscaled).

    >>> fitted_size(1024, 1024, 384 * 384), fitted_size(2000, 500, 384 * 384), fitted_size(64, 64, 4096)
    ((384, 384), (768, 192), (64, 64))
    """
    if width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def _data_url(data: bytes, mime: str) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}


def _file_url(path: Path) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": path.resolve().as_uri()}}


@functools.lru_cache(maxsize=64)
def _downscaled_jpeg(path: str, sha256: str, size: tuple[int, int]) -> bytes:
    # Keyed by content hash too: the same file path always holds the same pixels in the store.
    with Image.open(path) as image:
        image.draft("RGB", size)  # a no-op for PNG, a fast path for JPEG
        small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class MessageImages:
    """Builds the image parts of one message, applying the caps for its image count."""

    def __init__(self, store: ImageStore, *, transport: str, max_pixels: int, image_count: int):
        if transport not in TRANSPORTS:
            raise ValueError(f"image transport {transport!r} must be one of {', '.join(TRANSPORTS)}")
        self.store = store
        self.transport = transport
        self.cap = pixel_cap(image_count, max_pixels)

    def part(self, ref: ImageRef) -> dict[str, Any]:
        """The content part for a stored image."""
        size = fitted_size(ref["width"], ref["height"], self.cap)
        if size == (ref["width"], ref["height"]):
            if self.transport == "file":
                return _file_url(self.store.path(ref))
            return _data_url(self.store.read_png(ref), "image/png")
        self.store.read_png(ref)  # verifies the file is there and unaltered before resizing it
        if self.transport == "file":
            with Image.open(self.store.path(ref)) as image:
                small = self.store.put(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))
            return _file_url(self.store.path(small))
        return _data_url(_downscaled_jpeg(str(self.store.path(ref)), ref["sha256"], size), "image/jpeg")

    def blank(self, width: int, height: int) -> dict[str, Any]:
        """A white canvas of the given size (the critic's before-image for a first step)."""
        width, height = fitted_size(width, height, self.cap)
        if self.transport == "data":
            return _data_url(blank_canvas_png(width, height), "image/png")
        return _file_url(self.store.path(_stored_blank(str(self.store.root), width, height)))


@functools.lru_cache(maxsize=8)
def _stored_blank(root: str, width: int, height: int) -> ImageRef:
    return ImageStore(root).put(blank_canvas(width, height))
