"""Content-addressed image store: images live as PNG files named by their sha256.

State and checkpoints keep only ``ImageRef``s (relative path, sha256, size). The same pixels
always give the same file, so a step regenerated after a crash with the same seed lands on the
same path instead of leaving a duplicate, and forked runs share images for free.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from PIL import Image
from typing_extensions import TypedDict

# Input images over this many pixels are refused before decoding (PIL's bomb guard, made an error).
MAX_INPUT_PIXELS = 64 * 1024 * 1024


class ImageRef(TypedDict):
    """An image in the store: ``path`` is relative to the runs directory."""

    path: str
    sha256: str
    width: int
    height: int


class ImageInputError(ValueError):
    """An input image cannot be used; the message names the file and the fix."""


class ImageStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def put(self, image: Image.Image) -> ImageRef:
        """Store an image (converted to RGB by ``to_rgb``'s rule, as PNG) and return its reference."""
        image = to_rgb(image)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        relative = f"images/{digest[:2]}/{digest}.png"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)  # atomic: a reader never sees half a file
        return ImageRef(path=relative, sha256=digest, width=image.width, height=image.height)

    def path(self, ref: ImageRef) -> Path:
        """Where a stored image lies. A reference comes from a stored state or document, which a
        tampered file can fill: one that resolves outside the store's images/ folder is refused."""
        images = (self.root / "images").resolve()
        target = (self.root / ref["path"]).resolve()
        if images not in target.parents:
            raise ValueError(
                f"image path {ref['path']!r} lies outside the image store {images}; the run's stored data was altered"
            )
        return target

    def read_png(self, ref: ImageRef) -> bytes:
        """The stored PNG bytes; a missing or altered file is an error, never a silent substitute."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"image {ref['path']} is missing from the store at {self.root}; the run directory was "
                f"moved or pruned. Point --runs-dir at the folder that holds it."
            ) from None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ValueError(f"image {path} does not match its recorded sha256; the store was altered")
        return data

    def load(self, ref: ImageRef) -> Image.Image:
        """Open a stored image as RGB (checked against its sha256)."""
        image = Image.open(io.BytesIO(self.read_png(ref)))
        image.load()
        return image.convert("RGB")

    def import_file(self, source: str | os.PathLike) -> ImageRef:
        """Validate a user's input image (a path or a data URL) and store it as RGB PNG."""
        return self.put(load_input_image(source))


DATA_URL_PREFIX = "data:image/"


def _open_source(source: str | os.PathLike) -> tuple[Any, str]:
    """A file-like object for a path or a ``data:image/...;base64,...`` URL, and a name for errors."""
    text = str(source)
    if text.startswith(DATA_URL_PREFIX):
        header, _, payload = text.partition(",")
        if not header.endswith(";base64") or not payload:
            raise ImageInputError("an input image data URL must look like data:image/png;base64,<data>")
        try:
            return io.BytesIO(base64.b64decode(payload, validate=True)), f"data URL ({header[5:]})"
        except (binascii.Error, ValueError):
            raise ImageInputError("an input image data URL does not hold valid base64") from None
    file = Path(source)
    if not file.is_file():
        raise ImageInputError(f"input image {file} does not exist or is not a file; check the path")
    return file, str(file)


def load_input_image(source: str | os.PathLike) -> Image.Image:
    """Open a user-supplied image (path or data URL) as RGB, with an error that names it and the fix.

    The pixel count is checked from the header before any pixel is decoded (decompression bombs
    never reach memory); the camera's EXIF orientation is applied, so a phone photo is upright as
    every viewer shows it; then ``to_rgb`` converts the mode. Only the first frame of an animated
    or multi-page file is used.
    """
    from PIL import ImageOps

    opened, file = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as probe:
                width, height = probe.size
                if width * height > MAX_INPUT_PIXELS:
                    raise ImageInputError(
                        f"input image {file} is {width}x{height} pixels, over the "
                        f"{MAX_INPUT_PIXELS // (1024 * 1024)} MP limit; downscale it first"
                    )
                probe.load()
                image = ImageOps.exif_transpose(probe)  # a copy, upright
    except ImageInputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageInputError(f"input image {file} is too large to decode safely; downscale it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(
            f"input image {file} cannot be read as an image ({exc}); pass a PNG, JPEG or WebP file"
        ) from None
    try:
        return to_rgb(image)
    except ImageInputError as exc:
        raise ImageInputError(f"input image {file}: {exc}") from None


# Modes with more than 8 bits per sample, which PIL's own convert("RGB") clips instead of scaling.
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, by one documented rule per mode (the generator takes only RGB).

    * RGB: unchanged.
    * Transparency (RGBA, LA, PA, premultiplied RGBa/La, or a palette/grey/RGB image with a
      transparent colour): composited on white, so transparent areas read as empty paper (the
      same white as the step-1 canvas), not as black.
    * 16-bit grey (I;16, 16-bit PNG): scaled to 8 bits (value / 257), not clipped at 255.
    * 32-bit integer grey (I): read as 16-bit when any value exceeds 255, else as 8-bit; clipped
      to that range.
    * Float grey (F): values in 0..1 are scaled to 0..255; otherwise clipped to 0..255; NaN -> 0.
    * Everything else (L, 1-bit, P, CMYK, YCbCr, LAB, HSV, ...): PIL's conversion. CMYK uses PIL's
      plain formula without colour management (an embedded ICC profile is ignored).
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit_grey(image)
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            if image.mode == "La":
                image = image.convert("LA")
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageInputError(
            f"image mode {image.mode!r} cannot be converted to RGB ({exc}); save the image as an 8-bit RGB PNG or JPEG"
        ) from None


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    elif image.mode == "I":
        values = values.clip(0, 65535) / 257.0 if values.max(initial=0) > 255 else values.clip(0, 255)
    else:  # F
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        finite_max = values.max(initial=0)
        values = values * 255.0 if finite_max <= 1.0 else values
        values = values.clip(0, 255)
    return Image.fromarray(np.rint(values).astype(np.uint8))  # 2-D uint8 -> mode L


def blank_canvas(width: int, height: int) -> Image.Image:
    """The critic's before-image for step 1: a white canvas says 'generated from scratch'."""
    return Image.new("RGB", (width, height), (255, 255, 255))


@functools.lru_cache(maxsize=8)
def blank_canvas_png(width: int, height: int) -> bytes:
    """The white canvas as PNG bytes, encoded once per size."""
    buffer = io.BytesIO()
    blank_canvas(width, height).save(buffer, format="PNG")
    return buffer.getvalue()
