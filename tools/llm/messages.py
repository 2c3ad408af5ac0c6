"""LangChain messages -> chat-template messages and the PIL images they refer to.

Why this module exists: the nodes send the in-process VLM the same messages they send an
OpenAI-compatible server: system/human/ai messages whose content is a string or OpenAI-style
parts, with images as ``image_url`` data URLs (or LangChain standard ``image`` blocks,
``file://`` URLs and local paths). A processor's chat template wants ``{"role", "content"}``
dicts with ``{"type": "image"}`` placeholders and the decoded images alongside, in order. The
conversion, and the clear ``ValueError`` for what cannot be read in-process (remote URLs,
invalid base64, missing files, unknown roles or part types), is this module's one job.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, ChatMessage

if TYPE_CHECKING:
    from PIL import Image

_ROLES = {"system": "system", "human": "user", "user": "user", "ai": "assistant", "assistant": "assistant"}


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."


def load_image(url: str) -> Image.Image:
    """A data URL (base64 image), a ``file://`` URL or a local path, decoded to an RGB image."""
    from PIL import Image, UnidentifiedImageError

    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64") or not payload:
            raise ValueError(
                f"image data URL {_short(url)!r} is not a base64 image "
                f"(expected data:image/png;base64,... or data:image/jpeg;base64,...)"
            )
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image data URL {_short(url)!r} holds invalid base64: {exc}") from None
    elif url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        source = Path(urllib.request.url2pathname(parsed.path))
    elif "://" in url:
        raise ValueError(
            f"image URL {_short(url)!r} cannot be read in-process: send the image as a "
            f"data URL (data:image/png;base64,...), a file:// URL or a local path"
        )
    else:
        source = Path(url).expanduser()
    if isinstance(source, Path) and not source.is_file():
        raise ValueError(f"image file {str(source)!r} (from {_short(url)!r}) does not exist")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {_short(url)!r} could not be decoded: {exc}") from None


def _image_url(part: dict[str, Any]) -> str:
    """The URL of an OpenAI ``image_url`` part or a LangChain standard ``image`` block."""
    if part.get("type") == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
    elif part.get("base64"):
        url = f"data:{part.get('mime_type', 'image/png')};base64,{part['base64']}"
    else:
        url = part.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError(f"image part {str(part)[:80]!r} has no URL")
    return url


def to_conversation(messages: list[BaseMessage]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Chat-template messages (``{"role", "content"}``; content a string, or parts ``{"type":
    "image"}`` / ``{"type": "text", "text"}`` when images are present) and the images in order."""
    conversation: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else message.type
        if role not in _ROLES:
            raise ValueError(
                f"{type(message).__name__} (role {role!r}) is not supported by the "
                f"transformers backend; use system, human and ai messages"
            )
        content = message.content
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        converted: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, str):
                converted.append({"type": "text", "text": part})
            elif isinstance(part, dict) and part.get("type") == "text":
                converted.append({"type": "text", "text": str(part.get("text", ""))})
            elif isinstance(part, dict) and part.get("type") in ("image_url", "image"):
                images.append(load_image(_image_url(part)))
                converted.append({"type": "image"})
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"message part of type {kind!r} is not supported; use text and image_url parts")
        if all(p["type"] == "text" for p in converted):
            conversation.append({"role": _ROLES[role], "content": "".join(p["text"] for p in converted)})
        else:
            conversation.append({"role": _ROLES[role], "content": converted})
    if not conversation:
        raise ValueError("no messages to send")
    return conversation, images
