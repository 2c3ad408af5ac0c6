"""The generator path on a CUDA GPU in bf16 (run on the GPU machine: pytest -m gpu tests/gpu).

Uses only tools.diffusion and the tiny random-weight klein pipeline, loaded through the same
``load_pipeline`` / ``from_pretrained`` path as real weights.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from tools import diffusion
    from tools.tiny_klein import save_tiny_klein

    path = save_tiny_klein(tmp_path_factory.mktemp("models") / "tiny-klein")
    return diffusion.load_pipeline(str(path), device="cuda", dtype="auto")


def generate(pipe, seed, source=None, size=128):
    from tools import diffusion

    return diffusion.generate(pipe, prompt="a paper crane on a table", seed=seed, width=size,
                              height=size, steps=4, guidance=1.0, source=source)


def test_pipeline_runs_in_bf16_on_cuda(pipe):
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.device.type == "cuda"


@pytest.mark.parametrize("size", [64, 128, 256])
def test_text_to_image_and_edit_on_cuda(pipe, size):
    import numpy as np

    first = generate(pipe, seed=1, size=size)
    edited = generate(pipe, seed=2, source=first, size=size)
    for image in (first, edited):
        pixels = np.asarray(image, dtype=np.float32)
        assert image.size == (size, size) and np.isfinite(pixels).all() and pixels.std() > 1.0
    assert np.asarray(first).tobytes() != np.asarray(edited).tobytes()


def test_same_seed_same_image_on_cuda(pipe):
    import numpy as np

    source = generate(pipe, seed=3)
    a, b = generate(pipe, seed=7, source=source), generate(pipe, seed=7, source=source)
    c = generate(pipe, seed=8, source=source)
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.asarray(a).tobytes() != np.asarray(c).tobytes()
