"""Read real images: DICOM series, NIfTI/NRRD/MHA volumes and 2D X-rays, as float32 volumes.

Every image becomes an :class:`ImageSeries`: ``voxels`` float32 ``[Z, Y, X]`` (HU for CT after
RescaleSlope/RescaleIntercept, scanner units for MR, grey values for X-ray), its
:class:`~medsynth.dicom_io.geometry.VolumeGeometry` (LPS, mm) and a few :class:`HeaderFacts` that
training needs (modality, body part, MR sequence hints, manufacturer). Patient identity is never read
into these objects.

Inputs may be files or folders (searched recursively), in any mix. Files that cannot be used become a
:class:`Skipped` entry with a one-line reason; the other files are still read. Inputs are opened
read-only and never modified.

Public API: :func:`iter_images` (a generator, one series in memory at a time), :func:`read_images`
(collects everything), :func:`read_volume` (one NIfTI/NRRD/MHA file), :func:`discover_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.errors import InputError, MedsynthError

if TYPE_CHECKING:
    import SimpleITK as sitk

#: file name endings read through SimpleITK as volumes (lower case)
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: 2D picture formats read as X-rays
PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: MedMNIST-style arrays of 2D images with labels
NPZ_SUFFIXES: tuple[str, ...] = (".npz",)
#: files that are never images (skipped silently when found inside a folder)
_IGNORED_NAMES = {"readme", "readme.txt", "readme.md", "license", "licence", ".ds_store", "thumbs.db"}


class InputKind(str, Enum):
    """How a file is read."""

    VOLUME = "volume"  # NIfTI / NRRD / MHA through SimpleITK
    PICTURE = "picture"  # PNG / JPEG / TIFF X-ray
    NPZ = "npz"  # MedMNIST .npz
    DICOM = "dicom"  # anything else: tried as DICOM


@dataclass(frozen=True)
class HeaderFacts:
    """The few header facts training needs; never the patient's identity.

    ``sequence`` summarises MR hints (ScanningSequence/SequenceVariant/SequenceName); times are ms.
    """

    modality: str = ""
    body_part: str = ""
    manufacturer: str = ""
    series_description: str = ""
    sequence: str = ""
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    inversion_time_ms: float | None = None
    contrast_agent: str = ""
    photometric: str = ""
    transfer_syntax: str = ""


@dataclass(frozen=True)
class ImageSeries:
    """One image series read from disk.

    ``voxels``: float32 ``[Z, Y, X]`` (Z = 1 for a single 2D image), HU for CT. ``geometry``: where
    the voxels sit (LPS, mm). ``files``: the files it came from. ``name``: a short display name (file
    or folder name, never patient data). ``notes``: corrections applied while reading (e.g. gantry
    tilt removed). ``is_projection``: a 2D projection radiograph (DX/CR/PNG) rather than a slice.
    """

    name: str
    files: tuple[Path, ...]
    voxels: npt.NDArray[np.float32]
    geometry: VolumeGeometry
    facts: HeaderFacts
    notes: tuple[str, ...] = ()
    is_projection: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.voxels.shape
        return int(z), int(y), int(x)


@dataclass(frozen=True)
class Skipped:
    """A file (or group of files) that could not be used, with a one-line reason."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ReadResult:
    """Everything :func:`read_images` found."""

    series: list[ImageSeries] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files_seen: int = 0


def input_kind(path: Path) -> InputKind:
    """Classify a file by its name (DICOM files often have no suffix, so DICOM is the fallback)."""
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return InputKind.VOLUME
    if name.endswith(PICTURE_SUFFIXES):
        return InputKind.PICTURE
    if name.endswith(NPZ_SUFFIXES):
        return InputKind.NPZ
    return InputKind.DICOM


def discover_files(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Expand files and folders (recursively, sorted) into a list of files.

    Returns ``(files, problems)``; a missing input is a problem, not an exception, so that the other
    inputs are still read. Hidden files and README/LICENSE files inside folders are ignored.
    """
    files: list[Path] = []
    problems: list[Skipped] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*")
                if q.is_file() and not q.name.startswith(".") and q.name.lower() not in _IGNORED_NAMES
                and not any(part.startswith(".") for part in q.relative_to(p).parts[:-1])
            )
            if not found:
                problems.append(Skipped(p, "folder holds no files"))
            for q in found:
                if q.resolve() not in seen:
                    seen.add(q.resolve())
                    files.append(q)
        elif p.is_file():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
        else:
            problems.append(Skipped(p, "no such file or folder"))
    return files, problems


def _check_finite(voxels: npt.NDArray[np.float32], path: Path) -> None:
    """Refuse empty, non-finite or constant volumes (InputError naming the problem)."""
    if voxels.size == 0:
        raise InputError("image holds no voxels", path)
    finite = np.isfinite(voxels)
    if not finite.all():
        bad = int(voxels.size - np.count_nonzero(finite))
        raise InputError(f"image holds {bad} non-finite voxels (NaN/inf) of {voxels.size}", path)
    if float(voxels.min()) == float(voxels.max()):
        raise InputError(f"image is empty (every voxel is {float(voxels.min()):g})", path)


def sitk_to_series(image: sitk.Image, path: Path, facts: HeaderFacts, name: str | None = None,
                   notes: tuple[str, ...] = ()) -> ImageSeries:
    """Wrap a 2D or 3D SimpleITK image (any pixel type, one component) as an :class:`ImageSeries`."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a grey-scale image is needed", path)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{image.GetDimension()}D image; give one 3D volume (split 4D series first)", path)
    image = sitk.Cast(image, sitk.sitkFloat32)
    voxels = sitk.GetArrayFromImage(image)
    _check_finite(voxels, path)
    try:
        geometry = VolumeGeometry.from_sitk(image)
    except MedsynthError as exc:
        raise InputError(f"unusable geometry: {exc.message}", path) from None
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= s <= hi for s in geometry.spacing):
        raise InputError(f"voxel spacing {tuple(round(s, 6) for s in geometry.spacing)} mm is implausible "
                         f"(outside {lo:g}..{hi:g} mm)", path)
    return ImageSeries(name=name or path.name, files=(path,), voxels=voxels, geometry=geometry,
                       facts=facts, notes=notes)


#: bytes per voxel of NIfTI datatype codes (the ones SimpleITK reads)
_NIFTI_DTYPE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                      1792: 16, 2304: 4}
#: plausible voxel spacing, mm: outside it a header is corrupt and is refused, never "fixed"
SPACING_RANGE_MM = (1e-4, 1e3)


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI-1/-2 file (``.nii`` or ``.nii.gz``) that is truncated or has unusable geometry.

    SimpleITK fills a truncated file's missing voxels with zeros and turns NaN, 0 or infinite
    ``pixdim`` into 1 mm; both would silently train on wrong data. Checks: the header is complete,
    the data holds ``vox_offset + prod(dim) × bitpix/8`` bytes, and ``pixdim`` is finite and
    positive for every spatial axis of size > 1. Raises InputError naming the problem.
    """
    import gzip
    import struct

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            if len(head) < 348:
                raise InputError(f"truncated NIfTI header ({len(head)} bytes)", path)
            total = len(head)
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        msg = str(exc).strip() or type(exc).__name__
        raise InputError(f"cannot read volume (truncated or corrupt NIfTI file: {msg[:120]})", path) from None
    order = None
    for endian in ("<", ">"):
        size = struct.unpack(f"{endian}i", head[:4])[0]
        if size in (348, 540):
            order = (endian, size)
    if order is None:
        return  # not a NIfTI header: let SimpleITK say what it is
    e, size = order
    if size == 348:
        dims = struct.unpack(f"{e}8h", head[40:56])
        datatype, bitpix = struct.unpack(f"{e}2h", head[70:74])
        pixdim = struct.unpack(f"{e}8f", head[76:108])
        vox_offset = struct.unpack(f"{e}f", head[108:112])[0]
    else:
        if len(head) < 540:
            raise InputError(f"truncated NIfTI-2 header ({len(head)} bytes)", path)
        datatype, bitpix = struct.unpack(f"{e}2h", head[12:16])
        dims = struct.unpack(f"{e}8q", head[16:80])
        pixdim = struct.unpack(f"{e}8d", head[104:168])
        vox_offset = float(struct.unpack(f"{e}q", head[168:176])[0])
    if size == 348:
        qform_code, sform_code = struct.unpack(f"{e}2h", head[252:256])
        quatern = struct.unpack(f"{e}6f", head[256:280])
        srow = struct.unpack(f"{e}12f", head[280:328])
        if (qform_code > 0 and not np.isfinite(quatern).all()) or (sform_code > 0 and not np.isfinite(srow).all()):
            raise InputError("NIfTI orientation (qform/sform) holds NaN or infinite values", path)
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or any(int(d) < 1 for d in dims[1:ndim + 1]):
        raise InputError(f"NIfTI header has an invalid dim field {list(dims[:ndim + 1])}", path)
    for axis in range(1, min(ndim, 3) + 1):
        sp = float(pixdim[axis])
        if not np.isfinite(sp) or (dims[axis] > 1 and sp <= 0):
            raise InputError(f"NIfTI pixdim[{axis}] is {sp:g}: unusable voxel spacing (refused rather than "
                             "guessed as 1 mm)", path)
    nbytes = _NIFTI_DTYPE_BYTES.get(int(datatype), max(int(bitpix), 8) // 8)
    n_vox = int(np.prod([int(d) for d in dims[1:ndim + 1]], dtype=np.float64))
    need = int(vox_offset if np.isfinite(vox_offset) and vox_offset >= size else size + 4) + n_vox * nbytes
    if total < need:
        raise InputError(f"truncated NIfTI file: {total} bytes of image data and header, {need} needed "
                         f"({n_vox} voxels of {nbytes} bytes)", path)


def read_volume(path: str | Path) -> ImageSeries:
    """Read a NIfTI/NRRD/MHA volume through SimpleITK, orientation respected (LPS geometry).

    NIfTI files are checked first (:func:`check_nifti`: truncated data, NaN/0/inf spacing).
    Raises :class:`InputError` when the file cannot be read or holds no usable image.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        if "Unable to determine ImageIO reader" in str(exc):
            detail = "not a readable NIfTI/NRRD/MHA file"
        raise InputError(f"cannot read volume ({detail[:200]})", path) from None
    if image.GetDimension() == 4:
        raise InputError(f"4D image {image.GetSize()}; give one 3D volume (split the time/echo axis first)", path)
    modality = ""
    for key in ("modality", "Modality"):
        if image.HasMetaDataKey(key):
            modality = image.GetMetaData(key).strip().upper()
    return sitk_to_series(image, path, HeaderFacts(modality=modality))


def iter_images(
    inputs: Sequence[str | Path],
    *,
    on_file: Callable[[Path], None] | None = None,
    include_npz: bool = False,
) -> Iterator[ImageSeries | Skipped]:
    """Yield each image series found in ``inputs`` (files and folders), or a :class:`Skipped`.

    DICOM files are grouped into series first (by SeriesInstanceUID and geometry, sorted along the
    slice normal), so only one series' pixels are in memory at a time. ``.npz`` files are skipped
    with a note unless ``include_npz`` (the caller then reads them with :mod:`medsynth.dicom_io.xray`).
    ``on_file`` is called once per file (for progress bars).
    """
    from medsynth.dicom_io import xray

    files, problems = discover_files(inputs)
    yield from problems
    dicom_files: list[Path] = []
    for f in files:
        kind = input_kind(f)
        if kind is InputKind.DICOM:
            dicom_files.append(f)
            continue
        if on_file is not None:
            on_file(f)
        try:
            if kind is InputKind.VOLUME:
                yield read_volume(f)
            elif kind is InputKind.PICTURE:
                yield xray.read_picture(f)
            elif not include_npz:
                yield Skipped(f, "a .npz image array (only `medsynth prepare` reads these)")
        except MedsynthError as exc:
            yield Skipped(f, exc.message)
    if dicom_files:
        from medsynth.dicom_io import dicom_series

        yield from dicom_series.iter_dicom_series(dicom_files, on_file=on_file)


def read_images(inputs: Sequence[str | Path]) -> ReadResult:
    """Read every image in ``inputs`` into memory (see :func:`iter_images`)."""
    files, _ = discover_files(inputs)
    result = ReadResult(files_seen=len(files))
    for item in iter_images(inputs):
        if isinstance(item, Skipped):
            result.skipped.append(item)
        else:
            result.series.append(item)
    return result
