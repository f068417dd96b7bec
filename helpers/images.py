"""Image checks for vision-language training: every image comes out as a modest RGB picture, or is skipped.

Medical images arrive in every shape: 16-bit greyscale radiographs, CMYK scans, palette PNGs,
4000-pixel photographs, files cut off half way through a download. The processor wants 8-bit
RGB within its pixel budget, and one bad file must never stop a training run: ``prepare_image``
converts what it can and raises ``UnusableImage`` (with a one-line reason) for what it cannot;
``check_images`` keeps the good ones and counts the rest.
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
