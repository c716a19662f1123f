"""``generate --like``: a synthetic study shaped like a real one, without the patient.

A real series or study (a DICOM folder) is read with medsynth's reader. Only its technique and
geometry are kept, following the PS3.15 Annex E Basic Application Confidentiality Profile: the
attributes it keeps are not in the profile's table E.1-1 (modality, matrix, pixel spacing, slice
thickness and spacing, slice count, orientation and position, patient position, kVp, kernel, MR
sequence parameters, the series structure); every attribute the profile removes or replaces
(names, IDs, dates, UIDs, institution, descriptions, device identity, contrast agent text) is
never copied — the synthetic-study writer gives the output its own identity, dates and UIDs. Each
kept text value is also checked against the source's identifying values and dropped if it holds
one. The body part and contrast are inferred (from BodyPartExamined, descriptions and MR timing
— used, never copied) to choose the preset and condition; the matching pack samples the pixels,
which are resampled in-plane onto the source's matrix and spacing when they differ (and the report
says so). ``like_report.json`` lists every attribute kept, with its value and why, and every source
attribute that was not copied.

Arrays are ``[z, y, x]`` (slice, row, column); spacings in mm; physical units HU (CT) or scanner
units (MR).
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.writer import Provenance, SyntheticStudyWriter, WriterOptions
from medsynth.errors import ConfigError, InputError, UnsupportedInputError
from medsynth.outputs import atomic_write_json
from medsynth.presets import Modality, get_preset
from medsynth.sampling.runtime import DeviceName

REPORT_NAME = "like_report.json"
BASIC_PROFILE = "PS3.15 E.1-1 Basic Application Confidentiality Profile"

#: technique attributes kept (none is in table E.1-1): keyword -> (kind, why)
CT_TECHNIQUE: dict[str, tuple[str, str]] = {
    "KVP": ("number", "CT technique (peak kilovoltage); not in the Basic Profile table, retained"),
    "ConvolutionKernel": ("code", "CT reconstruction kernel; not in the Basic Profile table, retained"),
    "XRayTubeCurrent": ("int", "CT technique (tube current, mA); not in the Basic Profile table, retained"),
    "ExposureTime": ("int", "CT technique (exposure time, ms); not in the Basic Profile table, retained"),
    "ReconstructionDiameter": ("number", "CT reconstruction field of view (mm); geometry, retained"),
    "DataCollectionDiameter": ("number", "CT data collection diameter (mm); geometry, retained"),
}
MR_TECHNIQUE: dict[str, tuple[str, str]] = {
    "ScanningSequence": ("code", "MR sequence type; not in the Basic Profile table, retained"),
    "SequenceVariant": ("code", "MR sequence variant; not in the Basic Profile table, retained"),
    "ScanOptions": ("code", "MR scan options; not in the Basic Profile table, retained"),
    "MRAcquisitionType": ("code", "MR 2D/3D acquisition; not in the Basic Profile table, retained"),
    "SequenceName": ("code", "MR sequence name; not in the Basic Profile table, retained"),
    "RepetitionTime": ("number", "MR timing (TR, ms); not in the Basic Profile table, retained"),
    "EchoTime": ("number", "MR timing (TE, ms); not in the Basic Profile table, retained"),
    "InversionTime": ("number", "MR timing (TI, ms); not in the Basic Profile table, retained"),
    "FlipAngle": ("number", "MR flip angle (degrees); not in the Basic Profile table, retained"),
    "EchoTrainLength": ("int", "MR echo train length; not in the Basic Profile table, retained"),
    "TriggerTime": ("number", "MR cardiac trigger delay (ms); not in the Basic Profile table, retained"),
    "MagneticFieldStrength": ("number", "MR field strength (T); not in the Basic Profile table, retained"),
    "ImagingFrequency": ("number", "MR imaging frequency (MHz); not in the Basic Profile table, retained"),
    "NumberOfAverages": ("number", "MR number of averages; not in the Basic Profile table, retained"),
    "PixelBandwidth": ("number", "MR pixel bandwidth (Hz/pixel); not in the Basic Profile table, retained"),
}
PATIENT_POSITIONS = {"HFP", "HFS", "HFDR", "HFDL", "FFDR", "FFDL", "FFP", "FFS", "LFP", "LFS", "RFP", "RFS",
                     "AFDR", "AFDL", "PFDR", "PFDL"}
#: source attributes that identify a person or an event (Basic Profile): used to screen kept text
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber", "StudyID",
               "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
               "PerformingPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber", "StudyDate",
               "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "StudyDescription",
               "SeriesDescription", "ProtocolName", "RequestingPhysician", "PatientAddress", "PatientComments")
_CODE = re.compile(r"^[A-Za-z0-9_+\-. ]{1,16}$")


@dataclass(frozen=True)
class KeptAttribute:
    """One attribute the output takes from the source: DICOM keyword, JSON-ready value, why."""

    keyword: str
    value: Any
    reason: str


@dataclass(frozen=True)
class SeriesShape:
    """Technique and geometry of one source series (nothing identifying).

    ``geometry``: where the source voxels sit (LPS, mm; spacing = column, row, slice). ``matrix``:
    (rows, columns). ``technique``: attributes kept as they are written into every output file.
    """

    modality: Modality
    matrix: tuple[int, int]
    slices: int
    geometry: VolumeGeometry
    slice_thickness_mm: float | None
    patient_position: str | None
    technique: tuple[KeptAttribute, ...]
    preset: str
    condition: str
    inferred_from: str
    dropped: tuple[str, ...] = ()  # keywords present in the source and not copied
    transfer_syntax: str = "explicit"  # a medsynth --transfer-syntax value
    transfer_syntax_note: str = ""

    def kept(self) -> list[KeptAttribute]:
        """Every attribute kept, geometry included, with why."""
        g = self.geometry
        out = [
            KeptAttribute("Modality", self.modality.value, "what was imaged; not identifying"),
            KeptAttribute("Rows", self.matrix[0], "image matrix; geometry"),
            KeptAttribute("Columns", self.matrix[1], "image matrix; geometry"),
            KeptAttribute("PixelSpacing", [g.spacing[1], g.spacing[0]], "geometry (row, column spacing, mm)"),
            KeptAttribute("SpacingBetweenSlices", g.spacing[2], "geometry (slice spacing, mm)"),
            KeptAttribute("NumberOfSlices", self.slices, "series structure (instances in the series)"),
            KeptAttribute("ImageOrientationPatient", [*g.row_cosines, *g.column_cosines], "geometry (orientation)"),
            KeptAttribute("ImagePositionPatient", [list(g.slice_position(0)), list(g.slice_position(self.slices - 1))],
                          "geometry (first and last slice position, mm); table positions identify no one"),
        ]
        if self.slice_thickness_mm is not None:
            out.append(KeptAttribute("SliceThickness", self.slice_thickness_mm, "geometry (nominal thickness, mm)"))
        if self.patient_position is not None:
            out.append(KeptAttribute("PatientPosition", self.patient_position,
                                     "orientation of the patient on the table; defined term, not identifying"))
        out.append(KeptAttribute("TransferSyntaxUID", self.transfer_syntax,
                                 "file encoding (medsynth --transfer-syntax name); not identifying"
                                 + (f"; {self.transfer_syntax_note}" if self.transfer_syntax_note else "")))
        return out + list(self.technique)


@dataclass(frozen=True)
class LikeConfig:
    """One ``generate --like`` run. ``modality`` forces a preset (else inferred); ``model`` /
    ``model_dir`` choose the pack as in :class:`medsynth.generate.GenerateConfig`."""

    source: Path
    out_dir: Path
    modality: str | None = None
    condition: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    model: Path | None = None
    model_dir: Path | None = None
    device: DeviceName = "auto"
    threads: int | None = None
    batch_size: int = 8
    force: bool = False
    reproducible_uids: bool = False
    transfer_syntax: str | None = None  # None: the source's (when medsynth can write it)
    patients: int = 1  # synthetic patients, each with one study shaped like the source

    def __post_init__(self) -> None:
        if not 1 <= self.patients <= 10000:
            raise ConfigError(f"--patients must be between 1 and 10000, got {self.patients}")


@dataclass(frozen=True)
class LikeResult:
    """What a ``--like`` run wrote."""

    out_dir: Path
    report: Path
    manifest: Path
    preset: str
    model_id: str
    series: int
    slices: int
    files: int
    seed: int
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------
# Reading the source: technique and geometry only
# --------------------------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str:
    try:
        v = ds.get(keyword, "")
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            return "\\".join(str(x) for x in v)
        return str(v or "")
    except Exception:  # noqa: BLE001 - a malformed value is no fact
        return ""


_DESCRIPTIONS = {"StudyDescription", "SeriesDescription", "ProtocolName", "PatientComments"}


def identifying_values(ds: Dataset) -> tuple[set[str], set[str]]:
    """Upper-case identifying strings of a source header, split into parts of ≥ 3 characters:
    (parts of names, IDs, dates, places and devices — a kept value must not *contain* one; words of
    free-text descriptions — a kept value must not *equal* one, so "TSE" in a description does not
    ban the sequence name "tse2d1_16")."""
    strong: set[str] = set()
    words: set[str] = set()
    for kw in IDENTIFYING:
        for part in re.split(r"[\^\\ ,]+", _text(ds, kw)):
            if len(part.strip()) >= 3:
                (words if kw in _DESCRIPTIONS else strong).add(part.strip().upper())
    return strong, words


def _technique_value(ds: Dataset, keyword: str, kind: str) -> Any:
    """A technique value, validated (None when absent or unusable)."""
    if keyword not in ds:
        return None
    try:
        raw = ds[keyword].value
    except Exception:  # noqa: BLE001
        return None
    values = list(raw) if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
    values = [v for v in values if v not in (None, "")]
    if not values:
        return None
    if kind in ("number", "int"):
        try:
            nums = [float(v) for v in values]
        except (TypeError, ValueError):
            return None
        if not all(math.isfinite(x) and 0 <= x < 1e6 for x in nums):
            return None
        if kind == "int":
            return int(round(nums[0]))
        return nums[0] if len(nums) == 1 else nums
    codes = [str(v).strip() for v in values]
    if not all(_CODE.match(c) for c in codes):
        return None
    return codes[0] if len(codes) == 1 else codes


def _source_syntax(ds: Dataset) -> tuple[str, str]:
    """The source's transfer syntax as a medsynth ``--transfer-syntax`` name, and a note when it
    cannot be reproduced (JPEG baseline is 8-bit only: explicit VR little endian instead)."""
    from medsynth.dicom_io.transfer_syntax import TransferSyntax

    uid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    for ts in TransferSyntax:
        if ts.uid == uid:
            if ts is TransferSyntax.JPEG_BASELINE:
                return TransferSyntax.EXPLICIT.value, "the source's JPEG baseline (8-bit) cannot hold CT/MR pixels"
            return ts.value, ""
    return TransferSyntax.EXPLICIT.value, f"the source's transfer syntax {uid or '(none)'} is not one medsynth writes"


def _infer(modality: Modality, ds: Dataset, forced: str | None, condition: str | None) -> tuple[str, str, str]:
    """(preset, condition, what it was inferred from) for a source series."""
    hints = " ".join(_text(ds, k) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription",
                                            "ProtocolName")).lower()
    if forced is not None:
        preset = get_preset(forced)
        if preset.modality is not modality:
            raise ConfigError(f"--modality {forced} is {preset.modality.value}, but the source series is {modality.value}")
        name, why = preset.name, "--modality"
    elif modality is Modality.CT:
        name, why = "ct-abdomen", "no body part stated: abdomen assumed"
        for words, preset_name in ((("chest", "thorax", "lung"), "ct-chest"), (("pelvis", "hip"), "ct-pelvis"),
                                   (("abdomen", "abd", "liver", "pancrea", "kidney"), "ct-abdomen")):
            if any(w in hints for w in words):
                name, why = preset_name, "body part from BodyPartExamined/descriptions"
                break
    elif modality is Modality.MR:
        cardiac = any(w in hints for w in ("heart", "cardiac", "lge", "cine", "card")) or "TriggerTime" in ds
        brain = any(w in hints for w in ("brain", "head", "neuro", "skull"))
        if brain and not cardiac:
            name, why = "mr-brain", "body part from BodyPartExamined/descriptions"
        elif cardiac:
            name, why = "mr-cardiac", "cardiac: ECG trigger time or descriptions"
        else:
            raise UnsupportedInputError("cannot tell the body part of this MR series (no BodyPartExamined, "
                                        "description or ECG trigger); pass --modality mr-brain or mr-cardiac")
    else:
        raise UnsupportedInputError(f"--like supports CT and MR series, not {modality.value}")
    preset = get_preset(name)
    if condition is not None:
        return name, condition, why + "; condition from --condition"
    if modality is Modality.CT:
        return name, name.removeprefix("ct-"), why
    if name == "mr-cardiac":
        return name, "lge", why
    seq = _text(ds, "ScanningSequence").upper()
    tr = _technique_value(ds, "RepetitionTime", "number")
    ti = _technique_value(ds, "InversionTime", "number")
    tr_ms = float(tr) if isinstance(tr, float) else None
    if "IR" in seq and isinstance(ti, float) and ti > 1500:
        cond = "flair"
    elif tr_ms is not None and tr_ms < 1000:
        cond = "t1c" if _text(ds, "ContrastBolusAgent") else "t1"
    else:
        cond = "t2"
    if cond not in preset.conditions:
        cond = preset.default_condition
    return name, cond, why + "; contrast from ScanningSequence/TR/TI/contrast agent"


def read_source(source: Path, modality: str | None = None, condition: str | None = None) -> list[SeriesShape]:
    """The technique and geometry of every image series under ``source`` (a DICOM series or study
    folder), in the reader's order. Raises InputError when none can be read."""
    import pydicom

    from medsynth.dicom_io.reader import read_images

    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    result = read_images([source])
    if not result.series:
        why = result.skipped[0].reason if result.skipped else "no DICOM image files"
        raise InputError(f"no usable image series ({why})", source)
    shapes: list[SeriesShape] = []
    studies: set[str] = set()
    for s in result.series:
        ds = pydicom.dcmread(s.files[0], stop_before_pixels=True)
        studies |= {_text(ds, "StudyInstanceUID")} - {""}
        if len(studies) > 1:
            raise UnsupportedInputError("the folder holds more than one study; pass one series or study folder",
                                        source)
        try:
            mod = Modality(s.facts.modality)
        except ValueError:
            raise UnsupportedInputError(f"--like supports CT and MR series, not {s.facts.modality or 'no modality'}",
                                        source) from None
        if s.is_projection or mod not in (Modality.CT, Modality.MR):
            raise UnsupportedInputError(f"--like supports CT and MR series, not {mod.value}", source)
        preset, cond, why = _infer(mod, ds, modality, condition)
        table = CT_TECHNIQUE if mod is Modality.CT else MR_TECHNIQUE
        strong, words = identifying_values(ds)
        kept: list[KeptAttribute] = []
        for kw, (kind, reason) in table.items():
            value = _technique_value(ds, kw, kind)
            if value is None:
                continue
            texts = value if isinstance(value, list) else [value]
            if kind == "code" and any(str(t).upper() in words or any(b in str(t).upper() for b in strong)
                                      for t in texts):
                continue  # holds an identifying value of this header: never copied
            kept.append(KeptAttribute(kw, value, reason))
        options: Any = next((k.value for k in kept if k.keyword == "ScanOptions"), [])
        if not {"CG", "PPG"} & set(options if isinstance(options, list) else [options]):
            kept = [k for k in kept if k.keyword != "TriggerTime"]  # type 2C: only with cardiac/pulse gating
        thickness = _technique_value(ds, "SliceThickness", "number")
        position = _text(ds, "PatientPosition").strip().upper()
        kept_names = {k.keyword for k in kept} | {"Modality", "Rows", "Columns", "PixelSpacing", "SliceThickness",
                                                  "SpacingBetweenSlices", "ImageOrientationPatient",
                                                  "ImagePositionPatient", "PatientPosition"}
        dropped = tuple(sorted({el.keyword for el in ds if el.keyword and el.keyword not in kept_names
                                and el.tag.group not in (0x0002,) and not el.tag.is_private} ))
        z, rows, cols = s.shape
        ts_name, ts_note = _source_syntax(ds)
        shapes.append(SeriesShape(
            transfer_syntax=ts_name, transfer_syntax_note=ts_note,
            modality=mod, matrix=(rows, cols), slices=z, geometry=s.geometry,
            slice_thickness_mm=float(thickness) if isinstance(thickness, float) else None,
            patient_position=position if position in PATIENT_POSITIONS else None,
            technique=tuple(kept), preset=preset, condition=cond, inferred_from=why, dropped=dropped))
    if len({sh.modality for sh in shapes}) > 1:
        raise UnsupportedInputError("the study mixes modalities; pass one series folder", source)
    return shapes


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def resample_inplane(volume: npt.NDArray[np.floating], spacing: tuple[float, float], matrix: tuple[int, int],
                     target_spacing: tuple[float, float], background: float) -> npt.NDArray[np.float64]:
    """Resample each slice of ``volume`` [z, y, x] (``spacing`` = row, column mm) onto a
    ``matrix`` (rows, columns) grid at ``target_spacing`` (row, column mm), centres aligned:
    linear interpolation, Gaussian anti-aliasing when the target is coarser, ``background`` outside."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    vol = np.asarray(volume, dtype=np.float64)
    z, h, w = vol.shape
    rows, cols = matrix
    ratio = (target_spacing[0] / spacing[0], target_spacing[1] / spacing[1])
    sigma = (0.0, max(0.0, (ratio[0] - 1.0) / 2.0), max(0.0, (ratio[1] - 1.0) / 2.0))
    if sigma[1] > 0 or sigma[2] > 0:
        vol = gaussian_filter(vol, sigma=sigma, mode="nearest")
    ry = (np.arange(rows) - (rows - 1) / 2.0) * ratio[0] + (h - 1) / 2.0
    rx = (np.arange(cols) - (cols - 1) / 2.0) * ratio[1] + (w - 1) / 2.0
    gy, gx = np.meshgrid(ry, rx, indexing="ij")
    outside = (gy < -0.5) | (gy > h - 0.5) | (gx < -0.5) | (gx > w - 0.5)  # beyond the source's field of view
    out = np.empty((z, rows, cols), dtype=np.float64)
    for k in range(z):
        out[k] = map_coordinates(vol[k], [gy, gx], order=1, mode="nearest")
        out[k][outside] = background
    return out


# --------------------------------------------------------------------------------------------
# Writing: the synthetic-study writer plus the kept technique
# --------------------------------------------------------------------------------------------


def _dicom_value(value: Any) -> Any:
    """A kept value as pydicom takes it (floats as DS strings of ≤ 16 characters)."""
    from medsynth.dicom_io.iod import ds_string

    if isinstance(value, list):
        return [_dicom_value(v) for v in value]
    return ds_string(value) if isinstance(value, float) else value


class _ShapedWriter(SyntheticStudyWriter):
    """The synthetic-study writer; each series template also gets its source's kept technique
    (``shape`` is set before each ``begin_series``) and, optionally, a derivation text."""

    shape: SeriesShape | None = None
    derivation: str | None = None

    def _series_template(self, series: Any, pat: Any, stu: Any, study_uid: Any, windows: Any) -> Dataset:
        ds = super()._series_template(series, pat, stu, study_uid, windows)
        shape = self.shape
        if shape is not None:
            if shape.slice_thickness_mm is not None:
                ds.SliceThickness = _dicom_value(shape.slice_thickness_mm)
            if shape.patient_position is not None:
                ds.PatientPosition = shape.patient_position
            for k in shape.technique:
                setattr(ds, k.keyword, _dicom_value(k.value))
            if "TriggerTime" in ds and not any(k.keyword == "TriggerTime" for k in shape.technique):
                del ds.TriggerTime  # the preset's LGE trigger delay when the source states none
        if self.derivation is not None:
            ds.DerivationDescription = self.derivation[:1024]
            ds.ContributingEquipmentSequence[0].ContributionDescription = self.derivation[:1024]
        return ds


def _offset(on_slice: Callable[[int, int], None] | None, base: int, total: int) -> Callable[[int, int], None] | None:
    """Progress of one series' sampling as progress of the whole run."""
    if on_slice is None:
        return None

    def report(done: int, _n: int) -> None:
        on_slice(base + done, total)

    return report


def _slot_seed(seed: int, patient: int, index: int) -> int:
    """The sampling seed of source series ``index`` for synthetic patient ``patient``."""
    return int(np.random.SeedSequence(seed, spawn_key=(7, patient, index)).generate_state(1, dtype=np.uint64)[0] >> 1)


def generate_like(cfg: LikeConfig, on_slice: Callable[[int, int], None] | None = None) -> LikeResult:
    """Read ``cfg.source``, sample a synthetic series for each of its series with the matching pack,
    resample it onto the source geometry and write one synthetic study plus ``like_report.json``."""
    import secrets

    import SimpleITK as sitk

    from medsynth import __version__
    from medsynth.generate import GenerateConfig, generate, resolve_pack

    shapes = read_source(cfg.source, cfg.modality, cfg.condition)
    preset = get_preset(shapes[0].preset)
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    pack = resolve_pack(preset, cfg.model, cfg.model_dir)
    meta = pack.metadata
    notes: list[str] = []
    prov0 = Provenance(model_id=meta.model_id, model_sha256=pack.model_sha256, seed=seed,
                       condition=shapes[0].condition, software_version=__version__, pack_identity=pack.identity)
    syntax = cfg.transfer_syntax or shapes[0].transfer_syntax
    if cfg.transfer_syntax is None and shapes[0].transfer_syntax_note:
        notes.append(f"transfer syntax: {shapes[0].transfer_syntax_note}; written as {syntax}")
    options = WriterOptions(patients=cfg.patients, studies_per_patient=1, series_per_study=len(shapes),
                            seed=seed if cfg.reproducible_uids else None,
                            transfer_syntax=syntax)  # type: ignore[arg-type]  # parsed by WriterOptions
    total = cfg.patients * sum(s.slices for s in shapes)
    done = 0
    series_reports: list[dict[str, Any]] = []
    writer = _ShapedWriter(cfg.out_dir, preset, options, prov0, force=cfg.force)
    with writer:
        for patient, index in ((p, i) for p in range(cfg.patients) for i in range(len(shapes))):
            shape = shapes[index]
            s_preset = get_preset(shape.preset)
            with tempfile.TemporaryDirectory(prefix="medsynth-like-") as tmp:
                res = generate(GenerateConfig(
                    modality=s_preset.name, out_dir=Path(tmp) / "run", slices=shape.slices, condition=shape.condition,
                    seed=_slot_seed(seed, patient, index), sampler=cfg.sampler, steps=cfg.steps,
                    guidance=cfg.guidance, model=cfg.model, model_dir=cfg.model_dir, device=cfg.device,
                    threads=cfg.threads, batch_size=cfg.batch_size, format="nifti", reproducible_uids=True),
                    on_slice=_offset(on_slice, done, total))
                nifti = next(Path(tmp, "run").rglob("*.nii.gz"))
                img = sitk.ReadImage(str(nifti))
                synth = sitk.GetArrayFromImage(img).astype(np.float64)
                pack_spacing = (float(img.GetSpacing()[1]), float(img.GetSpacing()[0]))
            target_spacing = (shape.geometry.spacing[1], shape.geometry.spacing[0])
            resample = synth.shape[1:] != shape.matrix or not np.allclose(pack_spacing, target_spacing, rtol=1e-4)
            writer.provenance = replace(prov0, sampler=res.sampler, steps=res.steps, guidance=res.guidance,
                                        condition=shape.condition, seed=res.seed)
            writer.shape = shape
            writer.begin_series(shape.geometry, shape.matrix, patient=patient, study=0)
            for k in range(shape.slices):  # one slice resampled at a time: memory is one output slice
                pixels = synth[k] if not resample else resample_inplane(
                    synth[k:k + 1], pack_spacing, shape.matrix, target_spacing, meta.physical_range[0])[0]
                writer.write_slice(k, pixels)
            done += shape.slices
            if patient > 0:
                series_reports[index]["seeds"].append(res.seed)
                continue
            series_notes: list[str] = []
            if resample:
                series_notes.append(
                    f"series {index + 1}: the pack's {res.slices} slices of {img.GetSize()[1]}x{img.GetSize()[0]} at "
                    f"{pack_spacing[0]:g}x{pack_spacing[1]:g} mm were resampled in-plane (linear, centres aligned) "
                    f"onto {shape.matrix[0]}x{shape.matrix[1]} at {target_spacing[0]:g}x{target_spacing[1]:g} mm; "
                    f"slice k is synthetic slice k (placed at the source's {shape.geometry.spacing[2]:g} mm spacing)")
            notes.extend(series_notes)
            series_reports.append({
                "series": index + 1, "preset": shape.preset, "condition": shape.condition,
                "inferred_from": shape.inferred_from, "model_id": res.model_id, "sampler": res.sampler,
                "steps": res.steps, "guidance": res.guidance, "seeds": [res.seed],
                "kept": [asdict(k) for k in shape.kept()],
                "not_copied": list(shape.dropped), "notes": series_notes,
            })
        report = {
            "format_version": 1, "software": f"medsynth {__version__}", "profile": BASIC_PROFILE,
            "source": {"series": len(shapes), "instances": sum(s.slices for s in shapes)},
            "patients": cfg.patients,
            "identity": "patient, study, dates, UIDs and descriptions are synthetic (medsynth's writer); "
                        "no identifying value of the source was copied",
            "replaced": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                         "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                         "StudyDate", "SeriesDate", "ContentDate", "StudyTime", "SeriesTime", "StudyID",
                         "AccessionNumber", "StudyDescription", "SeriesDescription", "BodyPartExamined",
                         "Manufacturer", "ManufacturerModelName", "SoftwareVersions"],
            "series": series_reports, "notes": notes,
        }
        writer.manifest_extra["like"] = {"report": REPORT_NAME, "series": len(shapes),
                                         "kept": sorted({k.keyword for s in shapes for k in s.kept()})}
        manifest = writer.finish()
    report_path = Path(cfg.out_dir) / REPORT_NAME
    atomic_write_json(report_path, report)
    return LikeResult(out_dir=Path(cfg.out_dir), report=report_path, manifest=Path(cfg.out_dir) / "manifest.json",
                      preset=preset.name, model_id=meta.model_id, series=cfg.patients * len(shapes), slices=done,
                      files=len(manifest.get("files", [])), seed=seed, notes=tuple(notes))


