"""A binary file given as --prompts is refused whole, naming the file and what to pass instead."""

import io

import pytest
from PIL import Image

from training.data.prompt_files import read_prompt_file


def test_an_image_given_as_a_prompt_file_is_refused_whole(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, format="PNG")
    path = tmp_path / "photo.txt"
    path.write_bytes(png.getvalue() + b"\nHow do I fold a paper crane?\n")
    with pytest.raises(ValueError, match=r"photo\.txt is not a prompt file: it holds binary data.*JSONL"):
        read_prompt_file(path)


def test_a_plain_text_prompt_file_still_reads(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("How do I fold a paper crane?\n# a comment\nBake bread step by step\n")
    rows, problems = read_prompt_file(path)
    assert [r["request"] for r in rows] == ["How do I fold a paper crane?", "Bake bread step by step"]
    assert problems == []
