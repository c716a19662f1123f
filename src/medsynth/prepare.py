"""Turn real scans into a training dataset for one preset (`medsynth prepare`).

Per preset family (all resampling through SimpleITK; the volume is first reoriented to LPS with
``DICOMOrient`` and then resampled onto an axis-aligned axial grid, so oblique and flipped inputs end
up the same way round):

* **CT**: HU clipped to the preset's range (-1024..2047 HU); anti-aliased (bin-shrink plus Gaussian)
  linear resampling to the preset's in-plane spacing and to a slice spacing of
  ``max(preset slice thickness, native spacing)`` (or ``--slice-spacing``); body mask = voxels above
  -500 HU, largest 3D connected component; crop/pad (with air, -1024 HU) to the preset's matrix
  centred on the body's bounding box. Slice selection: ``--z-range`` (fractions of the volume's
  extent, 0 = inferior, or LPS z in mm) or, by default, every slice whose body cross-section is at
  least 30 % of the volume's largest one (drops the partial slices at the scan's ends, the table-only
  slices and slices that cut through the shoulders or the head's top).
* **MR**: same reorientation and resampling (preset spacing in-plane, slice spacing as for CT);
  optional N4 bias correction (``--n4``); foreground mask = Otsu threshold, largest component; robust
  normalisation: the 0.5th..99.5th percentiles of the foreground become 0..4095 (scanner-like units,
  clipped), then the preset maps them to [-1, 1]; slices whose foreground is under 20 % of the largest
  one are skipped as empty.
* **X-ray**: grey [0, 1] images resized with the aspect ratio kept (Lanczos), padded with black to the
  preset's matrix, mapped to 0..4095 detector units then to [-1, 1].

Labels: ``--labels-file`` (CSV ``name,label[,z_range]`` or JSON), else the nearest parent folder whose
name is one of the preset's conditions (``--label-from-folder``), else ``--label``, else the preset's
default condition. MedMNIST ``.npz`` files carry their own labels (index i → ``conditions[i]``).
``manifest.labels`` is always the preset's full ``conditions`` tuple, so label indices match the model.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from medsynth.dataset import DatasetManifest, SourceRecord, save_dataset
from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.reader import ImageSeries, InputKind, Skipped, discover_files, input_kind, iter_images
from medsynth.errors import ConfigError, InputError, MedsynthError, OutputError
from medsynth.outputs import atomic_write, require_usable_output
from medsynth.presets import Modality, Preset, get_preset

if TYPE_CHECKING:
    import SimpleITK as sitk

Split = Literal["train", "val", "test"]

#: body threshold for CT (HU): air and lung parenchyma fall below, soft tissue and fat above
CT_BODY_HU = -500.0
#: default minimum body cross-section per kept slice, as a fraction of the volume's largest one
DEFAULT_MIN_BODY_FRACTION = {Modality.CT: 0.30, Modality.MR: 0.20}
#: robust MR normalisation percentiles of the foreground voxels
MR_PERCENTILES = (0.5, 99.5)
#: largest resampled grid prepare allocates, in voxels (2^27 = 134 M voxels, 512 MiB as float32);
#: a bigger grid means a corrupt or implausible header (e.g. 200 mm pixels) and is refused
MAX_RESAMPLED_VOXELS = 2**27


class LabelOrigin(str, Enum):
    """Where a series' label came from."""

    FILE = "labels-file"
    FOLDER = "folder"
    FLAG = "flag"
    DEFAULT = "preset-default"
    NPZ = "npz"


@dataclass(frozen=True)
class ZRange:
    """A slab of slices: ``unit`` "fraction" (0 = inferior-most .. 1 = superior-most slice of the
    volume) or "mm" (LPS z, i.e. the patient's superior axis, as in ImagePositionPatient[2])."""

    low: float
    high: float
    unit: Literal["fraction", "mm"]

    @classmethod
    def parse(cls, text: str) -> ZRange:
        """``"0.2:0.6"`` (fractions) or ``"-300:-120mm"`` / ``"-300mm:-120mm"`` (mm)."""
        t = text.strip().lower().replace(" ", "")
        unit: Literal["fraction", "mm"] = "mm" if t.endswith("mm") else "fraction"
        parts = t.replace("mm", "").split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"bad z range {text!r}: use LOW:HIGH, fractions (0.2:0.6) or mm (-300:-120mm)") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"bad z range {text!r}: LOW must be below HIGH")
        if unit == "fraction" and not (low >= 0.0 and high <= 1.0):
            raise ConfigError(f"bad z range {text!r}: fractions lie in 0..1; add 'mm' for millimetres")
        return cls(low, high, unit)

    def __str__(self) -> str:
        return f"{self.low:g}:{self.high:g}{'mm' if self.unit == 'mm' else ''}"


@dataclass(frozen=True)
class LabelRule:
    """One labels-file entry: slices of the matching input get ``label``, within ``z_range`` if set."""

    name: str
    label: str
    z_range: ZRange | None = None


@dataclass(frozen=True)
class PrepareConfig:
    """Options of :func:`prepare_dataset`.

    ``slice_spacing_mm``: None = ``max(preset slice thickness, native)``, 0 = native spacing.
    ``min_body_fraction``: None = the modality's default (CT 0.30, MR 0.20); used only without z range.
    """

    preset: str
    label: str | None = None
    labels_file: Path | None = None
    label_from_folder: bool = False
    z_range: ZRange | None = None
    split: Split = "train"
    n4: bool = False
    slice_spacing_mm: float | None = None
    min_body_fraction: float | None = None
    force: bool = False
    matrix: tuple[int, int] | None = None  # None = the preset's (latent packs use clinical matrices)
    pixel_spacing_mm: float | None = None  # None = the preset's in-plane spacing


@dataclass(frozen=True)
class PreparedSlices:
    """Model-space slices of one series: ``slices`` float32 [K, H, W] in [-1, 1], ``positions`` [K]
    in [0, 1] (0 = inferior-most slice of the volume), ``z_mm`` [K] LPS z of each slice centre."""

    slices: npt.NDArray[np.float32]
    positions: npt.NDArray[np.float32]
    z_mm: npt.NDArray[np.float64]
    notes: tuple[str, ...] = ()


@dataclass
class SourceSummary:
    """What one input contributed.

    ``name`` is a neutral index (``source-0001``), which is all the manifest and ``--json`` carry:
    file and folder names often hold patient names. ``display`` is the input's own file or folder
    name, for the terminal table only (never serialised).
    """

    name: str
    label: str
    label_origin: str
    series: int
    slices: int
    notes: list[str] = field(default_factory=list)
    display: str = ""


@dataclass
class PrepareReport:
    """The result of :func:`prepare_dataset` (also printed as a table and as ``--json``)."""

    output: Path
    preset: str
    labels: tuple[str, ...]
    inputs: int = 0
    files_read: int = 0
    series_found: int = 0
    slices_kept: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    sources: list[SourceSummary] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "preset": self.preset,
            "labels": list(self.labels),
            "inputs": self.inputs,
            "files_read": self.files_read,
            "series_found": self.series_found,
            "slices_kept": self.slices_kept,
            "per_label": dict(self.per_label),
            "sources": [{k: v for k, v in s.__dict__.items() if k != "display"} for s in self.sources],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


# --------------------------------------------------------------------------------------- resampling

def _to_sitk(series: ImageSeries) -> sitk.Image:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(series.voxels)
    series.geometry.apply_to(image)
    return image


def resample_axial(series: ImageSeries, in_plane_mm: tuple[float, float], slice_mm: float | None,
                   fill: float) -> tuple[npt.NDArray[np.float32], VolumeGeometry]:
    """Resample a volume onto an axis-aligned axial LPS grid covering it.

    ``in_plane_mm`` is (row, column) spacing; ``slice_mm`` the slice spacing (None = native spacing
    along the axis closest to LPS z). Down-sampling is anti-aliased: integer bin-shrink (exact mean),
    then a Gaussian for the remaining factor, then linear interpolation. Returns ``[Z, Y, X]`` float32
    (Z increasing towards the head) and its geometry.
    """
    import SimpleITK as sitk

    image = sitk.DICOMOrient(_to_sitk(series), "LPS")
    in_sp = image.GetSpacing()
    out_sp = [float(in_plane_mm[1]), float(in_plane_mm[0]), float(slice_mm) if slice_mm else float(in_sp[2])]
    factors = [max(1, int(math.floor(o / i + 1e-6))) if image.GetSize()[d] >= 2 * max(1, int(o / i)) else 1
               for d, (o, i) in enumerate(zip(out_sp, in_sp, strict=True))]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
        in_sp = image.GetSpacing()
    variance = [max(o * o - i * i, 0.0) / (2.3548**2) if o > 1.2 * i and n > 3 else 0.0
                for o, i, n in zip(out_sp, in_sp, image.GetSize(), strict=True)]
    if any(v > 0 for v in variance):
        image = sitk.DiscreteGaussian(image, variance, 64, 0.01, True)
    size = image.GetSize()
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(c)
                        for c in itertools.product(*[(-0.5, s - 0.5) for s in size])])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = [max(1, int(math.ceil((h - lw) / s - 1e-3))) for lw, h, s in zip(lo, hi, out_sp, strict=True)]
    if float(np.prod(n, dtype=np.float64)) > MAX_RESAMPLED_VOXELS:
        raise InputError(f"resampled grid {n[0]}x{n[1]}x{n[2]} ({float(np.prod(n, dtype=np.float64)):.3g} voxels, "
                         f"extent {'x'.join(f'{h - lw:.0f}' for lw, h in zip(lo, hi, strict=True))} mm) exceeds the "
                         f"limit of {MAX_RESAMPLED_VOXELS} voxels: implausible spacing in the header?",
                         series.files[0])
    centre = (lo + hi) / 2.0
    origin = [float(c - (k - 1) * s / 2.0) for c, k, s in zip(centre, n, out_sp, strict=True)]
    ref = sitk.Image(n, sitk.sitkFloat32)
    ref.SetOrigin(origin)
    ref.SetSpacing(out_sp)
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out), VolumeGeometry.from_sitk(out)


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 3D connected component (face+edge+corner connectivity) of a boolean [Z, Y, X]."""
    import SimpleITK as sitk

    if not mask.any():
        return mask
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    relabelled = sitk.RelabelComponent(cc, sortByObjectSize=True)
    return np.asarray(sitk.GetArrayViewFromImage(relabelled) == 1)


def crop_pad_centred(volume: npt.NDArray[np.float32], centre_yx: tuple[float, float], matrix: tuple[int, int],
                     fill: float) -> npt.NDArray[np.float32]:
    """Crop/pad ``[Z, Y, X]`` in-plane to ``matrix`` (rows, cols) so that ``centre_yx`` (pixel
    coordinates) lands in the middle; new pixels get ``fill``."""
    z, h, w = volume.shape
    rows, cols = matrix
    out = np.full((z, rows, cols), fill, dtype=np.float32)
    top = int(round(centre_yx[0] - (rows - 1) / 2.0))
    left = int(round(centre_yx[1] - (cols - 1) / 2.0))
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + rows, h), min(left + cols, w)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - top:sy1 - top, sx0 - left:sx1 - left] = volume[:, sy0:sy1, sx0:sx1]
    return out


def _select_slices(mask: npt.NDArray[np.bool_], geometry: VolumeGeometry, z_range: ZRange | None,
                   min_fraction: float) -> tuple[npt.NDArray[np.bool_], str]:
    """Which axial slices to keep: inside ``z_range`` if given, else body area ≥ min_fraction × max."""
    n = mask.shape[0]
    z_mm = geometry.origin[2] + np.arange(n) * geometry.spacing[2]
    if z_range is not None:
        coord = np.linspace(0.0, 1.0, n) if (z_range.unit == "fraction" and n > 1) else (
            np.full(n, 0.5) if z_range.unit == "fraction" else z_mm)
        keep = (coord >= z_range.low - 1e-9) & (coord <= z_range.high + 1e-9)
        return keep & mask.any(axis=(1, 2)), f"z range {z_range}"
    area = mask.sum(axis=(1, 2))
    top = float(area.max()) if n else 0.0
    return (area >= min_fraction * top) & (area > 0), f"body area >= {min_fraction:.0%} of its maximum"


def _positions(n: int) -> npt.NDArray[np.float32]:
    return (np.linspace(0.0, 1.0, n) if n > 1 else np.full(n, 0.5)).astype(np.float32)


def _slice_spacing(series: ImageSeries, preset: Preset, cfg: PrepareConfig) -> float | None:
    if cfg.slice_spacing_mm == 0:
        return None
    if cfg.slice_spacing_mm is not None:
        return cfg.slice_spacing_mm
    # native spacing along the axis closest to LPS z: do not invent slices by up-sampling z
    m = np.abs(series.geometry.matrix)
    native = float(series.geometry.spacing[int(np.argmax(m[2, :]))])
    return max(preset.slice_thickness_mm, native)


# --------------------------------------------------------------------------------------- per preset

def preprocess_ct(series: ImageSeries, preset: Preset, cfg: PrepareConfig,
                  z_range: ZRange | None = None) -> PreparedSlices:
    """CT series (HU) → model-space axial slices for ``preset``; InputError if it is not usable CT."""
    v = series.voxels
    lo, hi = float(v.min()), float(v.max())
    if lo > CT_BODY_HU or hi < 0.0:
        raise InputError(f"values {lo:g}..{hi:g} do not look like CT Hounsfield units (air at -1000 HU "
                         "and soft tissue above 0 HU expected)", series.files[0])
    if series.shape[0] < 2:
        raise InputError("a single CT slice; a volume (two or more slices) is needed for slice positions",
                         series.files[0])
    air = preset.intensity.physical_low
    vol, geo = resample_axial(series, preset.pixel_spacing_mm, _slice_spacing(series, preset, cfg), fill=air)
    np.clip(vol, preset.intensity.physical_low, preset.intensity.physical_high, out=vol)
    mask = largest_component(vol > CT_BODY_HU)
    min_frac = cfg.min_body_fraction if cfg.min_body_fraction is not None else DEFAULT_MIN_BODY_FRACTION[Modality.CT]
    keep, how = _select_slices(mask, geo, z_range, min_frac)
    return _finish(vol, geo, mask, keep, preset, air, [f"kept slices: {how}"], series)


def preprocess_mr(series: ImageSeries, preset: Preset, cfg: PrepareConfig,
                  z_range: ZRange | None = None) -> PreparedSlices:
    """MR series (scanner units) → model-space axial slices for ``preset``."""
    import SimpleITK as sitk

    vol, geo = resample_axial(series, preset.pixel_spacing_mm, _slice_spacing(series, preset, cfg), fill=0.0)
    vol = np.maximum(vol, 0.0)
    image = sitk.GetImageFromArray(vol)
    geo.apply_to(image)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)).astype(bool)
    mask = largest_component(otsu)
    if not mask.any():
        raise InputError("no foreground found (Otsu threshold leaves nothing)", series.files[0])
    notes: list[str] = []
    if cfg.n4:
        # N4 on the resampled grid: the bias field is smooth, so 3-6 mm voxels are plenty and fast.
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations([30, 20, 10])
        m_img = sitk.GetImageFromArray(mask.astype(np.uint8))
        m_img.CopyInformation(image)
        corrected = n4.Execute(image + 1.0, m_img)
        vol = np.maximum(sitk.GetArrayFromImage(corrected).astype(np.float32) - 1.0, 0.0)
        notes.append("N4 bias field corrected")
    p_lo, p_hi = (float(x) for x in np.percentile(vol[mask], MR_PERCENTILES))
    if p_hi <= p_lo:
        raise InputError("foreground has no intensity spread (constant image)", series.files[0])
    physical = np.clip((vol - p_lo) / (p_hi - p_lo), 0.0, 1.0) * preset.intensity.physical_high
    notes.append(f"foreground p{MR_PERCENTILES[0]:g}..p{MR_PERCENTILES[1]:g} = {p_lo:.4g}..{p_hi:.4g} "
                 f"-> 0..{preset.intensity.physical_high:g}")
    min_frac = cfg.min_body_fraction if cfg.min_body_fraction is not None else DEFAULT_MIN_BODY_FRACTION[Modality.MR]
    keep, how = _select_slices(mask, geo, z_range, min_frac)
    notes.append(f"kept slices: {how}")
    return _finish(physical.astype(np.float32), geo, mask, keep, preset, 0.0, notes, series)


def _finish(vol: npt.NDArray[np.float32], geo: VolumeGeometry, mask: npt.NDArray[np.bool_],
            keep: npt.NDArray[np.bool_], preset: Preset, fill: float, notes: list[str],
            series: ImageSeries) -> PreparedSlices:
    n = vol.shape[0]
    positions = _positions(n)
    z_mm = (geo.origin[2] + np.arange(n) * geo.spacing[2]).astype(np.float64)
    if not keep.any():
        raise InputError("no slice left after slice selection (" + notes[-1] + ")", series.files[0])
    sel = mask[keep]
    ys, xs = np.nonzero(sel.any(axis=0))
    centre = ((ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0)
    cropped = crop_pad_centred(vol[keep], centre, preset.matrix, fill)
    return PreparedSlices(slices=preset.intensity.to_model(cropped), positions=positions[keep],
                          z_mm=z_mm[keep], notes=(*series.notes, *notes))


def preprocess_xray(grey: npt.NDArray[np.float32], preset: Preset) -> npt.NDArray[np.float32]:
    """A 2D grey image in [0, 1] → model-space [H, W] (aspect kept, padded with black)."""
    from medsynth.dicom_io.xray import resize_keep_aspect

    img = resize_keep_aspect(np.clip(grey, 0.0, 1.0), preset.matrix, fill=0.0)
    return preset.intensity.to_model(np.clip(img, 0.0, 1.0) * preset.intensity.physical_high)


def preprocess_series(series: ImageSeries, preset: Preset, cfg: PrepareConfig,
                      z_range: ZRange | None = None) -> PreparedSlices:
    """Dispatch on the preset's modality; InputError when the series does not fit the preset."""
    mod = series.facts.modality.upper()
    if preset.modality is Modality.DX:
        if not series.is_projection:
            raise InputError(f"a {mod or '3D'} volume cannot feed the X-ray preset {preset.name}", series.files[0])
        s = preprocess_xray(series.voxels[0], preset)[None]
        return PreparedSlices(s, np.full(1, 0.5, np.float32), np.zeros(1), series.notes)
    if series.is_projection:
        raise InputError(f"a projection X-ray cannot feed the {preset.modality.value} preset {preset.name}",
                         series.files[0])
    if mod and mod not in (preset.modality.value, "OT"):
        raise InputError(f"modality {mod} does not match preset {preset.name} ({preset.modality.value})",
                         series.files[0])
    if preset.modality is Modality.CT:
        return preprocess_ct(series, preset, cfg, z_range)
    return preprocess_mr(series, preset, cfg, z_range)


# --------------------------------------------------------------------------------------- labels

_VOLUME_SUFFIX_RE = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd|\.dcm|\.png|\.jpe?g|\.tiff?|\.bmp|\.npz)$",
                               re.IGNORECASE)


def _stem(name: str) -> str:
    return _VOLUME_SUFFIX_RE.sub("", name)


def load_label_rules(path: Path, preset: Preset) -> list[LabelRule]:
    """Read a labels file: CSV rows ``name,label[,z_range]`` (optional header) or JSON
    ``{"name": "label"}``, ``{"name": {"label": ..., "z_range": ...}}`` or a list of such objects.
    Labels are checked against the preset's conditions (ConfigError otherwise)."""
    if not path.is_file():
        raise ConfigError("labels file not found", path)
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[str, str, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"labels file is not valid JSON ({exc.msg}, line {exc.lineno})", path) from None
        items: list[Any] = list(data.items()) if isinstance(data, dict) else list(data) if isinstance(data, list) else []
        if not items:
            raise ConfigError("labels file must map names to labels (object or list of objects)", path)
        for it in items:
            if isinstance(it, tuple):
                name, val = it
                if isinstance(val, str):
                    rows.append((str(name), val, ""))
                elif isinstance(val, dict) and "label" in val:
                    rows.append((str(name), str(val["label"]), str(val.get("z_range", "") or "")))
                else:
                    raise ConfigError(f"entry {name!r}: give a label string or {{\"label\": ..}}", path)
            elif isinstance(it, dict) and "name" in it and "label" in it:
                rows.append((str(it["name"]), str(it["label"]), str(it.get("z_range", "") or "")))
            else:
                raise ConfigError(f"entry {it!r}: needs 'name' and 'label'", path)
    else:
        for i, rec in enumerate(csv.reader(text.splitlines())):
            if not rec or not "".join(rec).strip() or rec[0].strip().startswith("#"):
                continue
            if i == 0 and [c.strip().lower() for c in rec[:2]] in (["name", "label"], ["file", "label"]):
                continue
            if len(rec) < 2:
                raise ConfigError(f"line {i + 1}: expected name,label[,z_range]", path)
            rows.append((rec[0].strip(), rec[1].strip(), rec[2].strip() if len(rec) > 2 else ""))
    rules = []
    for name, label, zr in rows:
        preset.condition_index(label)
        rules.append(LabelRule(name=name, label=label, z_range=ZRange.parse(zr) if zr else None))
    if not rules:
        raise ConfigError("labels file holds no entries", path)
    return rules


def _rules_for(series_path: Path, series_name: str, rules: Sequence[LabelRule]) -> list[LabelRule]:
    keys = {series_name, _stem(series_name), series_path.name, _stem(series_path.name), series_path.parent.name}
    return [r for r in rules if r.name in keys or _stem(r.name) in keys]


def _folder_label(path: Path, preset: Preset) -> str | None:
    for parent in path.parents:
        if parent.name.lower() in preset.conditions:
            return parent.name.lower()
    return None


# --------------------------------------------------------------------------------------- writing

def _sha256_files(files: Sequence[Path]) -> str:
    """sha256 of one file, or of the sorted per-file digests of a multi-file series."""
    digests = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


def write_contact_sheet(path: Path, slices: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                        preset: Preset, max_tiles: int = 64, tile: int = 128) -> None:
    """A PNG grid of up to ``max_tiles`` evenly chosen slices, shown in the preset's first window,
    each tile captioned with its index and label name."""
    from PIL import Image, ImageDraw

    n = slices.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, max_tiles)).round().astype(int))
    cols = min(8, len(idx))
    rows = int(math.ceil(len(idx) / cols))
    win = preset.windows[0]
    sheet = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(idx):
        phys = preset.intensity.to_physical(np.asarray(slices[i]))
        grey = np.clip((phys - (win.center - win.width / 2.0)) / win.width, 0.0, 1.0)
        im = Image.fromarray((grey * 255).round().astype(np.uint8), mode="L").resize((tile, tile),
                                                                                     Image.Resampling.BILINEAR)
        x0, y0 = (k % cols) * tile, (k // cols) * tile
        sheet.paste(im.convert("RGB"), (x0, y0))
        draw.text((x0 + 3, y0 + 2), f"{i} {preset.conditions[int(labels[i])]}", fill=(255, 220, 0))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _check_output(output: Path, force: bool) -> None:
    require_usable_output(output, force, "replace it")


def _publish(tmp: Path, output: Path) -> None:
    """Move the finished temporary folder into place (replacing an old output only now)."""
    old: Path | None = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        output.replace(old)
    tmp.replace(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------- main entry

def _with_grid(preset: Preset, config: PrepareConfig) -> Preset:
    """The preset with ``config``'s matrix / in-plane spacing (mm) overrides applied."""
    if config.matrix is not None:
        if len(config.matrix) != 2 or not all(16 <= int(m) <= 2048 for m in config.matrix):
            raise ConfigError(f"--matrix must be two sizes between 16 and 2048, got {config.matrix}")
        preset = dataclasses.replace(preset, matrix=(int(config.matrix[0]), int(config.matrix[1])))
    if config.pixel_spacing_mm is not None:
        if not (math.isfinite(config.pixel_spacing_mm) and 0.1 <= config.pixel_spacing_mm <= 20.0):
            raise ConfigError(f"--pixel-spacing must be between 0.1 and 20 mm, got {config.pixel_spacing_mm}")
        preset = dataclasses.replace(preset, pixel_spacing_mm=(config.pixel_spacing_mm, config.pixel_spacing_mm))
    return preset


def prepare_dataset(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: PrepareConfig,
    *,
    on_file: Callable[[Path], None] | None = None,
) -> PrepareReport:
    """Read ``inputs`` (files/folders), preprocess every usable image for ``config.preset`` and write
    the dataset folder ``output`` (see :mod:`medsynth.dataset`), atomically.

    Unusable inputs are recorded in ``report.skipped`` with a reason; the others are still used.
    Raises InputError when nothing usable remains, ConfigError for bad options, OutputError when
    ``output`` is not empty (without ``force``).
    """
    preset = _with_grid(get_preset(config.preset), config)
    output = Path(output)
    _check_output(output, config.force)
    if config.label is not None:
        preset.condition_index(config.label)
    rules = load_label_rules(config.labels_file, preset) if config.labels_file is not None else []
    if preset.samples_per_pixel == 3:  # colour microscopy: its own reader, split by patient
        from medsynth.microscopy import prepare_micro

        return prepare_micro(inputs, output, config, preset, on_file=on_file)
    if config.n4 and preset.modality is not Modality.MR:
        raise ConfigError(f"--n4 applies to MR presets only, not {preset.name}")

    files, _ = discover_files(inputs)
    report = PrepareReport(output=output, preset=preset.name, labels=preset.conditions, inputs=len(inputs),
                           files_read=len(files))
    all_slices: list[npt.NDArray[np.float32]] = []
    all_labels: list[npt.NDArray[np.int64]] = []
    all_pos: list[npt.NDArray[np.float32]] = []
    all_volumes: list[npt.NDArray[np.int64]] = []  # neutral volume index per slice (never a name)
    n_volumes = 0
    slice_sources: list[int] = []
    records: list[SourceRecord] = []

    def add(summary: SourceSummary, record_files: Sequence[Path], slices: npt.NDArray[np.float32],
            labels: npt.NDArray[np.int64], positions: npt.NDArray[np.float32],
            volumes: npt.NDArray[np.int64]) -> None:
        src_index = len(records)
        # a neutral index, never the file or folder name (names often hold patient names)
        summary.display, summary.name = summary.name, f"source-{src_index + 1:04d}"
        records.append(SourceRecord(name=summary.name, sha256=_sha256_files(record_files), slices=int(len(slices)),
                                    label=summary.label, series=summary.series))
        report.sources.append(summary)
        all_slices.append(slices)
        all_labels.append(labels)
        all_pos.append(positions)
        all_volumes.append(volumes)
        slice_sources.extend([src_index] * len(slices))
        for li in labels.tolist():
            name = preset.conditions[li]
            report.per_label[name] = report.per_label.get(name, 0) + 1

    # MedMNIST-style .npz arrays: labels come from the file
    for f in files:
        if input_kind(f) is not InputKind.NPZ:
            continue
        if on_file is not None:
            on_file(f)
        try:
            if preset.modality is not Modality.DX:
                raise InputError(f"a .npz of 2D images cannot feed the {preset.modality.value} preset {preset.name}", f)
            from medsynth.dicom_io.xray import read_npz

            npz = read_npz(f, config.split)
            if npz.labels.min() < 0 or npz.labels.max() >= len(preset.conditions):
                raise InputError(f"labels {npz.labels.min()}..{npz.labels.max()} do not index the preset's "
                                 f"conditions {list(preset.conditions)}", f)
            slices = np.stack([preprocess_xray(img, preset) for img in npz.images]).astype(np.float32)
            report.series_found += 1
            add(SourceSummary(name=f.name, label=",".join(preset.conditions[i] for i in np.unique(npz.labels)),
                              label_origin=LabelOrigin.NPZ.value, series=1, slices=len(slices),
                              notes=[f"split {config.split}: {len(slices)} images"]),
                [f], slices, npz.labels.astype(np.int64), np.full(len(slices), 0.5, np.float32),
                np.arange(n_volumes, n_volumes + len(slices), dtype=np.int64))  # 2D: one volume per image
            n_volumes += len(slices)
        except MedsynthError as exc:
            report.skipped.append(Skipped(f, exc.message))

    for item in iter_images(inputs, on_file=on_file, include_npz=True):
        if isinstance(item, Skipped):
            if input_kind(item.path) is not InputKind.NPZ:
                report.skipped.append(item)
            continue
        report.series_found += 1
        series = item
        first = series.files[0]
        volume, n_volumes = n_volumes, n_volumes + 1
        try:
            matched = _rules_for(first if len(series.files) == 1 else first.parent, series.name, rules)
            targets: list[tuple[str, LabelOrigin, ZRange | None]]
            if matched:
                targets = [(r.label, LabelOrigin.FILE, r.z_range or config.z_range) for r in matched]
            elif rules and config.label is None and not config.label_from_folder:
                raise InputError("not named in the labels file", first)
            elif config.label_from_folder and (fl := _folder_label(first, preset)) is not None:
                targets = [(fl, LabelOrigin.FOLDER, config.z_range)]
            elif config.label_from_folder and config.label is None:
                raise InputError(f"no parent folder is named after a condition ({', '.join(preset.conditions)})",
                                 first)
            elif config.label is not None:
                targets = [(config.label, LabelOrigin.FLAG, config.z_range)]
            else:
                targets = [(preset.default_condition, LabelOrigin.DEFAULT, config.z_range)]
            for label, origin, zr in targets:
                prepared = preprocess_series(series, preset, config, zr)
                k = len(prepared.slices)
                add(SourceSummary(name=series.name, label=label, label_origin=origin.value, series=1, slices=k,
                                  notes=list(prepared.notes)),
                    series.files, prepared.slices, np.full(k, preset.condition_index(label), np.int64),
                    prepared.positions, np.full(k, volume, np.int64))  # one scan's targets: one volume
        except MedsynthError as exc:
            report.skipped.append(Skipped(exc.path or first, exc.message))

    if not all_slices:
        reasons = "; ".join(str(s) for s in report.skipped[:3]) or "no input files"
        raise InputError(f"nothing usable to prepare ({len(report.skipped)} skipped: {reasons})")
    slices = np.concatenate(all_slices).astype(np.float32)
    labels = np.concatenate(all_labels).astype(np.int64)
    positions = np.concatenate(all_pos).astype(np.float32)
    report.slices_kept = int(slices.shape[0])
    manifest = DatasetManifest(
        preset=preset.name, matrix=preset.matrix, pixel_spacing_mm=preset.pixel_spacing_mm,
        physical_range=(preset.intensity.physical_low, preset.intensity.physical_high),
        unit=preset.intensity.unit, labels=preset.conditions, sources=tuple(records),
        slice_sources=tuple(slice_sources))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        save_dataset(tmp, manifest, slices, labels, positions, np.concatenate(all_volumes).astype(np.int64))
        write_contact_sheet(tmp / "contact_sheet.png", slices, labels, preset)
        _publish(tmp, output)
    except OSError as exc:
        raise OutputError(f"cannot write the dataset ({exc.strerror or exc})", output) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report
