"""``generate --like``: real CT and MR DICOM series → synthetic studies of the same geometry and
technique, with nothing identifying copied (planted-PHI test), and a report of what was kept."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.like import read_source, resample_inplane


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def _like(source: Path, out: Path, *extra: str) -> dict:
    res = CliRunner().invoke(cli, ["generate", "--like", str(source), "--steps", "1", "--seed", "5", "--threads", "1",
                                   "-o", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize(("rel", "kept"), [("ct/upper_abdomen_dicom", {"KVP", "ConvolutionKernel"}),
                                           ("mr/cardiac_lge_dicom", {"RepetitionTime", "EchoTime", "InversionTime",
                                                                     "FlipAngle", "ScanningSequence"})])
def test_like_reproduces_geometry_and_technique(shared_data: Path, tmp_path: Path, rel: str, kept: set[str]) -> None:
    source = shared_data / rel
    summary = _like(source, tmp_path / "out")
    src = _sitk_series(source)
    files = sorted((tmp_path / "out").rglob("IM*"))
    assert summary["slices"] == len(files) == src.GetSize()[2]
    out = _sitk_series(files[0].parent)
    assert out.GetSize() == src.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin(), atol=1e-3)
    first = pydicom.dcmread(files[0])
    real = pydicom.dcmread(next(p for p in sorted(source.iterdir()) if p.is_file()), stop_before_pixels=True)
    assert first.SyntheticData == "YES" and first.Modality == real.Modality
    assert first.file_meta.TransferSyntaxUID == real.file_meta.TransferSyntaxUID  # CT: JPEG 2000 lossless
    assert float(first.SliceThickness) == pytest.approx(float(real.SliceThickness))
    for kw in kept:
        assert kw in first and str(first[kw].value) == str(real[kw].value), kw
    assert _dciodvfy_errors(files[0]) == []
    report = json.loads((tmp_path / "out" / "like_report.json").read_text())
    listed = {k["keyword"] for k in report["series"][0]["kept"]}
    assert kept | {"Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "SliceThickness"} <= listed
    assert all(k["reason"] for k in report["series"][0]["kept"])
    assert "PatientName" in report["series"][0]["not_copied"]
    assert any("resampled in-plane" in n for n in report["notes"])  # the packs are 64x64
    # the synthetic pixels really are the pack's: not the source's, and not constant
    px = first.pixel_array.astype(float)
    assert px.std() > 0


PLANTED = {
    "PatientName": "Quixotic^Zebulon", "PatientID": "PHI778899", "PatientBirthDate": "19390411",
    "StudyDate": "20011109", "SeriesDate": "20011109", "AcquisitionDate": "20011109", "ContentDate": "20011109",
    "InstitutionName": "Saint Hypothetical Infirmary", "ReferringPhysicianName": "Doctor^Wobblesworth",
    "AccessionNumber": "ACC5544332", "StudyID": "STU7766", "StationName": "SCANNERWOBBLE",
    "SeriesDescription": "Quixotic abdomen follow-up", "OperatorsName": "Tech^Flummox",
    "DeviceSerialNumber": "SN99887766",
}


def test_planted_phi_never_reaches_the_output(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "Quixotic_Zebulon"  # folder names often hold patient names
    src.mkdir()
    secrets: set[str] = set()
    for i, f in enumerate(sorted((shared_data / "ct" / "upper_abdomen_dicom").iterdir())[:6]):
        ds = pydicom.dcmread(f)
        for kw, value in PLANTED.items():
            setattr(ds, kw, value)
        ds.ConvolutionKernel = "ZEBULON"  # an identifying value in a kept attribute is dropped
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if str(ds.get(kw, "")):
                secrets.add(str(ds[kw].value))
        ds.save_as(src / f"Quixotic_{i}.dcm")
    before = {p: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    _like(src, out)
    assert {p: p.read_bytes() for p in src.iterdir()} == before  # the input is untouched
    needles = {v.upper() for v in PLANTED.values()} | {"QUIXOTIC", "ZEBULON", "WOBBLESWORTH", "HYPOTHETICAL",
                                                        "FLUMMOX"} | {s.upper() for s in secrets}
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "like_report.json" for p in written) and any(p.name == "manifest.json" for p in written)
    for p in written:
        text = p.read_bytes().decode("latin-1").upper()
        for needle in needles:
            assert needle not in text, (p.name, needle)
    report = json.loads((out / "like_report.json").read_text())
    assert "ConvolutionKernel" not in {k["keyword"] for k in report["series"][0]["kept"]}
    assert "KVP" in {k["keyword"] for k in report["series"][0]["kept"]}
    dates = {str(pydicom.dcmread(p).StudyDate) for p in written if p.name.startswith("IM")}
    assert dates and "20011109" not in dates


def test_like_keeps_the_series_structure_of_a_study(shared_data: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    files = sorted((shared_data / "ct" / "upper_abdomen_dicom").iterdir())[:4]
    for series, (kvp, kernel) in enumerate([(120, "Br38f"), (100, "B70f")]):
        uid = pydicom.uid.generate_uid()
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.KVP, ds.ConvolutionKernel = "1.2.3.4", uid, kvp, kernel
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(study / f"s{series}_{i}.dcm")
    _like(study, tmp_path / "out", "--transfer-syntax", "explicit")
    out = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("IM*"))]
    assert len(out) == 8 and len({d.StudyInstanceUID for d in out}) == 1 and len({d.SeriesInstanceUID for d in out}) == 2
    assert {(int(d.SeriesNumber), float(d.KVP), str(d.ConvolutionKernel)) for d in out} == {(1, 120.0, "Br38f"),
                                                                                           (2, 100.0, "B70f")}
    report = json.loads((tmp_path / "out" / "like_report.json").read_text())
    assert [s["series"] for s in report["series"]] == [1, 2]
    for f in study.glob("s1_*.dcm"):  # the second series now belongs to another study
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = "1.2.3.5"
        ds.save_as(f)
    res = CliRunner().invoke(cli, ["generate", "--like", str(study), "-o", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "more than one study" in res.output


def test_transfer_syntax_option_overrides_the_source(shared_data: Path, tmp_path: Path) -> None:
    _like(shared_data / "ct" / "upper_abdomen_dicom", tmp_path / "out", "--transfer-syntax", "explicit")
    ds = pydicom.dcmread(next((tmp_path / "out").rglob("IM*")))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_like_refuses_what_it_cannot_serve(shared_data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    res = CliRunner().invoke(cli, ["generate", "--like", str(empty), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no usable image series" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(cli, ["generate", "--like", str(shared_data / "ct" / "upper_abdomen_dicom"),
                                   "--modality", "mr-brain", "-o", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "is MR, but the source series is CT" in res.output
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())
    res = CliRunner().invoke(cli, ["generate", "-o", str(tmp_path / "o3")])
    assert res.exit_code != 0 and "--modality" in res.output


def test_read_source_and_resample(shared_data: Path) -> None:
    (shape,) = read_source(shared_data / "mr" / "cardiac_lge_dicom")
    assert shape.preset == "mr-cardiac" and shape.condition == "lge" and shape.slices == 44
    assert "TriggerTime" not in {k.keyword for k in shape.technique}  # 2C: the source has no ECG gating option
    vol = np.zeros((1, 8, 8))
    vol[0, 2:6, 2:6] = 100.0
    up = resample_inplane(vol, (4.0, 4.0), (32, 32), (1.0, 1.0), background=-5.0)
    assert up.shape == (1, 32, 32) and up[0, 16, 16] == pytest.approx(100.0) and up[0, 0, 0] == pytest.approx(0.0)
    far = resample_inplane(vol, (1.0, 1.0), (16, 16), (1.0, 1.0), background=-5.0)
    assert far[0, 0, 0] == -5.0 and far[0, 8, 8] == pytest.approx(100.0)


def test_kept_text_is_screened_against_the_header(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "mr" / "cardiac_lge_dicom").iterdir())[:3]

    def shape_with(**attrs: str) -> set[str]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            for k, v in attrs.items():
                setattr(ds, k, v)
            ds.save_as(folder / f"{i}.dcm")
        (shape,) = read_source(folder)
        return {k.keyword for k in shape.technique}

    # a description word inside a technique code is no reason to drop it ...
    assert "SequenceName" in shape_with(SeriesDescription="tfl lge heart")
    # ... a patient's name inside it is
    assert "SequenceName" not in shape_with(PatientName="Tfl3d1^Anna", SeriesDescription="lge heart")


def test_like_for_several_patients(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted((shared_data / "ct" / "upper_abdomen_dicom").iterdir())[:3]:
        shutil.copy(f, src / f.name)
    summary = _like(src, tmp_path / "out", "--patients", "2", "--transfer-syntax", "explicit")
    assert summary["series"] == 2 and summary["slices"] == 6
    out = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("IM*"))]
    assert len({d.PatientID for d in out}) == 2 and len({d.StudyInstanceUID for d in out}) == 2
    assert len({(d.Rows, d.Columns, str(d.PixelSpacing)) for d in out}) == 1
    by_patient: dict[str, list[np.ndarray]] = {}
    for d in sorted(out, key=lambda d: int(d.InstanceNumber)):
        by_patient.setdefault(str(d.PatientID), []).append(d.pixel_array)
    a, b = by_patient.values()
    assert not np.array_equal(a[0], b[0])  # each patient is sampled with its own seed
