import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.images import UnusableImage, check_images, fit_pixels, prepare_image


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_16_bit_greyscale_becomes_8_bit_rgb_with_its_contrast_kept():
    ramp = np.tile(np.linspace(1000, 60000, 200), (50, 1)).astype(np.uint16)  # dark left, bright right
    source = Image.open(io.BytesIO(encoded(Image.fromarray(ramp))))
    assert source.mode.startswith("I")
    out = np.asarray(prepare_image(source))
    assert out.dtype == np.uint8 and out.shape == (50, 200, 3)
    assert out[:, :5].mean() < 10 and out[:, -5:].mean() > 245  # stretched over the full 8-bit range


def test_a_flat_16_bit_image_does_not_divide_by_zero():
    flat = Image.fromarray(np.full((20, 20), 4000, dtype=np.uint16))
    assert prepare_image(flat).mode == "RGB"


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "1", "L", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (30, 20))
    out = prepare_image(image)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_cmyk_jpeg_from_bytes_keeps_its_colour():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    red = np.asarray(prepare_image(encoded(cmyk, "JPEG")))
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60 and red[..., 2].mean() < 60


def test_transparent_pixels_become_black_not_garbage():
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    assert np.asarray(prepare_image(rgba)).max() == 0


def test_oversized_images_shrink_into_the_pixel_budget_keeping_the_aspect():
    out = prepare_image(Image.new("L", (4000, 3000)), max_pixels=512 * 512)
    width, height = out.size
    assert width * height <= 512 * 512
    assert width * height > 0.95 * 512 * 512  # not shrunk more than needed
    assert abs(width / height - 4 / 3) < 0.01


def test_images_within_the_budget_are_left_at_their_size():
    assert prepare_image(noise(300, 200), max_pixels=512 * 512).size == (300, 200)


@pytest.mark.parametrize(("data", "reason"), [
    (encoded(noise(64, 64))[:900], "truncated"),
    (encoded(noise(64, 64), "JPEG")[:700], "truncated"),
    (b"%PDF-1.7 not an image", "unreadable"),
    (b"", "unreadable"),
    (encoded(Image.new("L", (2010, 10))), "too elongated"),
    (encoded(Image.new("L", (3, 100))), "too small"),
])
def test_bad_files_raise_unusable_image_with_a_reason(data, reason):
    with pytest.raises(UnusableImage, match=reason):
        prepare_image(data)


def test_a_missing_file_and_a_non_image_object_are_unusable(tmp_path):
    with pytest.raises(UnusableImage, match="missing file"):
        prepare_image(tmp_path / "nope.png")
    with pytest.raises(UnusableImage, match="not an image"):
        prepare_image(12345)


def test_datasets_style_rows_and_paths_are_read(tmp_path):
    path = tmp_path / "x.png"
    noise(20, 10).save(path)
    assert prepare_image({"bytes": None, "path": str(path)}).size == (20, 10)
    assert prepare_image({"bytes": encoded(noise(8, 8)), "path": None}).size == (8, 8)


def test_check_images_keeps_the_good_and_counts_the_bad():
    good = encoded(noise(32, 32))
    sources = [good, good[:300], b"junk", Image.new("I;16", (16, 16)), b"", good]
    check = check_images(sources)
    assert [index for index, _ in check.kept] == [0, 3, 5]
    assert check.skipped == {"truncated": 1, "unreadable": 2}
    assert check.n_skipped == 3
    assert check.summary() == "kept 3 images, skipped 3 (unreadable: 2, truncated: 1)"


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 1200), height=st.integers(1, 1200),
       mode=st.sampled_from(["L", "RGB", "RGBA", "CMYK", "I;16", "P", "1"]),
       budget=st.integers(64 * 64, 400 * 400))
def test_prepared_images_are_always_rgb_within_budget_or_refused(width, height, mode, budget):
    try:
        out = prepare_image(Image.new(mode, (width, height)), max_pixels=budget)
    except UnusableImage:
        assert min(width, height) < 4 or max(width, height) / min(width, height) > 200
        return
    assert out.mode == "RGB"
    assert out.size[0] * out.size[1] <= budget
    assert out.size == (width, height) or width * height > budget


def test_fit_pixels_never_returns_an_empty_image():
    assert min(fit_pixels(Image.new("L", (1000, 4)), 100).size) >= 1
