"""The prepared training dataset: one documented, memory-mappable format.

A dataset is a folder::

    DATASET/
      slices.npy        float32 [N, H, W], model space [-1, 1] (memory-mappable); colour presets
                        (micro-malaria): [N, 3, H, W], RGB channels first
      labels.npy        int64   [N], index into manifest["labels"]
      positions.npy     float32 [N], relative position of the slice in its volume, 0 = first
                        (inferior-most for axial CT/MR) .. 1 = last; 0.5 for 2D images
      volumes.npy       int64   [N], neutral volume index of each slice (0, 1, 2 … in input order;
                        one per scanned volume/series, one per image for 2D images). It carries no
                        name or identifier; evaluation splits real data by it, never by slice.
                        Optional (datasets written before it existed): see :func:`slice_volumes`.
      manifest.json     see :class:`DatasetManifest`
      contact_sheet.png a grid of slices to look at

``manifest.json`` holds: format version, preset name, matrix (H, W), pixel spacing (mm), the
intensity mapping's physical range and unit, the label names, per-source records (file name
relative to nothing — just the base name —, sha256, series count, slices kept, label, licence if
known) and the per-slice source index (``slice_sources``, int list of length N).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.errors import DatasetError

DATASET_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SourceRecord:
    """One input file (or DICOM series folder) that contributed slices."""

    name: str
    sha256: str
    slices: int
    label: str
    series: int = 1
    licence: str = ""


@dataclass(frozen=True)
class DatasetManifest:
    """Metadata of a prepared dataset (``manifest.json``)."""

    preset: str
    matrix: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    physical_range: tuple[float, float]
    unit: str
    labels: tuple[str, ...]
    sources: tuple[SourceRecord, ...]
    slice_sources: tuple[int, ...] = field(default=())
    format_version: int = DATASET_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["matrix"] = list(self.matrix)
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        d["physical_range"] = list(self.physical_range)
        d["labels"] = list(self.labels)
        d["slice_sources"] = list(self.slice_sources)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path | None = None) -> DatasetManifest:
        try:
            return cls(
                preset=str(d["preset"]),
                matrix=(int(d["matrix"][0]), int(d["matrix"][1])),
                pixel_spacing_mm=(float(d["pixel_spacing_mm"][0]), float(d["pixel_spacing_mm"][1])),
                physical_range=(float(d["physical_range"][0]), float(d["physical_range"][1])),
                unit=str(d["unit"]),
                labels=tuple(str(x) for x in d["labels"]),
                sources=tuple(SourceRecord(**s) for s in d["sources"]),
                slice_sources=tuple(int(x) for x in d.get("slice_sources", [])),
                format_version=int(d.get("format_version", 1)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DatasetError(f"malformed dataset manifest ({exc})", path) from None


@dataclass(frozen=True)
class PreparedDataset:
    """A loaded dataset: arrays are memory-mapped, never copied whole into RAM."""

    root: Path
    manifest: DatasetManifest
    slices: npt.NDArray[np.float32]  # [N, H, W] (or RGB [N, 3, H, W]) in [-1, 1]
    labels: npt.NDArray[np.int64]  # [N]
    positions: npt.NDArray[np.float32]  # [N] in [0, 1]
    volumes: npt.NDArray[np.int64] | None = None  # [N] volume index; None: the dataset predates volumes.npy

    def __len__(self) -> int:
        return int(self.slices.shape[0])


def save_dataset(
    root: Path,
    manifest: DatasetManifest,
    slices: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    positions: npt.NDArray[np.float32],
    volumes: npt.NDArray[np.int64] | None = None,
) -> None:
    """Write the arrays and manifest to ``root`` (created). Shapes are validated first.
    ``volumes`` ``[N]`` (volume index per slice) is written as ``volumes.npy`` when given."""
    _validate(root, manifest, slices, labels, positions)
    _validate_volumes(root, volumes, len(slices))
    root.mkdir(parents=True, exist_ok=True)
    arrays: list[tuple[str, npt.NDArray[Any]]] = [
        ("slices", slices.astype(np.float32)), ("labels", labels.astype(np.int64)),
        ("positions", positions.astype(np.float32))]
    if volumes is not None:
        arrays.append(("volumes", np.asarray(volumes).astype(np.int64)))
    for name, arr in arrays:
        tmp = root / f".{name}.npy.partial"
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
        tmp.replace(root / f"{name}.npy")
    tmp = root / ".manifest.json.partial"
    tmp.write_text(json.dumps(manifest.to_json(), indent=2), encoding="utf-8")
    tmp.replace(root / "manifest.json")


def load_dataset(root: str | Path) -> PreparedDataset:
    """Open a prepared dataset folder, validating every array against the manifest."""
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise DatasetError("not a prepared dataset (no manifest.json); run `medsynth prepare` first", root)
    try:
        manifest = DatasetManifest.from_json(json.loads(mpath.read_text(encoding="utf-8")), mpath)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"manifest.json is not valid JSON ({exc.msg})", mpath) from None
    arrays = {}
    for name in ("slices", "labels", "positions"):
        p = root / f"{name}.npy"
        if not p.is_file():
            raise DatasetError(f"missing {name}.npy", root)
        try:
            arrays[name] = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"cannot read {name}.npy ({exc})", p) from None
    volumes = None
    vpath = root / "volumes.npy"
    if vpath.is_file():
        try:
            volumes = np.load(vpath, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"cannot read volumes.npy ({exc})", vpath) from None
    ds = PreparedDataset(root, manifest, arrays["slices"], arrays["labels"], arrays["positions"], volumes)
    _validate(root, manifest, ds.slices, ds.labels, ds.positions)
    _validate_volumes(root, volumes, len(ds))
    return ds


def slice_volumes(ds: PreparedDataset) -> npt.NDArray[np.int64]:
    """Volume index ``[N]`` of every slice: ``volumes.npy`` when the dataset has it; for older
    datasets the per-slice source index (``manifest.slice_sources``: one volume per source record,
    so a scan split into two labels counts as two volumes), else one volume per slice."""
    if ds.volumes is not None:
        return np.asarray(ds.volumes, dtype=np.int64)
    if len(ds.manifest.slice_sources) == len(ds):
        return np.asarray(ds.manifest.slice_sources, dtype=np.int64)
    return np.arange(len(ds), dtype=np.int64)


def image_channels(slices: npt.NDArray[Any]) -> int:
    """Channels per image of a dataset's ``slices``: 1 for [N, H, W], 3 for RGB [N, 3, H, W]."""
    return 1 if slices.ndim == 3 else int(slices.shape[1])


def _validate_volumes(root: Path, volumes: npt.NDArray[Any] | None, n: int) -> None:
    if volumes is None:
        return
    if volumes.shape != (n,) or not np.issubdtype(volumes.dtype, np.integer):
        raise DatasetError(f"volumes must be integers of shape ({n},), got {volumes.dtype} {volumes.shape}", root)
    if n and int(np.min(volumes)) < 0:
        raise DatasetError("volume indices must be non-negative", root)


def _validate(
    root: Path,
    manifest: DatasetManifest,
    slices: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    positions: npt.NDArray[Any],
) -> None:
    if slices.ndim not in (3, 4) or (slices.ndim == 4 and slices.shape[1] != 3):
        raise DatasetError(f"slices must be [N, H, W] (grey) or [N, 3, H, W] (RGB), got shape {tuple(slices.shape)}",
                           root)
    n, h, w = slices.shape[0], slices.shape[-2], slices.shape[-1]
    if (h, w) != tuple(manifest.matrix):
        raise DatasetError(f"slices are {h}x{w} but the manifest says {manifest.matrix[0]}x{manifest.matrix[1]}", root)
    if n == 0:
        raise DatasetError("dataset holds no slices", root)
    if labels.shape != (n,) or positions.shape != (n,):
        raise DatasetError(f"labels/positions must have shape ({n},), got {labels.shape} and {positions.shape}", root)
    if len(manifest.labels) == 0:
        raise DatasetError("manifest names no labels", root)
    lmin, lmax = int(np.min(labels)), int(np.max(labels))
    if lmin < 0 or lmax >= len(manifest.labels):
        raise DatasetError(f"label index {lmax if lmax >= len(manifest.labels) else lmin} has no name in the manifest "
                           f"(labels: {list(manifest.labels)})", root)
