"""Multi-series studies from one generated volume per contrast, as a scanner would send them.

A study of a CT preset is five series of the same generated volume: a localizer (an
antero-posterior projection of the volume, as a scout; ImageType ...\\LOCALIZER), the axial
soft-tissue series, a sharp-kernel (lung or bone) series of the same slices (edge enhanced,
another ConvolutionKernel and SeriesDescription, its own series UID) and coronal and sagittal
reformats (slabs of the volume, ImageType ...\\REFORMATTED, in the axial series' Frame of
Reference, positions and orientations consistent with it). An MR study has one series per
contrast its pack supports (mr-brain: T1, T2, FLAIR, T1c; mr-cardiac: LGE). A chest X-ray study
is one PA or AP image. Every series carries the study's header draw (:mod:`medsynth.catalogue`).

Pixels come from :func:`medsynth.generate.generate` itself (one seeded run per preset, condition
and slice count, each "patient" of that run one study's volume, NIfTI in a temporary folder), so
the sampling code exists once; this module only derives series from the volumes and writes them
with :class:`StudyWriter`, a :class:`~medsynth.dicom_io.writer.SyntheticStudyWriter` whose
patients and studies are the cohort's (the same PatientID across CT, MR and X-ray folders).

Volumes are ``[z, y, x]`` float arrays in physical units (HU for CT) with an axial
:class:`~medsynth.dicom_io.geometry.VolumeGeometry` (LPS, mm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medsynth.catalogue import StudyHeader, mr_series_description
from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.identity import PatientIdentity, StudyIdentity
from medsynth.dicom_io.iod import ds_string
from medsynth.dicom_io.provenance import code_item
from medsynth.dicom_io.writer import Provenance, SyntheticStudyWriter, WriterOptions
from medsynth.presets import CodedConcept, Modality, Preset

AP_VIEW = CodedConcept("272479007", "SCT", "antero-posterior")
PA_VIEW = CodedConcept("399348003", "SCT", "postero-anterior")
#: CT series per study (localizer, axial, sharp kernel, coronal, sagittal)
CT_SERIES = 5
#: a reformat is cut in about this many slabs across the volume
REFORMAT_SLABS = 16
#: localizer and reformat images have at least this many rows (interpolated along z; the JPEG 2000
#: encoder needs 32 pixels each way, and a PACS shows a 16-slice reformat as a thin strip otherwise)
MIN_ROWS = 32


class SeriesKind(str, Enum):
    """What a series of a study is."""

    LOCALIZER = "localizer"
    AXIAL = "axial"
    SHARP = "sharp"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"
    MR = "mr"
    DX = "dx"


@dataclass(frozen=True)
class DerivedSeries:
    """One series to write: its images ``[n, rows, cols]`` (physical units), their geometry, the
    description and the header attributes it adds to the study's (keyword -> value; None deletes)."""

    kind: SeriesKind
    images: npt.NDArray[np.float64]
    geometry: VolumeGeometry
    description: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    condition: str | None = None


# ------------------------------------------------------------------------------ CT derivations


def _fill_rows(images: npt.NDArray[np.float64], sz: float) -> tuple[npt.NDArray[np.float64], float, float]:
    """Images ``[k, n, w]`` whose rows are slices ``sz`` mm apart (row 0 = the top slice) →
    ``[k, m, w]`` with m = max(n, MIN_ROWS) rows covering the same extent (n·sz mm, linear
    interpolation between slice centres), their row spacing, and the z (mm) of the first row's
    centre relative to the top slice's centre."""
    n = images.shape[1]
    if n >= MIN_ROWS:
        return images, sz, 0.0
    m = MIN_ROWS
    row_sp = n * sz / m
    f = np.clip((np.arange(m) + 0.5) * row_sp / sz - 0.5, 0.0, n - 1.0)
    i0 = np.floor(f).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (f - i0)[np.newaxis, :, np.newaxis]
    out = images[:, i0] * (1.0 - w) + images[:, i1] * w
    return out, row_sp, sz / 2.0 - row_sp / 2.0


def localizer(volume: npt.NDArray[np.floating], geometry: VolumeGeometry) -> tuple[npt.NDArray[np.float64], VolumeGeometry]:
    """An AP projection of an axial volume (mean along y, HU), as one coronal image ``[1, z, x]``
    with the head at the top (at least MIN_ROWS rows, see :func:`_fill_rows`); placed at the
    volume's y centre."""
    n, rows, _ = volume.shape
    sx, sy, sz = geometry.spacing
    img, row_sp, dz = _fill_rows(np.asarray(volume, dtype=np.float64).mean(axis=1)[::-1][np.newaxis], sz)
    ox, oy, oz = geometry.origin
    geom = VolumeGeometry(origin=(ox, oy + (rows - 1) * sy / 2.0, oz + (n - 1) * sz + dz),
                          spacing=(sx, row_sp, sy * rows), direction=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    return img, geom


def sharp_kernel(volume: npt.NDArray[np.floating], amount: float = 1.5, sigma_px: float = 1.0) -> npt.NDArray[np.float64]:
    """Edge-enhanced slices (unsharp mask in each slice: v + amount·(v − G_σ v)), as a sharp
    reconstruction kernel looks: more edge contrast, more noise."""
    from scipy.ndimage import gaussian_filter

    v = np.asarray(volume, dtype=np.float64)
    return v + amount * (v - gaussian_filter(v, sigma=(0.0, sigma_px, sigma_px)))


def _slabs(n: int) -> tuple[int, int]:
    step = max(1, int(np.ceil(n / REFORMAT_SLABS)))
    return step, n // step


def coronal(volume: npt.NDArray[np.floating], geometry: VolumeGeometry) -> tuple[npt.NDArray[np.float64], VolumeGeometry]:
    """Coronal slabs ``[k, z, x]`` (mean of ``step`` rows each, head at the top), stepping posterior
    (+y); slab thickness and spacing ``step × row spacing``."""
    n, rows, _ = volume.shape
    step, count = _slabs(rows)
    v = np.asarray(volume, dtype=np.float64)[:, : step * count]
    slabs = v.reshape(n, count, step, v.shape[2]).mean(axis=2)  # [z, k, x]
    sx, sy, sz = geometry.spacing
    images, row_sp, dz = _fill_rows(np.transpose(slabs, (1, 0, 2))[:, ::-1], sz)
    ox, oy, oz = geometry.origin
    geom = VolumeGeometry(origin=(ox, oy + (step - 1) * sy / 2.0, oz + (n - 1) * sz + dz), spacing=(sx, row_sp, step * sy),
                          direction=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    return images, geom


def sagittal(volume: npt.NDArray[np.floating], geometry: VolumeGeometry) -> tuple[npt.NDArray[np.float64], VolumeGeometry]:
    """Sagittal slabs ``[k, z, y]`` (mean of ``step`` columns, head at the top, anterior on the left),
    from the patient's left to right (−x), slab spacing ``step × column spacing``."""
    n, _, cols = volume.shape
    step, count = _slabs(cols)
    v = np.asarray(volume, dtype=np.float64)[:, :, cols - step * count:][:, :, ::-1]  # x descending
    slabs = v.reshape(n, v.shape[1], count, step).mean(axis=3)  # [z, y, k]
    sx, sy, sz = geometry.spacing
    images, row_sp, dz = _fill_rows(np.transpose(slabs, (2, 0, 1))[:, ::-1], sz)
    ox, oy, oz = geometry.origin
    x0 = ox + (cols - 1) * sx - (step - 1) * sx / 2.0
    geom = VolumeGeometry(origin=(x0, oy, oz + (n - 1) * sz + dz), spacing=(sy, row_sp, step * sx),
                          direction=(0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    return images, geom


def _ct_description(style: str, plane: str, region: str, kernel: str, thickness: float) -> str:
    thk = f"{thickness:.1f}"
    word = {"axial": "", "coronal": "Cor ", "sagittal": "Sag "}[plane]
    if style == "ge":
        return f"{word}{thk}mm {kernel.title()}".strip()
    if style == "philips":
        return f"{word}{region.title()} {kernel} {thk}mm".strip()
    if style == "canon":
        return f"{word}{region.title()} {thk} {kernel}".strip()
    return f"{word}{region.title()} {thk} {kernel}".strip()


def ct_series(volume: npt.NDArray[np.floating], geometry: VolumeGeometry, header: StudyHeader,
              region: str) -> list[DerivedSeries]:
    """The five series of a CT study of one axial volume (HU), with kernels and technique of ``header``."""
    sc = header.station.scanner
    t = header.technique
    sharp_name = str(t.get("sharp", "bone"))
    soft, sharp = sc.kernels.get("soft", "STANDARD"), sc.kernels.get(sharp_name, sharp_name.upper())
    tech = {"KVP": ds_string(t["kvp"]), "XRayTubeCurrent": int(t["ma"]), "ExposureTime": int(t["exposure_ms"]),
            "Exposure": int(t["mas"]), "CTDIvol": float(t["ctdivol"]), "SpiralPitchFactor": float(t["pitch"]),
            "RevolutionTime": float(t["rotation_s"]), "GantryDetectorTilt": "0", "RotationDirection": "CW",
            "DataCollectionDiameter": "500", "ReconstructionDiameter": ds_string(geometry.spacing[0] * volume.shape[2])}
    thk = geometry.spacing[2]
    vol = np.asarray(volume, dtype=np.float64)
    loc_img, loc_geom = localizer(vol, geometry)
    cor_img, cor_geom = coronal(vol, geometry)
    sag_img, sag_geom = sagittal(vol, geometry)
    derived = ("DERIVED", "SECONDARY", "REFORMATTED")
    return [
        DerivedSeries(SeriesKind.LOCALIZER, loc_img, loc_geom, sc.localizer or "Localizer",
                      {"ImageType": ["DERIVED", "SECONDARY", "LOCALIZER"], "KVP": "120", "XRayTubeCurrent": 35,
                       "SliceThickness": "", "SpacingBetweenSlices": None}),
        DerivedSeries(SeriesKind.AXIAL, vol, geometry, _ct_description(sc.style, "axial", region, soft, thk),
                      {**tech, "ConvolutionKernel": soft}),
        DerivedSeries(SeriesKind.SHARP, sharp_kernel(vol), geometry,
                      _ct_description(sc.style, "axial", region, sharp, thk),
                      {**tech, "ConvolutionKernel": sharp}),
        DerivedSeries(SeriesKind.CORONAL, cor_img, cor_geom,
                      _ct_description(sc.style, "coronal", region, soft, cor_geom.spacing[2]),
                      {**tech, "ConvolutionKernel": soft, "ImageType": list(derived)}),
        DerivedSeries(SeriesKind.SAGITTAL, sag_img, sag_geom,
                      _ct_description(sc.style, "sagittal", region, soft, sag_geom.spacing[2]),
                      {**tech, "ConvolutionKernel": soft, "ImageType": list(derived)}),
    ]


def mr_series(volume: npt.NDArray[np.floating], geometry: VolumeGeometry, header: StudyHeader,
              contrast: str) -> DerivedSeries:
    """One MR series of ``contrast``: a vendor-style description and the scanner's field strength."""
    sc = header.station.scanner
    attrs: dict[str, Any] = {}
    if sc.field_t is not None:
        attrs["MagneticFieldStrength"] = ds_string(sc.field_t)
        attrs["ImagingFrequency"] = ds_string(round(42.577478 * sc.field_t, 6))
    desc = mr_series_description(sc.style, contrast)
    attrs["ProtocolName"] = desc
    return DerivedSeries(SeriesKind.MR, np.asarray(volume, dtype=np.float64), geometry, desc, attrs, condition=contrast)


def dx_series(image: npt.NDArray[np.floating], geometry: VolumeGeometry, header: StudyHeader,
              description: str) -> DerivedSeries:
    """The chest X-ray image in the study's view (PA or AP) with its technique."""
    t = header.technique
    view = header.view or "PA"
    attrs: dict[str, Any] = {
        "ViewPosition": view, "ViewCodeSequence": Sequence([code_item(AP_VIEW if view == "AP" else PA_VIEW)]),
        "KVP": ds_string(t.get("kvp", 120)), "ExposureInuAs": int(round(float(t.get("mas", 2.0)) * 1000)),
        "DistanceSourceToDetector": ds_string(t.get("sid_mm", 1800)), "ProtocolName": description,
    }
    return DerivedSeries(SeriesKind.DX, np.asarray(image, dtype=np.float64), geometry, description, attrs)


# ------------------------------------------------------------------------------ the writer


class StudyWriter(SyntheticStudyWriter):
    """A synthetic-study writer whose patients and studies are given (a cohort's): ``people``
    maps the global patient index to its identity, ``studies`` maps (patient, study index) to the
    study's identity and StudyInstanceUID, so one patient keeps one PatientID and a study one UID
    whichever folder (preset) its series are written in. :meth:`write_series` writes one
    :class:`DerivedSeries` with the study's header attributes."""

    def __init__(self, out_dir: str | Path, preset: Preset, options: WriterOptions, provenance: Provenance,
                 people: Mapping[int, PatientIdentity], studies: Mapping[tuple[int, int], tuple[StudyIdentity, UID]],
                 force: bool = False) -> None:
        self._people = people
        self._given_studies = studies
        self._attrs: dict[str, Any] = {}
        super().__init__(out_dir, preset, options, provenance, force=force)

    def _patient(self, index: int) -> tuple[PatientIdentity, int]:
        if index not in self._patients:
            self._patients[index] = (self._people[index], self._uids.uid("patient", index), index)
        ident, _, dir_idx = self._patients[index]
        return ident, dir_idx

    def _study(self, patient: int, index: int) -> tuple[StudyIdentity, UID, int]:
        key = (patient, index)
        if key not in self._studies:
            ident, uid = self._given_studies[key]
            self._studies[key] = (ident, uid, index, 0)
        ident, uid, dir_idx, _ = self._studies[key]
        return ident, uid, dir_idx

    def _series_template(self, series: Any, pat: Any, stu: Any, study_uid: Any, windows: Any) -> Dataset:
        ds = super()._series_template(series, pat, stu, study_uid, windows)
        for keyword, value in self._attrs.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return ds

    def write_series(self, patient: int, study: int, header: StudyHeader, series: DerivedSeries,
                     provenance: Provenance) -> int:
        """Write every image of ``series`` as a new series of the study; returns the files written."""
        self.provenance = provenance
        self._attrs = {**header.equipment(), "StudyDescription": f"{header.study_description} (SYNTHETIC)"[:64],
                       "ProtocolName": header.study_description, **series.attributes}
        imgs = series.images
        self.begin_series(series.geometry, (imgs.shape[1], imgs.shape[2]), patient=patient, study=study,
                          description=series.description[:64])
        for k in range(imgs.shape[0]):
            self.write_slice(k, imgs[k])
        self._attrs = {}
        return int(imgs.shape[0])


def modality_of(preset: Preset) -> str:
    """CT, MR or DX: which catalogue a preset's studies draw from."""
    return {Modality.CT: "CT", Modality.MR: "MR", Modality.DX: "DX"}[preset.modality]
