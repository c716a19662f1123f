"""Reading the image sets that `medsynth evaluate` compares, all into one intensity space.

* A prepared dataset (:mod:`medsynth.dataset`): slices ``[N, H, W]`` in model space, labels.
* A folder written by ``medsynth generate`` / the DICOM writer: DICOM instances (pydicom; the
  Modality LUT, i.e. RescaleSlope/RescaleIntercept, gives HU for CT; MR and DX store scanner units
  directly) plus ``manifest.json``, or NIfTI files (SimpleITK, from ``generate --format nifti``),
  in physical units. The condition of each DICOM image is read from its medsynth private block
  (``MEDSYNTH 1.0``, element "condition"), else from the manifest's provenance.

Everything is mapped to the *real* dataset's model space with its physical range
(:class:`medsynth.presets.IntensityMapping` semantics: ``physical_low`` → -1, ``physical_high``
→ +1), so every set is compared on the same scale. Images of another matrix size are refused, not
resized: resampling changes SSIM and texture statistics, so the comparison would no longer be
about the model. PNG output is refused too: it is windowed for display, not physical values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medsynth.errors import DatasetError, EvaluationError

SetKind = Literal["dataset", "dicom", "nifti"]
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Files in a generated folder that are certainly not images; everything else is tried as DICOM.
_NOT_IMAGES = (".json", ".png", ".jpg", ".jpeg", ".html", ".txt", ".md", ".csv", ".npy", ".partial")


@dataclass(frozen=True)
class ImageSet:
    """Images ``[N, H, W]`` float32 in the reference model space [-1, 1], with optional labels.

    ``labels[i]`` indexes ``class_names``, or is -1 when the image's class is unknown.
    ``physical_range`` and ``unit`` describe the model space (low → -1, high → +1).
    ``skipped`` lists "file: reason" for inputs that could not be used.
    ``volumes`` ``[N]`` is the volume (real) or series (generated) index of each image and
    ``positions`` ``[N]`` its place along that volume; None when unknown (each image its own volume).
    """

    path: Path
    kind: SetKind
    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    physical_range: tuple[float, float]
    unit: str
    preset: str | None
    skipped: tuple[str, ...] = field(default=())
    volumes: npt.NDArray[np.int64] | None = None
    positions: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def groups(self) -> npt.NDArray[np.int64]:
        """Volume/series index ``[N]`` (one per image when unknown): splits and resampling keep groups whole."""
        return np.arange(len(self), dtype=np.int64) if self.volumes is None else np.asarray(self.volumes, np.int64)

    @property
    def order(self) -> npt.NDArray[np.float32]:
        """Position ``[N]`` of each image within its group (0 when unknown)."""
        return np.zeros(len(self), np.float32) if self.positions is None else np.asarray(self.positions, np.float32)

    @property
    def matrix(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def to_physical(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Model-space images (any shape) → physical units (HU / US)."""
        lo, hi = self.physical_range
        return (np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary of where the set came from."""
        known = self.labels[self.labels >= 0]
        return {
            "path": str(self.path),
            "kind": self.kind,
            "images": len(self),
            "matrix": list(self.matrix),
            "preset": self.preset,
            "unit": self.unit,
            "physical_range": list(self.physical_range),
            "labels": {n: int(np.sum(known == i)) for i, n in enumerate(self.class_names)},
            "unlabelled": int(np.sum(self.labels < 0)),
            "volumes": int(len(np.unique(self.groups))) if self.volumes is not None else None,
            "skipped": list(self.skipped),
        }


def _to_model(physical: npt.NDArray[np.float64], physical_range: tuple[float, float]) -> npt.NDArray[np.float32]:
    lo, hi = physical_range
    return np.clip((physical - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def load_real_dataset(path: str | Path, role: str = "real") -> ImageSet:
    """A prepared dataset as an :class:`ImageSet` in its own model space."""
    from medsynth.dataset import load_dataset, slice_volumes

    p = Path(path)
    try:
        ds = load_dataset(p)
    except DatasetError as exc:
        raise EvaluationError(f"--{role} must be a prepared dataset: {exc.message}", exc.path or p) from None
    m = ds.manifest
    if not m.physical_range[1] > m.physical_range[0]:
        raise EvaluationError(f"physical_range {list(m.physical_range)} is empty", p / "manifest.json")
    return ImageSet(
        path=p,
        kind="dataset",
        images=np.asarray(ds.slices, dtype=np.float32),
        labels=np.asarray(ds.labels, dtype=np.int64),
        class_names=tuple(m.labels),
        physical_range=m.physical_range,
        unit=m.unit,
        preset=m.preset,
        volumes=slice_volumes(ds),
        positions=np.asarray(ds.positions, dtype=np.float32),
    )


def conform(other: ImageSet, reference: ImageSet, role: str) -> ImageSet:
    """Re-express a dataset ``other`` in the reference's model space and label names.

    Refuses another unit or matrix; maps labels by name (names the reference lacks become -1).
    """
    if other.unit != reference.unit:
        raise EvaluationError(
            f"--{role} is in {other.unit!r} but --real is in {reference.unit!r}: not the same intensity space",
            other.path,
        )
    if other.matrix != reference.matrix:
        raise EvaluationError(
            f"--{role} images are {other.matrix[0]}x{other.matrix[1]} but --real images are "
            f"{reference.matrix[0]}x{reference.matrix[1]}; prepare/generate both with the same preset "
            "(images are not resized, as resampling would change SSIM and texture)",
            other.path,
        )
    images = other.images
    if other.physical_range != reference.physical_range:
        images = _to_model(other.to_physical(images), reference.physical_range)
    lut = np.array([reference.class_names.index(n) if n in reference.class_names else -1 for n in other.class_names]
                   + [-1], dtype=np.int64)
    labels = lut[np.where(other.labels >= 0, other.labels, len(other.class_names))]
    return ImageSet(other.path, other.kind, images, labels, reference.class_names, reference.physical_range,
                    reference.unit, other.preset, other.skipped, other.volumes, other.positions)


def load_synthetic(path: str | Path, reference: ImageSet) -> ImageSet:
    """A prepared dataset, a generated DICOM/NIfTI folder, or one DICOM/NIfTI file, in ``reference``'s space."""
    p = Path(path)
    if not p.exists():
        raise EvaluationError("no such file or folder", p)
    if p.is_dir() and (p / "slices.npy").is_file() and (p / "manifest.json").is_file():
        return conform(load_real_dataset(p, role="synthetic"), reference, "synthetic")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    manifest = _read_manifest(p / "manifest.json") if p.is_dir() else {}
    images: list[npt.NDArray[np.float32]] = []
    conditions: list[str | None] = []
    series_keys: list[str] = []  # one per image: the file (NIfTI) or SeriesInstanceUID (DICOM)
    along: list[float] = []  # position of the image along its series
    skipped: list[str] = []
    kinds: set[str] = set()
    default_condition = _manifest_condition(manifest)
    rescale = manifest.get("intensity_rescaled") if isinstance(manifest.get("intensity_rescaled"), dict) else None
    for f in files:
        name = f.name.lower()
        if f.name == "DICOMDIR" or name.endswith(_NOT_IMAGES):
            if name.endswith(".png"):
                skipped.append(f"{f}: PNG is windowed for display, not physical units; evaluate the DICOM or NIfTI output")
            continue
        if name.endswith(_NIFTI_SUFFIXES):
            arrs = _read_nifti(f, reference, skipped)
            kinds.add("nifti")
            images.extend(arrs)
            conditions.extend([default_condition] * len(arrs))
            series_keys.extend([str(f)] * len(arrs))
            along.extend(float(k) for k in range(len(arrs)))
            continue
        got = _read_dicom(f, reference, skipped, rescale)
        if got is not None:
            kinds.add("dicom")
            arrs, cond, key, z = got
            images.extend(arrs)
            conditions.extend([cond or default_condition] * len(arrs))
            series_keys.extend([key] * len(arrs))
            along.extend(z + k for k in range(len(arrs)))
    if not images:
        detail = f" ({'; '.join(skipped[:3])})" if skipped else ""
        raise EvaluationError(f"no usable synthetic images found (expected a prepared dataset, DICOM or NIfTI){detail}", p)
    shapes = {a.shape for a in images}
    if shapes != {reference.matrix}:
        bad = sorted(s for s in shapes if s != reference.matrix)[0]
        raise EvaluationError(
            f"synthetic images are {bad[0]}x{bad[1]} but --real images are {reference.matrix[0]}x{reference.matrix[1]}; "
            "generate with the preset the real dataset was prepared for (images are not resized)",
            p,
        )
    phys = np.stack(images).astype(np.float64)
    labels = np.array(
        [reference.class_names.index(c) if c in reference.class_names else -1 for c in conditions], dtype=np.int64
    )
    kind: SetKind = "dicom" if "dicom" in kinds else "nifti"
    preset = manifest.get("preset") if isinstance(manifest.get("preset"), str) else None
    keys = {k: i for i, k in enumerate(dict.fromkeys(series_keys))}
    return ImageSet(p, kind, _to_model(phys, reference.physical_range), labels, reference.class_names,
                    reference.physical_range, reference.unit, preset, tuple(skipped),
                    np.array([keys[k] for k in series_keys], dtype=np.int64), np.array(along, dtype=np.float32))


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest_condition(manifest: dict[str, Any]) -> str | None:
    prov = manifest.get("provenance")
    if isinstance(prov, dict) and isinstance(prov.get("condition"), str):
        return str(prov["condition"])
    return None


_UNIT_MODALITIES = {"HU": ("CT",), "US": ("MR", "DX", "CR", "DR", "XA", "RF", "MG", "OT")}


def _read_dicom(
    f: Path, reference: ImageSet, skipped: list[str], rescale: dict[str, Any] | None
) -> tuple[list[npt.NDArray[np.float32]], str | None, str, float] | None:
    """Physical-unit frames ``[H, W]`` of one DICOM file, its condition, series key (SeriesInstanceUID) and
    position along the series (ImagePositionPatient z, else InstanceNumber), or None (and a note) if unusable."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_rescale

    try:
        ds = pydicom.dcmread(f)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        skipped.append(f"{f}: not readable as DICOM ({type(exc).__name__})")
        return None
    if "PixelData" not in ds:
        skipped.append(f"{f}: DICOM without pixel data")
        return None
    modality = str(ds.get("Modality", ""))
    allowed = _UNIT_MODALITIES.get(reference.unit)
    if allowed is not None and modality and modality not in allowed:
        raise EvaluationError(
            f"DICOM modality {modality} does not match the real dataset's unit {reference.unit!r}", f
        )
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom's pixel decoders raise many types: report the file, go on
        skipped.append(f"{f}: pixel data cannot be decoded ({type(exc).__name__}: {exc})")
        return None
    phys = np.asarray(apply_rescale(arr, ds), dtype=np.float64)  # Modality LUT: stored → HU for CT
    if rescale is not None:
        # the writer mapped out-of-range MR/DX input linearly (v' = v·scale + offset); undo it
        try:
            phys = (phys - float(rescale["offset"])) / float(rescale["scale"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise EvaluationError("manifest.json: malformed 'intensity_rescaled' record", f.parent) from None
    frames = [phys] if phys.ndim == 2 else list(phys.reshape(-1, *phys.shape[-2:]))
    try:
        z = float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else float(ds.get("InstanceNumber", 0))
    except (TypeError, ValueError, IndexError):
        z = 0.0
    key = str(ds.get("SeriesInstanceUID", f.parent))
    return [np.asarray(fr, dtype=np.float32) for fr in frames], _private_condition(ds), key, z


def _private_condition(ds: Any) -> str | None:
    """The ``condition`` from medsynth's private block, if the file has one."""
    from medsynth.dicom_io.provenance import PRIVATE_CREATOR, PRIVATE_GROUP, PRIVATE_TAGS

    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        elem = block[PRIVATE_TAGS["condition"][0]]
    except (KeyError, ValueError):
        return None
    value = str(elem.value).strip()
    return value or None


def _read_nifti(f: Path, reference: ImageSet, skipped: list[str]) -> list[npt.NDArray[np.float32]]:
    """Axial slices ``[y, x]`` (SimpleITK's array order ``[z, y, x]``) of a NIfTI file, physical units."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(f))
    except RuntimeError as exc:
        skipped.append(f"{f}: not readable as NIfTI ({str(exc).strip().splitlines()[-1][:120]})")
        return []
    if img.GetNumberOfComponentsPerPixel() != 1:
        skipped.append(f"{f}: not a grey-scale image")
        return []
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        skipped.append(f"{f}: expected a 2D or 3D image, got {arr.ndim}D")
        return []
    if not np.all(np.isfinite(arr)):
        skipped.append(f"{f}: contains NaN or infinite values")
        return []
    return list(arr)


def subset(n_total: int, n_max: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Sorted random indices of at most ``n_max`` of ``n_total`` items (all of them when fewer)."""
    if n_total <= n_max:
        return np.arange(n_total, dtype=np.int64)
    return np.sort(rng.choice(n_total, size=n_max, replace=False)).astype(np.int64)

