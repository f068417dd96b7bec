"""Rebuild the PNG images in data/vl/images/ from the DICOM files they were taken from.

Every image comes from a DICOM test file that ships inside a PyPI package (pydicom, pydicom-data);
README.md beside this script names each source file and its licence. The course itself never runs
this script: it only needs the PNGs. To rebuild them:

    pip install pydicom==3.0.2 pydicom-data==1.0.0 pylibjpeg pylibjpeg-libjpeg
    python data/vl/make_images.py

What "proper windowing" means here: CT values are converted to Hounsfield units (the file's
rescale slope and intercept) and shown through a named window (brain, bone, soft tissue);
radiographs and MR use the window stored in the file; MONOCHROME1 images are inverted so that
bone is white; palette-colour and YBR ultrasound are converted to RGB. Images are turned to the
usual radiological orientation (patient's front at the top, patient's right on the left) and
shrunk to at most 512 pixels on the longest side.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_SIDE = 512

# Named windows as (centre, width) in Hounsfield units.
BRAIN, BONE, SOFT_TISSUE = (40, 80), (500, 2000), (40, 400)


@dataclass(frozen=True)
class Source:
    """One PNG and the DICOM file, frame and window it is made from."""

    png: str
    dicom: str
    package: str  # "pydicom" (pydicom/data/test_files/) or "pydicom-data" (data_store/data/)
    window: tuple[float, float] | str | None = None  # (centre, width), "file" or None (1st-99th percentile)
    frame: int | None = None


SOURCES = [
    Source("chest_xray_pa.png", "RG1_UNCI.dcm", "pydicom-data", "file"),
    Source("tibia_xray_ap.png", "RG3_UNCI.dcm", "pydicom-data", "file"),
    Source("shoulder_mr_t1.png", "MR2_UNCI.dcm", "pydicom-data", "file"),
    Source("thorax_ct_spine.png", "CT_small.dcm", "pydicom", SOFT_TISSUE),
    Source("abdomen_ct_kidneys.png", "explicit_VR-UN.dcm", "pydicom-data", SOFT_TISSUE),
    Source("head_ct_skull_base_brain.png", "J2K_pixelrep_mismatch.dcm", "pydicom", BRAIN),
    Source("liver_mr_lesion.png", "examples_overlay.dcm", "pydicom", "file"),
    Source("lymph_node_us_doppler.png", "examples_rgb_color.dcm", "pydicom"),
    Source("bone_scan_whole_body.png", "JPEG2000_UNC.dcm", "pydicom-data"),
    Source("echo_parasternal.png", "examples_ybr_color.dcm", "pydicom", frame=0),
    Source("pelvis_us.png", "gdcm-US-ALOKA-16.dcm", "pydicom-data"),
    Source("head_ct_skull_base_bone.png", "J2K_pixelrep_mismatch.dcm", "pydicom", BONE),
    Source("lower_thorax_ct_spine.png", "bad_sequence.dcm", "pydicom-data", "file"),
    Source("echo_aortic_root.png", "JPGLosslessP14SV1_1s_1f_8b.dcm", "pydicom-data"),
    Source("tee_colour_doppler.png", "color-pl.dcm", "pydicom-data"),
]


def source_path(source: Source) -> Path:
    """Where the installed package keeps the DICOM file (found without importing the package)."""
    module, folder = {"pydicom": ("pydicom", "data/test_files"), "pydicom-data": ("data_store", "data")}[
        source.package]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{source.package} is not installed: pip install {source.package}")
    return Path(list(spec.submodule_search_locations)[0]) / folder / source.dicom


def _first(value) -> float:
    """The first of a multi-valued DICOM element (several windows may be stored), or the value itself."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)


def to_display(ds, pixels: np.ndarray, window) -> np.ndarray:
    """8-bit grey or RGB pixels for display, windowed as the Source asks."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    kind = ds.PhotometricInterpretation
    if kind == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return (rgb / 256).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    if not kind.startswith("MONOCHROME"):
        return pixels.astype(np.uint8)  # pydicom already returns RGB for RGB and YBR data
    values = apply_modality_lut(pixels, ds).astype(np.float64)  # CT: stored values -> Hounsfield units
    if window == "file":
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    elif window is None:
        low, high = np.percentile(values, [1, 99])
        centre, width = (low + high) / 2, max(high - low, 1.0)
    else:
        centre, width = window
    scaled = np.clip((values - (centre - width / 2)) / width, 0, 1) * 255
    if kind == "MONOCHROME1":  # low values are white in MONOCHROME1
        scaled = 255 - scaled
    return scaled.astype(np.uint8)


def orient(ds, pixels: np.ndarray) -> np.ndarray:
    """Flip an axial slice so the patient's front is at the top and right on the left of the image."""
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None:
        return pixels
    row, column = [float(v) for v in orientation[:3]], [float(v) for v in orientation[3:]]
    if column[1] < -0.5:  # rows run from the patient's back to front: turn upside down
        pixels = pixels[::-1]
    if row[0] < -0.5:  # columns run from the patient's left to right: mirror
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def render(source: Source) -> Image.Image:
    import pydicom

    ds = pydicom.dcmread(source_path(source))
    pixels = ds.pixel_array
    if source.frame is not None:
        pixels = pixels[source.frame]
    image = Image.fromarray(orient(ds, to_display(ds, pixels, source.window)))
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return image


def main() -> None:
    warnings.filterwarnings("ignore", module="pydicom")
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    for source in SOURCES:
        image = render(source)
        image.save(out / source.png, optimize=True)
        size = f"{image.size[0]}x{image.size[1]}"
        print(f"{source.png:<32} {size:<8} {image.mode:<4} from {source.package}:{source.dicom}")


if __name__ == "__main__":
    main()
