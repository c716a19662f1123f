"""DICOM files → image series: grouping, sorting by geometry, decoding, rescaling, tilt correction.

Why hand-written grouping and geometry: SimpleITK/GDCM's series reader sorts slices but, on a tilted or
unevenly spaced series (``../shared/data/ct/head_gantry_tilt_dicom``), only warns and returns a volume
with one averaged spacing and orthogonal axes, i.e. a silently sheared, mis-spaced volume. Here every
frame keeps its own ImagePositionPatient, so tilt and uneven gaps are detected and resampled exactly.
Pixel decoding is pydicom's (pylibjpeg / openjpeg plugins: JPEG, JPEG-LS, JPEG 2000, RLE, deflate).

Frames are grouped by SeriesInstanceUID, frame size, orientation, echo number and temporal position;
within a group they are sorted by ImagePositionPatient projected on the slice normal (never by file
name or InstanceNumber). Bad files become :class:`~medsynth.dicom_io.reader.Skipped` entries.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.reader import SPACING_RANGE_MM, HeaderFacts, ImageSeries, Skipped
from medsynth.errors import GeometryError, InputError, MedsynthError, UnsupportedInputError

#: SOP classes (by pydicom's UID name fragments) that carry no image to train on
_NON_IMAGE_NAME_PARTS = (
    "SR Storage", "Structured Report", "Presentation State", "Structure Set", "RT Plan", "RT Dose",
    "RT Beams", "RT Treatment", "RT Ion", "Segmentation", "Key Object", "Waveform", "Encapsulated",
    "Raw Data", "Spatial Registration", "Spatial Fiducials", "Deformable", "Real World Value",
    "Surface", "Tractography", "Measurement", "Basic Text", "Comprehensive", "Enhanced SR", "Media Storage Directory",
)
#: projection radiography modalities: one 2D image per frame, no slice stack
_PROJECTION_MODALITIES = {"DX", "CR", "MG", "RF", "XA", "IO", "PX", "RG"}
#: relative tolerance on slice gaps before a series counts as unevenly spaced
_GAP_RTOL = 0.02
#: a gap larger than this many times the median gap means missing slices: refuse
_MAX_GAP_FACTOR = 3.0
#: most frames one file may declare
_MAX_FRAMES = 100_000


@dataclass
class _Frame:
    """One 2D frame of a DICOM file, with what grouping and sorting need."""

    path: Path
    index: int  # frame index within the file (0 for single-frame files)
    ds: Any  # pydicom Dataset (large values deferred)
    key: tuple[Any, ...]
    ipp: npt.NDArray[np.float64] | None
    iop: npt.NDArray[np.float64] | None
    spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    slope: float
    intercept: float


def _get(obj: Any, name: str, path: Path | None = None) -> Any:
    """``obj.name`` or None; a value pydicom cannot parse (e.g. DS "abc") is an InputError naming it."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError/TypeError/... on malformed values
        raise InputError(f"unreadable {name} ({type(exc).__name__}: {str(exc)[:80]})", path) from None


def _number(obj: Any, name: str, default: float, path: Path, *, integer: bool = False) -> float:
    """One finite number from a header attribute (``default`` when absent or empty).

    A multi-valued, non-numeric or non-finite value is an InputError naming the attribute, so a bad
    header value skips its file (reported) instead of escaping the per-series handling.
    """
    v = _get(obj, name, path)
    if v is None or (isinstance(v, (str, bytes)) and not str(v).strip()):
        return default
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        if len(v) != 1:
            raise InputError(f"{name} holds {len(v)} values, expected one", path)
        v = v[0]
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} {str(v)[:24]!r} is not a number", path) from None
    if not math.isfinite(x):
        raise InputError(f"{name} is not finite ({x})", path)
    if integer and not x.is_integer():
        raise InputError(f"{name} {x:g} is not an integer", path)
    return x


def _float_list(value: Any, n: int) -> npt.NDArray[np.float64] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _item(seq_parent: Any, seq: str, attr: str) -> Any:
    s = _get(seq_parent, seq)
    try:
        if s is None or len(s) == 0:
            return None
        return _get(s[0], attr)
    except TypeError:  # not a sequence
        return None


def _sop_class_name(ds: Any) -> str:
    uid = getattr(ds, "SOPClassUID", None)
    if not uid:  # some files leave it empty in the data set and keep it in the file meta only
        uid = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return str(getattr(uid, "name", uid or ""))


def _read_header(path: Path) -> Any:
    """Read a DICOM file's header (pixel data deferred); InputError if it is not usable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, defer_size=4096)
    except InvalidDicomError:
        try:  # DICOM without the 128-byte preamble (old ACR-NEMA style files): accept if it has an image
            ds = pydicom.dcmread(path, defer_size=4096, force=True)
        except Exception:  # noqa: BLE001 - any parser failure means "not DICOM"
            ds = None
        if ds is not None and ("SOPClassUID" in ds or ("Rows" in ds and "PixelData" in ds)):
            return ds
        raise InputError("not a DICOM file (no DICM preamble, no image attributes)", path) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read DICOM file ({exc})", path) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt headers
        raise InputError(f"corrupt DICOM header ({type(exc).__name__}: {str(exc)[:120]})", path) from None


def _frames_of(path: Path, ds: Any) -> list[_Frame]:
    """Split a dataset into frames with per-frame geometry and rescale (enhanced or legacy)."""
    name = _sop_class_name(ds)
    if any(part in name for part in _NON_IMAGE_NAME_PARTS):
        raise UnsupportedInputError(f"not an image ({name})", path)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnsupportedInputError(f"no PixelData ({name or 'unknown SOP class'}): not an image", path)
    samples = int(_number(ds, "SamplesPerPixel", 1, path, integer=True))
    if samples != 1:
        raise UnsupportedInputError(f"colour image ({_get(ds, 'PhotometricInterpretation', path) or '?'}, "
                                    f"{samples} samples per pixel); a grey-scale image is needed", path)
    n_frames = int(_number(ds, "NumberOfFrames", 1, path, integer=True)) or 1
    rows = int(_number(ds, "Rows", 0, path, integer=True))
    cols = int(_number(ds, "Columns", 0, path, integer=True))
    if rows < 1 or cols < 1 or n_frames < 1:
        raise InputError(f"image size {rows}x{cols}x{n_frames} is empty", path)
    if n_frames > _MAX_FRAMES:
        raise InputError(f"NumberOfFrames {n_frames} is implausible (at most {_MAX_FRAMES})", path)
    _check_native_length(ds, rows, cols, n_frames, path)
    series_uid = str(_get(ds, "SeriesInstanceUID", path) or f"no-series-uid:{path.parent}")
    echo = str(_get(ds, "EchoNumbers", path) or "")
    temporal = str(_get(ds, "TemporalPositionIdentifier", path) or "")
    shared = _get(ds, "SharedFunctionalGroupsSequence", path)
    shared0 = shared[0] if shared else None
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence", path)

    def _spacing(obj: Any) -> tuple[float, float] | None:
        raw = _get(obj, "PixelSpacing", path) or _get(obj, "ImagerPixelSpacing", path)
        if raw is None or raw == "":
            return None
        sp = _float_list(raw, 2)
        if sp is None or not (sp > 0).all():
            raise GeometryError(f"PixelSpacing {str(raw)[:40]!r} is not two positive numbers", path)
        lo, hi = SPACING_RANGE_MM
        if not ((sp >= lo) & (sp <= hi)).all():
            raise GeometryError(f"PixelSpacing {sp[0]:g}\\{sp[1]:g} mm is implausible (outside {lo:g}..{hi:g} mm)",
                                path)
        return (float(sp[0]), float(sp[1]))

    frames: list[_Frame] = []
    if per_frame is not None:  # enhanced multi-frame: geometry per frame or shared
        if len(per_frame) != n_frames:
            raise InputError(f"{len(per_frame)} per-frame groups for {n_frames} frames", path)
        for i, fg in enumerate(per_frame):
            groups = [g for g in (fg, shared0) if g is not None]
            ipp = next((_float_list(_item(g, "PlanePositionSequence", "ImagePositionPatient"), 3) for g in groups
                        if _item(g, "PlanePositionSequence", "ImagePositionPatient") is not None), None)
            iop = next((_float_list(_item(g, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
                        for g in groups if _item(g, "PlaneOrientationSequence", "ImageOrientationPatient") is not None),
                       None)
            meas = next((g.PixelMeasuresSequence[0] for g in groups if _get(g, "PixelMeasuresSequence", path)), None)
            pvt = next((g.PixelValueTransformationSequence[0] for g in groups
                        if _get(g, "PixelValueTransformationSequence", path)), None)
            slope = _number(pvt, "RescaleSlope", 1.0, path) or 1.0
            intercept = _number(pvt, "RescaleIntercept", 0.0, path)
            tpos = str(_item(fg, "FrameContentSequence", "TemporalPositionIndex") or "")
            fkey: tuple[Any, ...] = (series_uid, rows, cols, None if iop is None else tuple(np.round(iop, 3)),
                                     echo, tpos, str(path))
            frames.append(_Frame(path, i, ds, fkey, ipp, iop, _spacing(meas) if meas is not None else None,
                                 slope, intercept))
        return frames
    ipp = _float_list(_get(ds, "ImagePositionPatient", path), 3)
    iop = _float_list(_get(ds, "ImageOrientationPatient", path), 6)
    slope = _number(ds, "RescaleSlope", 1.0, path) or 1.0
    intercept = _number(ds, "RescaleIntercept", 0.0, path)
    key: tuple[Any, ...] = (series_uid, rows, cols, None if iop is None else tuple(np.round(iop, 3)), echo,
                            temporal)
    spacing = _spacing(ds)
    if n_frames == 1:
        return [_Frame(path, 0, ds, key, ipp, iop, spacing, slope, intercept)]
    # legacy multi-frame: frame positions from GridFrameOffsetVector or SpacingBetweenSlices
    offsets = _float_list(_get(ds, "GridFrameOffsetVector", path), n_frames)
    if offsets is None and _get(ds, "SpacingBetweenSlices", path) not in (None, ""):
        offsets = np.arange(n_frames, dtype=np.float64) * _number(ds, "SpacingBetweenSlices", 0.0, path)
    modality = str(_get(ds, "Modality", path) or "").upper()
    key = (*key, str(path))
    if ipp is None or iop is None or offsets is None:
        if modality in _PROJECTION_MODALITIES:
            return [_Frame(path, i, ds, key, None, None, spacing, slope, intercept) for i in range(n_frames)]
        raise GeometryError(f"multi-frame file ({n_frames} frames) without per-frame positions "
                            "(no functional groups, GridFrameOffsetVector or SpacingBetweenSlices)", path)
    normal = np.cross(iop[:3], iop[3:])
    return [_Frame(path, i, ds, key, ipp + offsets[i] * normal, iop, spacing, slope, intercept)
            for i in range(n_frames)]


def _check_native_length(ds: Any, rows: int, cols: int, n_frames: int, path: Path) -> None:
    """Refuse uncompressed PixelData shorter than Rows × Columns × NumberOfFrames × BitsAllocated/8
    (a header that declares more frames or pixels than the file holds), before anything is allocated."""
    try:
        elem = ds.get_item("PixelData")
    except Exception:  # noqa: BLE001 - unreadable element: the decoder reports it
        return
    length = getattr(elem, "length", None)
    if elem is None or not isinstance(length, int) or length == 0xFFFFFFFF:
        return  # absent, or encapsulated (compressed): the decoder checks
    bits = int(_number(ds, "BitsAllocated", 16, path, integer=True))
    if bits not in (1, 8, 16, 32, 64):
        raise InputError(f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64", path)
    need = (rows * cols * n_frames * bits + 7) // 8
    if length < need:
        raise InputError(f"truncated pixel data: PixelData holds {length} bytes, but {rows}x{cols}x{n_frames} pixels of {bits} bits "
                         f"need {need}", path)


def _facts(ds: Any) -> HeaderFacts:
    """Header facts; an unreadable or malformed value becomes empty (facts are hints only)."""
    def s(name: str) -> str:
        try:
            v = getattr(ds, name, "")
            return "\\".join(str(x) for x in v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" \
                else str(v or "")
        except Exception:  # noqa: BLE001 - malformed value: no fact
            return ""

    def f(name: str) -> float | None:
        try:
            v = getattr(ds, name, None)
            x = None if v in (None, "") else float(v)
        except Exception:  # noqa: BLE001 - malformed or multi-valued: no fact
            return None
        return x if x is not None and math.isfinite(x) else None

    seq = "/".join(x for x in (s("ScanningSequence"), s("SequenceVariant"), s("SequenceName")) if x)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return HeaderFacts(
        modality=s("Modality").upper(), body_part=s("BodyPartExamined").upper(), manufacturer=s("Manufacturer"),
        series_description=s("SeriesDescription"), sequence=seq, echo_time_ms=f("EchoTime"),
        repetition_time_ms=f("RepetitionTime"), inversion_time_ms=f("InversionTime"),
        contrast_agent=s("ContrastBolusAgent"), photometric=s("PhotometricInterpretation"),
        transfer_syntax=str(getattr(ts, "name", ts or "")),
    )


def _decode(ds: Any, path: Path) -> npt.NDArray[np.float32]:
    """All frames of a file as float32 [F, rows, cols] stored values (no rescale yet)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on corrupt or truncated data
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot decode pixel data ({msg[:180]})", path) from None
    arr = np.asarray(arr)
    n_frames = int(_number(ds, "NumberOfFrames", 1, path, integer=True)) or 1
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n_frames:
        raise InputError(f"decoded pixel data has shape {arr.shape}, expected {n_frames} grey frames", path)
    return arr.astype(np.float32)


def _projection_series(frame: _Frame, pixels: npt.NDArray[np.float32], name: str) -> ImageSeries:
    """A DX/CR frame → grey [0, 1] (modality LUT, VOI window or robust percentiles, MONOCHROME1 inverted)."""
    ds = frame.ds
    v = pixels * np.float32(frame.slope) + np.float32(frame.intercept)
    if not np.isfinite(v).all():
        raise InputError("image holds NaN/inf pixels", frame.path)
    try:
        wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
        c = float(wc[0] if type(wc).__name__ == "MultiValue" else wc) if wc is not None else None
        w = float(ww[0] if type(ww).__name__ == "MultiValue" else ww) if ww is not None else None
    except Exception:  # noqa: BLE001 - a malformed window is ignored (percentiles instead)
        c = w = None
    if c is not None and w is not None and math.isfinite(c) and math.isfinite(w) and w > 1:
        lo, hi = c - w / 2.0, c + w / 2.0
    else:
        lo, hi = (float(x) for x in np.percentile(v, (0.5, 99.5)))
    if hi <= lo:
        raise InputError(f"image is empty (every pixel is {float(v.min()):g})", frame.path)
    grey = np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 1.0 - grey
    sp = frame.spacing or (1.0, 1.0)
    geo = VolumeGeometry(origin=(0.0, 0.0, 0.0), spacing=(sp[1], sp[0], 1.0))
    return ImageSeries(name=name, files=(frame.path,), voxels=grey[None], geometry=geo, facts=_facts(ds),
                       notes=("MONOCHROME1 inverted",) if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
                       else (), is_projection=True)


def _stack(frames: list[_Frame], pixels: dict[tuple[Path, int], npt.NDArray[np.float32]],
           name: str) -> ImageSeries:
    """Sorted, rescaled, geometry-checked volume from the frames of one group."""
    first = frames[0]
    path = first.path
    for fr in frames:
        if fr.iop is None or fr.ipp is None:
            raise GeometryError("missing ImageOrientationPatient/ImagePositionPatient: cannot place the slices",
                                fr.path)
        if fr.spacing is None:
            raise GeometryError("missing or invalid PixelSpacing", fr.path)
    iop = first.iop if first.iop is not None else np.array([1.0, 0, 0, 0, 1.0, 0])  # never None here
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    if abs(float(row @ col)) > 1e-3:
        raise GeometryError("ImageOrientationPatient row and column vectors are not orthogonal", path)
    normal = np.cross(row, col)
    dist = np.array([float(fr.ipp @ normal) for fr in frames])  # type: ignore[operator]
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    first = frames[0]  # the inferior-most (lowest along the normal) slice defines the origin
    sy, sx = first.spacing or (1.0, 1.0)  # never None here (checked above)
    if any(fr.spacing is not None and not np.allclose(fr.spacing, (sy, sx), rtol=1e-3) for fr in frames):
        raise GeometryError("mixed series: slices have different PixelSpacing", path)
    photometric = str(first.ds.get("PhotometricInterpretation", "")).upper()
    invert = photometric == "MONOCHROME1" and str(first.ds.get("Modality", "")).upper() != "CT"
    slices = []
    for fr in frames:
        s = pixels[(fr.path, fr.index)] * np.float32(fr.slope) + np.float32(fr.intercept)
        slices.append(s)
    vol = np.stack(slices).astype(np.float32)
    if not np.isfinite(vol).all():
        raise InputError(f"volume holds {int(vol.size - np.isfinite(vol).sum())} NaN/inf voxels", path)
    if float(vol.min()) == float(vol.max()):
        raise InputError(f"volume is empty (every voxel is {float(vol.min()):g})", path)
    notes: list[str] = []
    if invert:
        vol = np.float32(vol.max() + vol.min()) - vol
        notes.append("MONOCHROME1 inverted")
    n = len(frames)
    facts = _facts(first.ds)
    files = tuple(OrderedDict.fromkeys(fr.path for fr in frames))
    direction = (float(row[0]), float(col[0]), float(normal[0]), float(row[1]), float(col[1]), float(normal[1]),
                 float(row[2]), float(col[2]), float(normal[2]))
    p0 = first.ipp if first.ipp is not None else np.zeros(3)  # never None here (checked above)
    origin = (float(p0[0]), float(p0[1]), float(p0[2]))
    if n == 1:
        thick = _number(first.ds, "SliceThickness", 0.0, path) or 1.0
        if not SPACING_RANGE_MM[0] <= thick <= SPACING_RANGE_MM[1]:
            raise GeometryError(f"SliceThickness {thick:g} mm is implausible", path)
        geo = VolumeGeometry(origin, (sx, sy, thick), direction)
        return ImageSeries(name, files, vol, geo, facts, tuple(notes))
    gaps = np.diff(dist)
    if (gaps < 1e-3).any():
        raise GeometryError(f"mixed series: {int((gaps < 1e-3).sum()) + 1} slices share a position (several "
                            "echoes, phases or acquisitions in one series)", path)
    median = float(np.median(gaps))
    # in-plane offset of each slice relative to the first: non-zero means a sheared (tilted) stack
    rel = np.array([fr.ipp - first.ipp for fr in frames])  # type: ignore[operator]
    u, v = rel @ row, rel @ col
    sheared = max(float(np.abs(u).max()), float(np.abs(v).max())) > max(0.05, 0.02 * min(sx, sy))
    uneven = float(gaps.max() - gaps.min()) > max(0.1, _GAP_RTOL * median)
    if not sheared and not uneven:
        geo = VolumeGeometry(origin, (sx, sy, float(dist[-1] - dist[0]) / (n - 1)),
                             direction)
        return ImageSeries(name, files, vol, geo, facts, tuple(notes))
    if float(gaps.max()) > _MAX_GAP_FACTOR * median:
        k = int(np.argmax(gaps))
        raise GeometryError(f"missing slices: a {gaps[k]:.1f} mm gap after slice {k + 1} of {n} (median gap "
                            f"{median:.2f} mm); refusing to interpolate across it", path)
    vol, new_n = _unshear_resample(vol, dist, u, v, (sx, sy), median)
    if sheared:
        try:
            tilt: float | None = _number(first.ds, "GantryDetectorTilt", math.nan, path)
        except InputError:
            tilt = math.nan
        shift = float(np.hypot(u, v).max())
        notes.append(f"gantry tilt{f' {tilt:+g} deg' if tilt is not None and math.isfinite(tilt) else ''}: slices shifted "
                     f"in-plane by up to {shift:.1f} mm onto an orthogonal grid")
    if uneven:
        notes.append(f"uneven slice gaps {gaps.min():.2f}-{gaps.max():.2f} mm: resampled to {median:.2f} mm "
                     f"({n} -> {new_n} slices)")
    geo = VolumeGeometry(origin, (sx, sy, median), direction)
    return ImageSeries(name, files, vol, geo, facts, tuple(notes))


def _unshear_resample(vol: npt.NDArray[np.float32], dist: npt.NDArray[np.float64], u: npt.NDArray[np.float64],
                      v: npt.NDArray[np.float64], spacing_yx: tuple[float, float],
                      step: float) -> tuple[npt.NDArray[np.float32], int]:
    """Resample a sheared, unevenly spaced stack onto an orthogonal grid.

    Slice k lies at distance ``dist[k]`` along the normal with its first pixel offset in-plane by
    (``u[k]`` along rows' direction, ``v[k]`` along columns'), mm. Each slice is first shifted (linear
    interpolation, SimpleITK) so its pixels line up with slice 0's in-plane grid; the output slices at
    ``dist[0] + j * step`` are then linear blends of the two neighbouring shifted slices. Hand-written
    because no library resamples a stack whose slices have individual positions. Returns the
    ``[Z', Y, X]`` volume and Z'.
    """
    import SimpleITK as sitk

    sy, sx = spacing_yx
    fill = float(vol.min())
    shifted = np.empty_like(vol)
    for k in range(vol.shape[0]):
        if abs(u[k]) < 1e-6 and abs(v[k]) < 1e-6:
            shifted[k] = vol[k]
            continue
        img = sitk.GetImageFromArray(vol[k])
        img.SetSpacing((sx, sy))
        # output pixel (c, r) of slice 0's grid sits at input physical point (c*sx - u, r*sy - v)
        t = sitk.TranslationTransform(2, (-float(u[k]), -float(v[k])))
        shifted[k] = sitk.GetArrayFromImage(sitk.Resample(img, img, t, sitk.sitkLinear, fill, sitk.sitkFloat32))
    span = float(dist[-1] - dist[0])
    n_out = int(math.floor(span / step + 1e-3)) + 1
    targets = dist[0] + np.arange(n_out) * step
    out = np.empty((n_out, vol.shape[1], vol.shape[2]), dtype=np.float32)
    for j, t in enumerate(targets):
        k = int(np.clip(np.searchsorted(dist, t, side="right") - 1, 0, len(dist) - 2))
        w = float(np.clip((t - dist[k]) / (dist[k + 1] - dist[k]), 0.0, 1.0))
        out[j] = (1.0 - w) * shifted[k] + w * shifted[k + 1]
    return out, n_out


def _is_projection(frame: _Frame) -> bool:
    modality = str(getattr(frame.ds, "Modality", "") or "").upper()
    return modality in _PROJECTION_MODALITIES or (frame.iop is None and frame.ipp is None
                                                  and "ImagerPixelSpacing" in frame.ds)


def iter_dicom_series(paths: Sequence[Path], *,
                      on_file: Callable[[Path], None] | None = None) -> Iterator[ImageSeries | Skipped]:
    """Group DICOM files into series and yield each as an :class:`ImageSeries` (or a Skipped).

    Headers are read first (pixel data deferred) for every file; then one group at a time is
    decoded, so memory holds one series' pixels at a time.
    """
    groups: OrderedDict[tuple[Any, ...], list[_Frame]] = OrderedDict()
    for p in paths:
        if on_file is not None:
            on_file(p)
        try:
            ds = _read_header(p)
            for fr in _frames_of(p, ds):
                groups.setdefault(fr.key, []).append(fr)
        except MedsynthError as exc:
            yield Skipped(p, exc.message)
        except Exception as exc:  # noqa: BLE001 - a malformed header must never stop the other files
            yield Skipped(p, f"malformed DICOM header ({type(exc).__name__}: {_one_line(exc)})")
    names = _group_names(groups)
    for key, frames in groups.items():
        name = names[key]
        # decode each file once; a file that fails is skipped, the rest of its series continues
        pixels: dict[tuple[Path, int], npt.NDArray[np.float32]] = {}
        good: list[_Frame] = []
        failed: set[Path] = set()
        for fr in frames:
            if fr.path in failed:
                continue
            if (fr.path, fr.index) not in pixels:
                try:
                    arr = _decode(fr.ds, fr.path)
                except MedsynthError as exc:
                    failed.add(fr.path)
                    yield Skipped(fr.path, exc.message)
                    continue
                for i in range(arr.shape[0]):
                    pixels[(fr.path, i)] = arr[i]
            good.append(fr)
        if not good:
            continue
        try:
            if _is_projection(good[0]):
                for fr in good:
                    nm = fr.path.name if len(good) == 1 or fr.index == 0 else f"{fr.path.name}#{fr.index + 1}"
                    yield _projection_series(fr, pixels[(fr.path, fr.index)], nm)
            else:
                yield _stack(good, pixels, name)
        except Exception as exc:  # noqa: BLE001 - one bad series must never stop the others
            files = {fr.path for fr in good}
            message = exc.message if isinstance(exc, MedsynthError) else \
                f"malformed DICOM header ({type(exc).__name__}: {_one_line(exc)})"
            where = exc.path if isinstance(exc, MedsynthError) else None
            reason = message if len(files) == 1 else f"series {name} ({len(files)} files): {message}"
            yield Skipped(where if len(files) == 1 and where else good[0].path.parent if len(files) > 1
                          else good[0].path, reason)
        finally:
            for fr in good:
                fr.ds = None  # release the headers' deferred pixel buffers


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "no detail")[:120]


def _group_names(groups: OrderedDict[tuple[Any, ...], list[_Frame]]) -> dict[tuple[Any, ...], str]:
    """Display names: the file name for one-file series, the folder name otherwise, numbered when a
    folder holds several series."""
    base: dict[tuple[Any, ...], str] = {}
    for key, frames in groups.items():
        files = list(OrderedDict.fromkeys(fr.path for fr in frames))
        base[key] = files[0].name if len(files) == 1 else files[0].parent.name
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    seen: dict[str, int] = {}
    out = {}
    for key, b in base.items():
        if counts[b] > 1:
            seen[b] = seen.get(b, 0) + 1
            out[key] = f"{b} (series {seen[b]} of {counts[b]})"
        else:
            out[key] = b
    return out
