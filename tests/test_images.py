import io
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from helpers.images import (
    SAME_SLICE,
    UnusableImage,
    check_images,
    fit_pixels,
    near_duplicates,
    prepare_image,
    same_slice,
    slice_similarity,
)


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


# --- the same slice twice (near_duplicates) -------------------------------------------------------

VL = Path(__file__).resolve().parent.parent / "data" / "vl"


def sample_sources() -> dict[str, str]:
    """Each sample PNG -> the DICOM file it was made from, as data/vl/README.md records it."""
    row = r"^\| `(\w+\.png)` \| (?:train|test) \|[^|]*\| `([^`]+\.dcm)`"
    return dict(re.findall(row, (VL / "README.md").read_text(), re.MULTILINE))


def rewindowed(image: Image.Image, low: float, high: float) -> Image.Image:
    """The image through another window: grey levels below ``low`` black, above ``high`` white."""
    values = np.asarray(image.convert("L"), dtype=np.float64)
    return Image.fromarray((np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8))


def test_the_readme_names_a_source_for_every_sample_image():
    assert sorted(sample_sources()) == sorted(p.name for p in (VL / "images").glob("*.png"))


def test_sample_images_are_flagged_exactly_when_they_come_from_the_same_dicom_file():
    sources = sample_sources()
    flagged, expected = set(), set()
    for a, b in itertools.combinations(sorted(sources), 2):
        with Image.open(VL / "images" / a) as first, Image.open(VL / "images" / b) as second:
            if same_slice(first, second):
                flagged.add((a, b))
        if sources[a] == sources[b]:
            expected.add((a, b))
    assert expected == {("head_ct_skull_base_bone.png", "head_ct_skull_base_brain.png")}  # bone, brain window
    assert flagged == expected


def test_one_image_in_two_windows_resized_or_mirrored_is_the_same_slice():
    with Image.open(VL / "images" / "lower_thorax_ct_spine.png") as image:
        image.load()
    narrow, wide = rewindowed(image, 90, 200), rewindowed(image, 0, 160)  # both clip, differently
    assert np.mean(np.asarray(narrow) == 0) > 0.2 and np.mean(np.asarray(wide) == 255) > 0.05
    assert same_slice(narrow, wide)
    assert same_slice(image, narrow.resize((170, 170)))  # a third of the size
    assert same_slice(image, ImageOps.mirror(wide))  # the other left-right convention
    with Image.open(VL / "images" / "thorax_ct_spine.png") as other:  # another patient's spine CT
        assert not same_slice(image, other) and slice_similarity(image, other) < SAME_SLICE / 2


def test_near_duplicates_pairs_each_flagged_held_out_image_with_its_training_twin():
    names = ["chest_xray_pa.png", "head_ct_skull_base_brain.png", "pelvis_us.png", "tibia_xray_ap.png"]
    train = [prepare_image(VL / "images" / name) for name in names[:3]]
    held_out = [prepare_image(VL / "images" / "tibia_xray_ap.png"),
                prepare_image(VL / "images" / "head_ct_skull_base_bone.png"),  # the brain image's slice
                rewindowed(train[2], 40, 120).resize((200, 150))]
    assert near_duplicates(train, held_out) == [(1, 1), (2, 2)]
    assert near_duplicates(train, held_out[:1]) == [] and near_duplicates([], held_out) == []


def test_flat_images_have_nothing_to_compare_and_are_never_flagged():
    grey = Image.new("L", (64, 64), 90)
    assert slice_similarity(grey, grey) == 0.0 and not same_slice(grey, Image.new("RGB", (32, 32)))
