"""Input images are checked before use; stored images are content-addressed and verified."""

import pytest
from PIL import Image

from tools.image_store import ImageInputError, ImageStore, load_input_image


def test_same_pixels_share_one_file_and_load_back(tmp_path):
    store = ImageStore(tmp_path)
    image = Image.new("RGB", (32, 16), (10, 200, 30))
    first, second = store.put(image), store.put(image.copy())
    assert first == second and first["width"] == 32 and first["height"] == 16
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1
    assert store.load(first).tobytes() == image.tobytes()


def test_altered_store_file_is_detected(tmp_path):
    store = ImageStore(tmp_path)
    ref = store.put(Image.new("RGB", (8, 8)))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(store.path(ref))
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        store.load(ref)


def test_missing_input_file(tmp_path):
    with pytest.raises(ImageInputError, match="does not exist"):
        load_input_image(tmp_path / "nope.png")


def test_non_image_input_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageInputError, match="cannot be read as an image"):
        load_input_image(path)


def test_truncated_input_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageInputError, match="cannot be read as an image"):
        load_input_image(path)


def test_oversized_input_is_refused_before_decoding(tmp_path, monkeypatch):
    import tools.image_store as module

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(module, "MAX_INPUT_PIXELS", 200 * 200)
    with pytest.raises(ImageInputError, match="downscale"):
        load_input_image(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16"])
def test_other_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (16, 16)).save(path)
    image = load_input_image(path)
    assert image.mode == "RGB" and image.size == (16, 16)


def test_transparent_pixels_become_white_not_black(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_input_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_data_url_inputs_are_accepted_and_bad_ones_named(tmp_path):
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (1, 2, 3)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert load_input_image(url).size == (12, 10)
    assert ImageStore(tmp_path).import_file(url)["width"] == 12
    with pytest.raises(ImageInputError, match="valid base64"):
        load_input_image("data:image/png;base64,@@@")
    with pytest.raises(ImageInputError, match="must look like"):
        load_input_image("data:image/png,rawbytes")
