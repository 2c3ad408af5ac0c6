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

from graph.state import ImageRef

# Input images over this many pixels are refused before decoding (PIL's bomb guard, made an error).
MAX_INPUT_PIXELS = 64 * 1024 * 1024


class ImageInputError(ValueError):
    """An input image cannot be used; the message names the file and the fix."""


class ImageStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def put(self, image: Image.Image) -> ImageRef:
        """Store an image (converted to RGB PNG) and return its reference."""
        if image.mode != "RGB":
            image = image.convert("RGB")
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
        return self.root / ref["path"]

    def read_png(self, ref: ImageRef) -> bytes:
        """The stored PNG bytes; a missing or altered file is an error, never a silent substitute."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"image {ref['path']} is missing from the store at {self.root}; the run directory was "
                f"moved or pruned. Point --runs-dir at the folder that holds it.") from None
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
    """Open a user-supplied image (path or data URL) as RGB, with an error that names it and the fix."""
    opened, file = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as probe:
                width, height = probe.size
                if width * height > MAX_INPUT_PIXELS:
                    raise ImageInputError(
                        f"input image {file} is {width}x{height} pixels, over the "
                        f"{MAX_INPUT_PIXELS // (1024 * 1024)} MP limit; downscale it first")
                probe.load()
                image = probe.copy()
    except ImageInputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageInputError(f"input image {file} is too large to decode safely; downscale it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(
            f"input image {file} cannot be read as an image ({exc}); pass a PNG, JPEG or WebP file") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])  # transparency becomes white, not black
        return background
    return image.convert("RGB")


def blank_canvas(width: int, height: int) -> Image.Image:
    """The critic's before-image for step 1: a white canvas says 'generated from scratch'."""
    return Image.new("RGB", (width, height), (255, 255, 255))


@functools.lru_cache(maxsize=8)
def blank_canvas_png(width: int, height: int) -> bytes:
    """The white canvas as PNG bytes, encoded once per size."""
    buffer = io.BytesIO()
    blank_canvas(width, height).save(buffer, format="PNG")
    return buffer.getvalue()
