"""2D X-ray inputs: PNG/JPEG/TIFF pictures, MedMNIST ``.npz`` arrays, and resizing with aspect kept.

Grey values are returned as float32 in [0, 1] (0 = black = no attenuation shown, 1 = white), so every
source (8-bit PNG, 16-bit PNG, DX DICOM after VOI) lands on the same scale before the preset maps it to
detector units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.reader import HeaderFacts, ImageSeries
from medsynth.errors import InputError

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class NpzImages:
    """A MedMNIST-style array of 2D images: ``images`` uint8/float ``[N, H, W]``, ``labels`` int ``[N]``."""

    path: Path
    split: str
    images: npt.NDArray[np.float32]  # [N, H, W] grey in [0, 1]
    labels: npt.NDArray[np.int64]  # [N]


def grey_to_unit(pixels: npt.NDArray[np.generic], path: Path) -> npt.NDArray[np.float32]:
    """Integer or float grey pixels → float32 [0, 1] (integers by their dtype's full range)."""
    a = np.asarray(pixels)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        top = 255.0 if a.dtype == np.uint8 else (65535.0 if int(a.max(initial=0)) > 255 else 255.0)
        if info.min < 0:
            a = a.astype(np.float64) - float(a.min())
            top = max(float(a.max()), 1.0)
        return np.clip(a.astype(np.float32) / np.float32(top), 0.0, 1.0)
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        raise InputError("image holds NaN/inf pixels", path)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        raise InputError(f"image is empty (every pixel is {lo:g})", path)
    if lo >= 0.0 and hi <= 1.0:
        return f
    return (f - lo) / np.float32(hi - lo)


def read_picture(path: str | Path) -> ImageSeries:
    """Read a PNG/JPEG/TIFF/BMP X-ray as a grey [0, 1] single-slice :class:`ImageSeries`.

    Colour pictures are converted to grey (ITU-R 601 luma, Pillow's ``L``). Geometry: 1 mm pixels
    (pictures carry no spacing), identity direction. Raises InputError for unreadable files.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            elif im.mode == "F":
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read picture ({str(exc)[:160]})", path) from None
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"expected a 2D grey picture, got shape {arr.shape}", path)
    grey = grey_to_unit(arr, path)
    if float(grey.max()) == float(grey.min()):
        raise InputError(f"image is empty (every pixel is {float(grey.min()):g})", path)
    geometry = VolumeGeometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    return ImageSeries(name=path.name, files=(path,), voxels=grey[None].astype(np.float32), geometry=geometry,
                       facts=HeaderFacts(modality="DX"), is_projection=True)


def read_npz(path: str | Path, split: Split = "train") -> NpzImages:
    """Read a MedMNIST ``.npz`` (``{split}_images`` [N, H, W] uint8, ``{split}_labels`` [N, 1]).

    Raises InputError when the split or its labels are missing or the arrays are not 2D grey images.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in keys:
                splits = sorted(k[: -len("_images")] for k in keys if k.endswith("_images"))
                raise InputError(f"no split {split!r} in this .npz (it has: {', '.join(splits) or 'none'})", path)
            images = np.asarray(z[ik])
            labels = np.asarray(z[lk]) if lk in keys else None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read .npz ({str(exc)[:160]})", path) from None
    if images.ndim != 3:
        raise InputError(f"{ik} must be grey images [N, H, W], got shape {images.shape}", path)
    if labels is None:
        raise InputError(f"no {lk} array beside {ik}", path)
    labels = labels.reshape(labels.shape[0], -1)
    if labels.shape != (images.shape[0], 1):
        raise InputError(f"{lk} must hold one label per image, got shape {labels.shape}", path)
    return NpzImages(path=path, split=split, images=grey_to_unit(images, path),
                     labels=labels[:, 0].astype(np.int64))


def resize_keep_aspect(image: npt.NDArray[np.float32], matrix: tuple[int, int],
                       fill: float = 0.0) -> npt.NDArray[np.float32]:
    """Resize a 2D float image to fit ``matrix`` (rows, cols) with its aspect ratio kept, padded
    symmetrically with ``fill``. Uses Pillow's antialiased Lanczos filter (float mode ``F``)."""
    from PIL import Image

    rows, cols = matrix
    h, w = image.shape
    scale = min(rows / h, cols / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
                         .resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float32)
    out = np.full((rows, cols), fill, dtype=np.float32)
    top, left = (rows - nh) // 2, (cols - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out
