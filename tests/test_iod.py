"""Headers agree with pixels: anatomy per condition, MR sequences per contrast, DX sign, dates,
table positions, ImageType, our ImplementationClassUID, optional .dcm names (real pixels, dciodvfy)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.identity import age_on
from medsynth.dicom_io.iod import ANATOMY, MR_SEQUENCES, table_centre
from medsynth.dicom_io.reader import read_volume
from medsynth.dicom_io.uids import IMPLEMENTATION_CLASS_UID
from medsynth.dicom_io.writer import Provenance, WriterOptions, write_volume
from medsynth.presets import get_preset
from test_writer import dciodvfy


def _real_slab(shared_data: Path, rel: str, preset: str, n: int = 2) -> tuple[np.ndarray, VolumeGeometry]:
    """``n`` real slices, cropped to the preset's matrix, at the region's table position."""
    p = get_preset(preset)
    vol = read_volume(shared_data / rel).voxels
    z0, (h, w) = vol.shape[0] // 2, p.matrix
    y0, x0 = (vol.shape[1] - h) // 2, (vol.shape[2] - w) // 2
    slab = np.rint(vol[z0:z0 + n, y0:y0 + h, x0:x0 + w])
    return slab, VolumeGeometry.axial(p.matrix, p.pixel_spacing_mm, p.slice_thickness_mm or 1.0, n)


def _first(out: Path, manifest: dict) -> pydicom.Dataset:
    return pydicom.dcmread(out / manifest["files"][0]["path"])


def _generated(preset: str, condition: str) -> Provenance:
    return Provenance(model_id="pack", model_sha256="ab" * 32, seed=1, condition=condition)


@pytest.mark.parametrize("condition", ["pelvis", "abdomen", "chest"])
def test_ct_body_part_follows_the_condition(shared_data: Path, tmp_path: Path, condition: str) -> None:
    vol, geom = _real_slab(shared_data, "ct/abdomen_pelvis_totalseg.nii.gz", "ct-pelvis")
    m = write_volume(vol, geom, get_preset("ct-pelvis"), tmp_path, WriterOptions(seed=1), _generated("ct-pelvis", condition))
    ds = _first(tmp_path, m)
    anatomy = ANATOMY[condition]
    assert ds.BodyPartExamined == anatomy.body_part
    assert ds.AnatomicRegionSequence[0].CodeValue == anatomy.region.value
    assert ds.StudyDescription == f"CT {condition.upper()} (SYNTHETIC)"
    assert condition in ds.SeriesDescription and condition.upper() in ds.ProtocolName
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert dciodvfy(Path(ds.filename))[0] == []
    assert table_centre(get_preset("ct-pelvis"), condition)[2] == anatomy.centre_z_mm
    assert len({ANATOMY[c].centre_z_mm for c in ("pelvis", "abdomen", "chest")}) == 3


def test_cardiac_lge_is_gated_inversion_recovery(shared_data: Path, tmp_path: Path) -> None:
    from medsynth.dicom_io.reader import read_images

    series = read_images([shared_data / "mr/cardiac_lge_dicom"]).series[0]
    p = get_preset("mr-cardiac")
    slab = series.voxels[20:22, :p.matrix[0], :p.matrix[1]]
    geom = VolumeGeometry.axial(p.matrix, p.pixel_spacing_mm, p.slice_thickness_mm, 2)
    m = write_volume(slab, geom, p, tmp_path, WriterOptions(seed=1), _generated("mr-cardiac", "lge"))
    ds = _first(tmp_path, m)
    assert list(ds.ScanningSequence) == ["GR", "IR"] and ds.ScanOptions == "CG" and float(ds.TriggerTime) == 400.0
    assert ds.MRAcquisitionType == "3D" and ds.BodyPartExamined == "HEART" and ds.ContrastBolusAgent
    assert dciodvfy(Path(ds.filename))[0] == []


@pytest.mark.parametrize("condition", ["t1", "t2", "flair", "t1c"])
def test_mr_sequence_attributes_per_contrast(shared_data: Path, tmp_path: Path, condition: str) -> None:
    rel = {"t1": "brain_stroke_t1", "t2": "brain_stroke_t2", "flair": "brain_stroke_flair",
           "t1c": "brain_stroke_t1"}[condition]
    vol, geom = _real_slab(shared_data, f"mr/{rel}.nii.gz", "mr-brain")
    m = write_volume(vol * 16, geom, get_preset("mr-brain"), tmp_path, WriterOptions(seed=1),
                     _generated("mr-brain", condition))
    ds = _first(tmp_path, m)
    seq = MR_SEQUENCES[condition]
    scanning = [ds.ScanningSequence] if isinstance(ds.ScanningSequence, str) else list(ds.ScanningSequence)
    assert scanning == list(seq.scanning_sequence) and "RM" not in scanning
    assert float(ds.RepetitionTime) == seq.repetition_time and float(ds.EchoTime) == seq.echo_time
    assert ("InversionTime" in ds) == (condition == "flair")
    assert ("ContrastBolusAgent" in ds) == (condition == "t1c")
    assert seq.label in ds.SeriesDescription and seq.label.upper() in ds.ProtocolName and ds.SequenceName
    assert ds.BodyPartExamined == "BRAIN"
    assert dciodvfy(Path(ds.filename))[0] == []
    # TR/TE/TI order the contrasts plausibly
    assert MR_SEQUENCES["t2"].echo_time > MR_SEQUENCES["t1"].echo_time
    assert MR_SEQUENCES["flair"].inversion_time and MR_SEQUENCES["flair"].repetition_time > 5000


def test_real_mr_claims_no_sequence(shared_data: Path, tmp_path: Path) -> None:
    vol, geom = _real_slab(shared_data, "mr/brain_stroke_flair.nii.gz", "mr-brain")
    m = write_volume(vol * 16, geom, get_preset("mr-brain"), tmp_path, WriterOptions(seed=1), Provenance())
    ds = _first(tmp_path, m)
    assert ds.ScanningSequence == "RM" and ds.RepetitionTime in ("", None) and "ProtocolName" not in ds
    assert ds.SeriesDescription.startswith("De-identified") and "SYNTHETIC" not in ds.StudyDescription


def test_dx_sign_oblique_image_type_implementation_uid_and_dcm_names(shared_data: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = sorted((shared_data / "xr/nih_cxr14_256/normal").glob("*.png"))[0]
    grey = np.asarray(Image.open(png).convert("L").resize((32, 32)), dtype=np.float64) * 16
    m = write_volume(grey, VolumeGeometry.axial((32, 32), (10.0, 10.0), 1.0, 1), get_preset("xr-chest"),
                     tmp_path / "dx", WriterOptions(seed=1), _generated("xr-chest", "normal"))
    ds = _first(tmp_path / "dx", m)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.PixelIntensityRelationshipSign == -1
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert pydicom.dcmread(tmp_path / "dx" / "DICOMDIR").file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert dciodvfy(Path(ds.filename))[0] == []

    c, s = np.cos(np.pi / 3), np.sin(np.pi / 3)  # 60 degrees off axial
    rot = (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)
    oblique = VolumeGeometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0), direction=rot)
    m = write_volume(np.zeros((2, 8, 8)), oblique, get_preset("ct-chest"), tmp_path / "ob",
                     WriterOptions(seed=1, dcm_names=True))
    ds = _first(tmp_path / "ob", m)
    assert list(ds.ImageType)[2] == "OTHER"
    assert all(f["path"].endswith(".dcm") for f in m["files"]) and m["dicomdir"] is None
    assert not (tmp_path / "ob" / "DICOMDIR").exists()
    assert dciodvfy(Path(ds.filename))[0] == []


def test_ages_agree_with_dates_and_series_of_a_study_differ(tmp_path: Path) -> None:
    m = write_volume(np.zeros((1, 8, 8)), VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 1), get_preset("ct-chest"),
                     tmp_path, WriterOptions(patients=17, studies_per_patient=2, series_per_study=2, seed=7))
    by_patient: dict[str, list[pydicom.Dataset]] = {}
    for f in m["files"]:
        ds = pydicom.dcmread(tmp_path / f["path"])
        by_patient.setdefault(ds.PatientID, []).append(ds)
        birth, study = (dt.datetime.strptime(v, "%Y%m%d").date() for v in (ds.PatientBirthDate, ds.StudyDate))
        assert ds.PatientAge == f"{age_on(birth, study):03d}Y"
    assert len(by_patient) == 17
    for dsets in by_patient.values():
        first = {d.StudyInstanceUID: d.StudyDate + d.StudyTime for d in dsets if d.StudyID == "1"}
        second = {d.StudyInstanceUID: d.StudyDate + d.StudyTime for d in dsets if d.StudyID == "2"}
        assert max(first.values()) <= min(second.values())  # the second study never predates the first
        for sid in ("1", "2"):
            study = [d for d in dsets if d.StudyID == sid]
            assert len({d.FrameOfReferenceUID for d in study}) == 1
            assert sorted(d.SeriesDescription[-2:] for d in study) == ["#1", "#2"]
    assert json.loads((tmp_path / "manifest.json").read_text())["patients"] == 17
