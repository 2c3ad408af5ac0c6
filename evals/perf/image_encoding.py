"""How long it takes to turn a stored 1024² image into a part of a planner/critic message.

    python -m evals.perf.image_encoding [--repeat 20]

Measured per image, median of ``--repeat`` runs, on realistic content (a photo-like image: smooth
gradients plus noise, which compresses like a real render; not a flat colour):
- baseline: decode the PNG with PIL and encode it again as PNG (what a naive client does);
- data URL, within the cap: the stored PNG bytes, base64 (what we send for 1-4 images);
- data URL, crowded message: downscaled to 384x384 pixels and JPEG-encoded (5+ images), first
  time (cold) and again (cached per process);
- file URL: a ``file://`` URL to the stored file (vLLM reads it itself).
Target from the issue: <= 15 ms per 1024² image.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from tools.llm import images as vlm_images
from tools.store.images import ImageStore


def photo_like(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 150 + 50], axis=-1)
    noise = rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per case (median)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as root:
        store = ImageStore(root)
        refs = [store.put(photo_like(args.size, seed)) for seed in range(args.repeat + 1)]
        path = store.path(refs[0])

        def naive() -> None:
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, format="PNG")
            base64.b64encode(buffer.getvalue())

        few = vlm_images.MessageImages(store, transport="data", max_pixels=args.size**2, image_count=2)
        crowded = vlm_images.MessageImages(store, transport="data", max_pixels=args.size**2, image_count=8)
        files = vlm_images.MessageImages(store, transport="file", max_pixels=args.size**2, image_count=2)
        cold = iter(refs[1:])
        rows = [
            ("baseline: PIL decode + PNG re-encode + base64", median_ms(naive, args.repeat)),
            ("data URL, stored PNG as is (1-4 images)", median_ms(lambda: few.part(refs[0]), args.repeat)),
            (
                "data URL, 384x384 JPEG, first time (5+ images)",
                median_ms(lambda: crowded.part(next(cold)), args.repeat),
            ),
            ("data URL, 384x384 JPEG, cached", median_ms(lambda: crowded.part(refs[1]), args.repeat)),
            ("file:// URL", median_ms(lambda: files.part(refs[0]), args.repeat)),
        ]
        png_kib = path.stat().st_size / 1024
    print(f"{args.size}x{args.size} photo-like image, stored PNG {png_kib:.0f} KiB, median of {args.repeat}")
    baseline = rows[0][1]
    for name, ms in rows:
        print(f"  {name:<50} {ms:8.2f} ms   {baseline / ms:6.1f}x faster than baseline")


if __name__ == "__main__":
    main()
