"""Chat inputs for the GPU tests of the in-process VLM: a critic-style message with two images.

The GPU tests run with ``--noconftest`` (the GPU machine lacks LangGraph), so shared helpers live
in this plain module beside them instead of a conftest.
"""

from __future__ import annotations

import base64
import io


def data_url(seed: int, size: int = 96) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def critic_messages(before: int, after: int, text: str = "Original instruction: add a red kite"):
    from langchain_core.messages import HumanMessage, SystemMessage

    return [
        SystemMessage("You judge one editing step."),
        HumanMessage(
            [
                {"type": "image_url", "image_url": {"url": data_url(before)}},
                {"type": "image_url", "image_url": {"url": data_url(after)}},
                {"type": "text", "text": text},
            ]
        ),
    ]
