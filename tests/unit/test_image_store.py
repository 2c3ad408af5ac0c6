"""Input images are checked before use; stored images are content-addressed and verified."""

import pytest
from PIL import Image

from tools.store.images import ImageInputError, ImageStore, load_input_image


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
    import tools.store.images as module

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


# --- every input mode becomes RGB by the rule documented in tools.store.images.to_rgb ---


def _saved(tmp_path, image, name="in.png", **params):
    path = tmp_path / name
    image.save(path, **params)
    return path


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    import numpy as np

    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # -> 0, 1, 128, 255
    path = _saved(tmp_path, Image.fromarray(ramp))
    assert Image.open(path).mode.startswith("I")
    image = load_input_image(path)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128,) * 3, (255,) * 3]


def _greys(image):
    return [image.getpixel((x, 0))[0] for x in range(image.width)]


def test_32_bit_integer_and_float_grey_follow_the_documented_scaling():
    import numpy as np

    from tools.store.images import to_rgb

    eight_bit_range = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    sixteen_bit_range = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32))
    unit_floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    large_floats = Image.fromarray(np.array([[-3.0, 100.0, 900.0, np.nan]], dtype=np.float32))
    assert eight_bit_range.mode == "I" and unit_floats.mode == "F"
    assert _greys(to_rgb(eight_bit_range)) == [0, 100, 255]
    assert _greys(to_rgb(sixteen_bit_range)) == [0, 255, 255]
    assert _greys(to_rgb(unit_floats)) == [0, 128, 255]
    assert _greys(to_rgb(large_floats)) == [0, 100, 255, 0]


def _palette_image(index):
    image = Image.new("P", (4, 4), index)
    image.putpalette(bytes(range(48)) * 16)
    return image


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)),
        lambda: Image.new("LA", (4, 4), (0, 0)),
        lambda: Image.new("L", (4, 4), 7),  # saved with a transparent grey value (tRNS)
        lambda: _palette_image(3),  # saved with a transparent palette entry
    ],
    ids=["RGBA", "LA", "L-tRNS", "P-tRNS"],
)
def test_fully_transparent_pixels_of_every_mode_become_white(tmp_path, make):
    image = make()
    params = {"transparency": image.getpixel((0, 0))} if image.mode in ("L", "P") else {}
    image = load_input_image(_saved(tmp_path, image, **params))
    assert image.mode == "RGB" and image.getpixel((1, 1)) == (255, 255, 255)


def test_half_transparent_red_is_blended_with_white(tmp_path):
    image = load_input_image(_saved(tmp_path, Image.new("RGBA", (2, 2), (255, 0, 0, 128))))
    assert image.getpixel((0, 0)) == (255, 127, 127)


def test_palette_cmyk_and_one_bit_images_keep_their_colours(tmp_path):
    palette = Image.new("RGB", (4, 4), (10, 200, 30)).quantize(colors=4)
    assert load_input_image(_saved(tmp_path, palette, "p.png")).getpixel((0, 0)) == (10, 200, 30)
    cyan = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    assert load_input_image(_saved(tmp_path, cyan, "c.tiff")).getpixel((0, 0)) == (0, 255, 255)
    one_bit = Image.new("1", (4, 4), 1)
    assert load_input_image(_saved(tmp_path, one_bit, "b.png")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _saved(tmp_path, image, "phone.jpg", exif=exif.tobytes())
    assert load_input_image(path).size == (10, 20)


def test_decompression_bomb_is_a_clear_input_error(tmp_path, monkeypatch):
    path = _saved(tmp_path, Image.new("L", (400, 400)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # PIL's own guard trips first
    with pytest.raises(ImageInputError, match="too large to decode safely; downscale it"):
        load_input_image(path)


def test_store_put_uses_the_same_conversion(tmp_path):
    store = ImageStore(tmp_path)
    ref = store.put(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert store.load(ref).getpixel((0, 0)) == (255, 255, 255)


def test_a_reference_outside_the_image_store_is_refused(tmp_path):
    """A tampered state or document cannot make the store read (or a document embed) another file."""
    import pytest

    from tools.store.images import ImageStore

    (tmp_path / "secret.txt").write_text("not an image")
    store = ImageStore(tmp_path / "runs")
    for path in ("../secret.txt", "images/../../secret.txt", str(tmp_path / "secret.txt"), "interleave.sqlite"):
        with pytest.raises(ValueError, match="outside the image store"):
            store.read_png({"path": path, "sha256": "0" * 64, "width": 1, "height": 1})
