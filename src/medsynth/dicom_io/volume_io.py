"""Input of ``medsynth to-dicom``: a NIfTI/NRRD/MHA volume or a .npy array, pixels and geometry only.

Only the voxel values, the geometry and the file's SHA-256 leave this module: no file name, header
text or metadata key of the input can reach the DICOM output (see the privacy test). The SHA-256
is recorded in the local manifest only; for a real scan it never reaches a DICOM file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.reader import VOLUME_SUFFIXES, read_volume
from medsynth.errors import ConfigError, InputError
from medsynth.pack import sha256_file

if TYPE_CHECKING:
    from medsynth.dicom_io.writer import WriterOptions

NPY_SUFFIX = ".npy"


@dataclass(frozen=True)
class InputVolume:
    """``voxels``: ``[z, y, x]`` in physical units (HU for CT); ``geometry`` LPS mm; ``sha256`` hex."""

    voxels: npt.NDArray[np.floating] | npt.NDArray[np.integer]
    geometry: VolumeGeometry
    sha256: str


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*VOLUME_SUFFIXES, NPY_SUFFIX):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def load_input(path: str | Path, spacing_mm: tuple[float, float, float] | None = None) -> InputVolume:
    """Read ``path`` for to-dicom.

    NIfTI/NRRD/MHA: voxels and geometry through SimpleITK (``spacing_mm`` must be None). ``.npy``:
    a 2D ``[rows, cols]`` slice or a 3D ``[z, y, x]`` array; ``spacing_mm`` = (x, y, z) spacing in
    mm (column, row, slice) is required; the volume is axial and centred on the origin.
    Raises InputError (unreadable, wrong shape, NaN) or ConfigError (spacing misuse).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    suffix = _suffix(path)
    if suffix == NPY_SUFFIX:
        if spacing_mm is None:
            raise ConfigError("a .npy input needs --spacing X,Y,Z (mm)", path)
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"not a readable .npy array ({str(err).splitlines()[0][:120]})", path) from None
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise InputError(f"array has shape {arr.shape}; expected [rows, cols] or [z, y, x]", path)
        if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"array dtype {arr.dtype} is not a real number type", path)
        voxels = np.ascontiguousarray(arr)
        if not np.all(np.isfinite(voxels)):
            raise InputError("array contains NaN or infinite values", path)
        geometry = VolumeGeometry.axial((voxels.shape[1], voxels.shape[2]), (spacing_mm[1], spacing_mm[0]),
                                        spacing_mm[2], voxels.shape[0])
        return InputVolume(voxels, geometry, sha256_file(path))
    if suffix not in VOLUME_SUFFIXES:
        raise InputError(
            f"unsupported file type {suffix or '(none)'}; give a NIfTI, NRRD, MHA/MHD or .npy file", path)
    if spacing_mm is not None:
        raise ConfigError("--spacing applies to .npy input only; volumes carry their own spacing", path)
    series = read_volume(path)
    return InputVolume(series.voxels, series.geometry, sha256_file(path))


def convert_file(path: str | Path, preset_name: str, out_dir: str | Path, options: WriterOptions | None = None,
                 force: bool = False, spacing_mm: tuple[float, float, float] | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_slice: Callable[[int], None] | None = None, synthetic: bool = False) -> dict[str, Any]:
    """``medsynth to-dicom``: read ``path`` and write it under ``out_dir`` as a DICOM study.

    By default the input is a real scan and the output is de-identified real data (see
    :mod:`medsynth.dicom_io.provenance`); ``synthetic=True`` says the input is itself synthetic and
    marks the output so. The input's geometry is kept; its SHA-256 is the only thing recorded about
    it (provenance ``source_sha256``, in the manifest; in the files too only when synthetic).
    ``on_start(total_files)`` and ``on_slice(files_done)`` feed a progress bar. Returns the manifest.
    """
    from medsynth.dicom_io.provenance import PixelOrigin
    from medsynth.dicom_io.writer import Provenance, WriterOptions, write_volume
    from medsynth.presets import get_preset

    preset = get_preset(preset_name)
    options = options or WriterOptions()
    volume = load_input(path, spacing_mm)
    if on_start is not None:
        on_start(volume.voxels.shape[0] * options.n_series)
    origin = PixelOrigin.SYNTHETIC_INPUT if synthetic else PixelOrigin.REAL
    provenance = Provenance(source_sha256=volume.sha256, origin=origin)
    return write_volume(volume.voxels, volume.geometry, preset, out_dir, options, provenance, force=force,
                        on_slice=on_slice)
