"""Image checks for vision-language training: every image comes out as a modest RGB picture, or is skipped.

Medical images arrive in every shape: 16-bit greyscale radiographs, CMYK scans, palette PNGs,
4000-pixel photographs, files cut off half way through a download. The processor wants 8-bit
RGB within its pixel budget, and one bad file must never stop a training run: ``prepare_image``
converts what it can and raises ``UnusableImage`` (with a one-line reason) for what it cannot;
``check_images`` keeps the good ones and counts the rest. ``near_duplicates`` finds held-out images that
show the same slice as a training image (another window, size or flip), which would leak into the test.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 512 * 512  # the course's default budget; a processor states its own
MIN_SIDE = 4  # smaller than this carries no picture at all
MAX_ASPECT = 200  # Qwen-VL processors refuse images longer than 200:1


class UnusableImage(ValueError):
    """An image that cannot be used; the message says why in a few words."""


@dataclass
class ImageCheck:
    """What ``check_images`` kept, and why it skipped the rest."""

    kept: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line, e.g. 'kept 11 images, skipped 2 (unreadable: 1, truncated: 1)'."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        line = f"kept {len(self.kept)} images, skipped {self.n_skipped}"
        return f"{line} ({reasons})" if reasons else line


def open_image(source) -> Image.Image:
    """A PIL image from a path, raw bytes, a PIL image, or a datasets row {'bytes': ..., 'path': ...}."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):  # how `datasets` hands over an image column that is not decoded
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, (str, Path)):
        return Image.open(source)
    raise UnusableImage(f"not an image ({type(source).__name__})")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale stretched to 8 bits between the 1st and 99th percentiles."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [1, 99])
    if high <= low:  # a flat image: keep it flat rather than divide by zero
        high = low + 1
    scaled = np.clip((values - low) / (high - low), 0, 1) * 255
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: greyscale, 16-bit, CMYK, palette, with or without alpha."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # black, as around a scan
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ... all have a conversion to RGB


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """The image shrunk (aspect kept) so that width × height ≤ ``max_pixels``; smaller ones unchanged."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def prepare_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An 8-bit RGB image within ``max_pixels``, or ``UnusableImage`` saying why not."""
    try:
        image = open_image(source)
        image.load()  # decode now: a truncated file fails here, not inside the training loop
    except UnusableImage:
        raise
    except FileNotFoundError as err:
        raise UnusableImage("missing file") from err
    except Image.DecompressionBombError as err:
        raise UnusableImage("too many pixels to decode safely") from err
    except UnidentifiedImageError as err:
        raise UnusableImage("unreadable") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports cut-off files as OSError
        raise UnusableImage("truncated" if "truncated" in str(err).lower() else "unreadable") from err
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise UnusableImage("too small")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise UnusableImage("too elongated")
    return fit_pixels(to_rgb(image), max_pixels)


def check_images(sources: list, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Prepare each image; keep (index, image) for the good ones and count the reasons for the rest."""
    check = ImageCheck()
    for index, source in enumerate(sources):
        try:
            check.kept.append((index, prepare_image(source, max_pixels)))
        except UnusableImage as err:
            check.skipped[str(err)] += 1
    return check


# --- the same slice twice: a held-out image that is a training image in another window ----------
# A window (brain, bone, lung...) is a monotone map of intensity, clipped at both ends: it can make
# two neighbouring pixels equal, but never swaps which one is brighter. So we compare the *signs* of
# the differences between neighbouring pixels of small greyscale thumbnails (a rank-normalised, i.e.
# histogram-equalised, thumbnail has the same signs). Tiny thumbnails also forgive resizing and
# re-encoding. Correlating the equalised thumbnails themselves was measured and rejected: the round
# field of view of two different patients' head CTs made them correlate at 0.80, while one abdominal
# CT slice in a brain and in a 1st-99th percentile window correlated at only 0.82.

THUMBNAIL_SIDE = 32
# Measured on the 15 images of data/vl (104 pairs of different images: at most 0.15; the one slice
# they hold in a bone and a brain window: 0.78), together with the 98 DICOM test files of pydicom 3.0.2
# and pydicom-data 1.0.0 (one per image, 493 pairs of different images: at most 0.23), and on 130 pairs
# of one slice in two windows, resized, re-encoded as JPEG or mirrored (at least 0.59: a head CT in a
# brain vs a 1st-99th percentile window).
SAME_SLICE = 0.4


def slice_signature(source, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Signs of the differences between neighbouring pixels of a side×side grey thumbnail, as a unit
    vector (all zeros for a flat image, which has nothing to compare)."""
    grey = to_rgb(open_image(source)).convert("L")  # to_rgb first: 16-bit images are stretched, not clipped
    grey = grey.resize((side, side), Image.Resampling.BOX)  # BOX: the mean of each block
    pixels = np.asarray(grey, dtype=np.float64)
    across, down = np.sign(np.diff(pixels, axis=1)), np.sign(np.diff(pixels, axis=0))
    signs = np.concatenate([across.ravel(), down.ravel()])
    norm = np.linalg.norm(signs)
    return signs / norm if norm else signs


def _orientations(source) -> list[Image.Image]:
    """The image as it is, mirrored, upside down and turned half round: one slice may be stored in
    the radiological or the neurological convention."""
    image = open_image(source)
    return [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), image.transpose(Image.Transpose.ROTATE_180)]


def slice_similarity(a, b) -> float:
    """How alike two images are once window, size and flips are set aside: about 0 for different
    images, above ``SAME_SLICE`` for one slice shown twice, 1 for the same picture."""
    first = slice_signature(a)
    return max(float(first @ slice_signature(turned)) for turned in _orientations(b))


def same_slice(a, b, threshold: float = SAME_SLICE) -> bool:
    """Whether two images show the same slice, even in another intensity window, size or flip."""
    return slice_similarity(a, b) >= threshold


def near_duplicates(train_images: list, held_out_images: list,
                    threshold: float = SAME_SLICE) -> list[tuple[int, int]]:
    """(training index, held-out index) for each held-out image that shows the same slice as a
    training image, paired with the most similar one; in held-out order."""
    if not train_images or not held_out_images:
        return []
    train = np.stack([slice_signature(image) for image in train_images])
    similarity = np.max([np.stack([slice_signature(turned) for turned in _orientations(image)]) @ train.T
                         for image in held_out_images], axis=1)  # held-out × training, best flip
    return [(int(similarity[j].argmax()), j) for j in range(len(held_out_images))
            if similarity[j].max() >= threshold]
