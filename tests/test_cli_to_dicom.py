"""`medsynth to-dicom` through click's CliRunner: real CT round trip, privacy, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medsynth.cli.main import cli
from test_writer import dciodvfy


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["to-dicom", *args])
    return result.exit_code, result.stdout, result.stderr


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert names, folder
    reader.SetFileNames(names)
    return reader.Execute()


def series_dirs(out: Path) -> list[Path]:
    return sorted({p.parent for p in out.rglob("IM*")})


def test_real_ct_round_trips_through_simpleitk(tmp_path: Path, shared_data: Path) -> None:
    src_path = shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz"
    out = tmp_path / "out"
    code, stdout, _ = run(str(src_path), "--modality", "ct-pelvis", "-o", str(out), "--seed", "1", "--json")
    assert code == 0, stdout
    summary = json.loads(stdout)
    src = sitk.ReadImage(str(src_path))
    assert summary["files"] == src.GetSize()[2] and summary["series"] == 1
    assert (out / "DICOMDIR").is_file() and (out / "manifest.json").is_file()

    (folder,) = series_dirs(out)
    back = read_series(folder)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-3)
    a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.astype(np.int64), b.astype(np.int64))  # HU exactly
    ds = pydicom.dcmread(next(folder.iterdir()))
    assert ds.Modality == "CT" and ds.BitsStored == 16  # -1207..3382 HU
    # a real scan is de-identified real data, never called synthetic
    assert ds.SyntheticData == "NO"
    purpose = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodeMeaning) == ("109104", "De-identifying Equipment")
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]  # no option claimed
    assert "RecognizableVisualFeatures" not in ds and "BurnedInAnnotation" not in ds  # not checked: no claim
    assert "synthes" not in str(ds.DerivationDescription).lower()
    errors, _ = dciodvfy(Path(ds.filename))
    assert errors == [], errors


def test_left_handed_volume_is_written_right_handed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # slices step towards the feet
    src_path = tmp_path / "lh.nii.gz"
    sitk.WriteImage(img, str(src_path))
    src = sitk.ReadImage(str(src_path))
    out = tmp_path / "out"
    code, stdout, _ = run(str(src_path), "-m", "ct-chest", "-o", str(out))
    assert code == 0, stdout
    back = read_series(series_dirs(out)[0])
    # the same voxels at the same physical places, stored right-handed (z flipped)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src)[::-1])
    np.testing.assert_allclose(back.GetOrigin(), src.TransformIndexToPhysicalPoint((0, 0, 4)), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), atol=1e-3)


def test_npy_input_uses_spacing_option(tmp_path: Path) -> None:
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) * 10 - 200
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "out"
    code, stdout, _ = run(str(tmp_path / "v.npy"), "-m", "ct-abdomen", "-o", str(out),
                          "--spacing", "0.5,0.75,2", "--patients", "2", "--json")
    assert code == 0, stdout
    assert json.loads(stdout)["files"] == 6 and json.loads(stdout)["patients"] == 2
    back = read_series(series_dirs(out)[0])
    np.testing.assert_allclose(back.GetSpacing(), (0.5, 0.75, 2.0), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), vol)
    np.save(tmp_path / "s.npy", vol[0])  # 2D = one slice
    code, stdout, _ = run(str(tmp_path / "s.npy"), "-m", "xr-chest", "-o", str(tmp_path / "x"),
                          "--spacing", "0.2,0.2,1", "--json")
    assert code == 0 and json.loads(stdout)["files"] == 1


@pytest.mark.parametrize(("preset", "synthetic"), [("mr-brain", False), ("xr-chest", False), ("mr-brain", True),
                                                   ("ct-chest", True)])
def test_origin_markers_real_and_synthetic(tmp_path: Path, preset: str, synthetic: bool) -> None:
    vol = np.random.default_rng(0).integers(0, 3000, size=(2, 12, 10)).astype(np.int16)
    if preset == "xr-chest":
        vol = vol[:1]
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "out"
    code, stdout, _ = run(str(tmp_path / "v.npy"), "-m", preset, "--spacing", "1,1,2", "-o", str(out),
                          *(["--synthetic"] if synthetic else []))
    assert code == 0, stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["origin"] == ("synthetic-input" if synthetic else "real")
    ds = pydicom.dcmread(out / manifest["files"][0]["path"])
    purpose = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue
    errors, _ = dciodvfy(out / manifest["files"][0]["path"])
    assert errors == [], errors
    if synthetic:
        assert (ds.SyntheticData, purpose, ds.RecognizableVisualFeatures, ds.BurnedInAnnotation) == (
            "YES", "109100", "NO", "NO")
        return
    assert (ds.SyntheticData, purpose) == ("NO", "109104")
    if preset == "mr-brain":  # a real head scan: a face can be reconstructed
        assert ds.RecognizableVisualFeatures == "YES"
    else:  # DX: type 1, and a real radiograph's pixels were not checked for burned-in text
        assert ds.BurnedInAnnotation == "YES" and "RecognizableVisualFeatures" not in ds
    assert manifest["provenance"]["source_sha256"] not in (out / manifest["files"][0]["path"]).read_bytes().decode(
        "latin-1")


# ------------------------------------------------------------------------------------------------
# Privacy: text planted anywhere in the input never reaches an output byte
# ------------------------------------------------------------------------------------------------

PHI = {
    "descrip": "DOE^JANE descrip MRN4471",
    "aux_file": "AUXJDOE4471",
    "intent_name": "JDOEINTENT",
    "db_name": "JDOEDBNAME",
    "extension": "Jane Doe born 1961-02-03 MRN 4471 extension",
    "nrrd_content": "NRRDCONTENTJDOE",
    "nrrd_kv": "NRRDKEYVALUEJDOE",
    "nrrd_comment": "NRRDCOMMENTJDOE",
    "mha_kv": "MHAKEYVALUEJDOE",
    "file_name": "SMITHJOHN19610203",
}


def _plant_nifti(folder: Path, data: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]))
    hdr = img.header
    hdr["descrip"] = PHI["descrip"].encode()
    hdr["aux_file"] = PHI["aux_file"].encode()
    hdr["intent_name"] = PHI["intent_name"].encode()
    hdr["db_name"] = PHI["db_name"].encode()
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", PHI["extension"].encode()))
    path = folder / f"{PHI['file_name']}_ct.nii.gz"
    nib.save(img, path)
    assert PHI["descrip"] in str(nib.load(path).header["descrip"])
    return path


def _plant_nrrd(folder: Path, data: np.ndarray) -> Path:
    z, y, x = data.shape
    header = (
        "NRRD0004\n"
        f"# {PHI['nrrd_comment']}\n"
        "type: int16\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {x} {y} {z}\n"
        "space directions: (1.5,0,0) (0,1.5,0) (0,0,3)\n"
        "space origin: (0,0,0)\n"
        f"content: {PHI['nrrd_content']}\n"
        "endian: little\n"
        "encoding: raw\n"
        f"PatientName:={PHI['nrrd_kv']}\n"
        "\n"
    )
    path = folder / f"{PHI['file_name']}_ct.nrrd"
    path.write_bytes(header.encode() + data.astype("<i2").tobytes())
    img = sitk.ReadImage(str(path))
    assert any(PHI["nrrd_kv"] in img.GetMetaData(k) for k in img.GetMetaDataKeys())
    return path


def _plant_mha(folder: Path, data: np.ndarray) -> Path:
    img = sitk.GetImageFromArray(data.astype(np.int16))
    img.SetMetaData("PatientName", PHI["mha_kv"])
    path = folder / f"{PHI['file_name']}_ct.mha"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetKeepOriginalImageUID(True)
    writer.Execute(img)
    assert PHI["mha_kv"].encode() in path.read_bytes()
    return path


@pytest.mark.parametrize("kind", ["nifti", "nrrd", "mha"])
def test_planted_phi_never_reaches_output(tmp_path: Path, kind: str) -> None:
    data = np.random.default_rng(3).integers(-1000, 1500, size=(3, 8, 9)).astype(np.int16)
    src_dir = tmp_path / PHI["file_name"]
    src_dir.mkdir()
    path = {"nifti": _plant_nifti, "nrrd": _plant_nrrd, "mha": _plant_mha}[kind](src_dir, data)
    before = path.read_bytes()
    out = tmp_path / "out"
    code, stdout, _ = run(str(path), "-m", "ct-pelvis", "-o", str(out), "--seed", "2", "--json")
    assert code == 0, stdout
    assert path.read_bytes() == before  # input untouched
    blobs = {p: p.read_bytes().lower() for p in out.rglob("*") if p.is_file()}
    assert len(blobs) == json.loads(stdout)["files"] + 2  # images, DICOMDIR, manifest.json
    # the input's sha256 is in the local manifest (positive control of the byte scan), in no DICOM file
    import hashlib

    sha = hashlib.sha256(before).hexdigest().encode()
    assert all((sha in b) == (p.name == "manifest.json") for p, b in blobs.items())
    for label, text in PHI.items():
        needles = {text.lower().encode(), text.split()[0].lower().encode()}
        for p, blob in blobs.items():
            for needle in needles:
                assert needle not in blob, f"{label} ({needle!r}) leaked into {p.relative_to(out)}"
    assert PHI["file_name"].lower() not in stdout.lower()


# ------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written
# ------------------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    np.save(tmp_path / "1d.npy", np.zeros(5))
    nan = np.zeros((2, 4, 4))
    nan[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", np.zeros((2, 4, 4)))
    (tmp_path / "notes.nii.gz").write_text("this is not an image\n")
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    (tmp_path / "fake.npy").write_bytes(b"\x93NUMPY garbage")
    sp = ["--spacing", "1,1,1"]
    return {
        "4D array": [str(tmp_path / "4d.npy"), "-m", "ct-pelvis", *sp],
        "1D array": [str(tmp_path / "1d.npy"), "-m", "ct-pelvis", *sp],
        "NaN": [str(tmp_path / "nan.npy"), "-m", "ct-pelvis", *sp],
        "not an image (.nii.gz)": [str(tmp_path / "notes.nii.gz"), "-m", "ct-pelvis"],
        "not an image (.txt)": [str(tmp_path / "notes.txt"), "-m", "ct-pelvis"],
        "broken .npy": [str(tmp_path / "fake.npy"), "-m", "ct-pelvis", *sp],
        "unknown modality": [str(tmp_path / "ok.npy"), "-m", "pet-brain", *sp],
        "npy without spacing": [str(tmp_path / "ok.npy"), "-m", "ct-pelvis"],
        "bad spacing": [str(tmp_path / "ok.npy"), "-m", "ct-pelvis", "--spacing", "1,0,1"],
        "missing file": [str(tmp_path / "nope.nii.gz"), "-m", "ct-pelvis"],
        "bad uid root": [str(tmp_path / "ok.npy"), "-m", "ct-pelvis", *sp, "--uid-root", "1.2.x"],
    }


def test_bad_input_is_refused_with_one_line(tmp_path: Path) -> None:
    for label, args in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{label.replace(' ', '_')}"
        result = CliRunner().invoke(cli, ["to-dicom", *args, "-o", str(out)])
        assert result.exit_code != 0, label
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
            label, result.exception)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:"), (label, result.stderr)
        assert "Traceback" not in result.output
        assert not out.exists(), label
    code, _, stderr = run(*_bad_inputs(tmp_path)["unknown modality"], "-o", str(tmp_path / "o"))
    assert "ct-pelvis" in stderr  # the message lists the valid presets


def test_non_empty_output_refused_without_force(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((2, 4, 4)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("mine")
    args = [str(tmp_path / "v.npy"), "-m", "mr-brain", "--spacing", "1,1,1", "-o", str(out)]
    code, _, stderr = run(*args)
    assert code != 0 and "not empty" in stderr
    assert [p.name for p in out.iterdir()] == ["x.txt"]
    code, stdout, _ = run(*args, "--force")
    assert code == 0 and "wrote 2 MR files" in stdout
    assert (out / "x.txt").read_text() == "mine"


def test_help_has_example() -> None:
    result = CliRunner().invoke(cli, ["to-dicom", "--help"])
    assert result.exit_code == 0
    assert "medsynth to-dicom ../shared/data/ct/abdomen_pelvis_totalseg.nii.gz" in result.output
    assert "--json" in result.output and "--seed" in result.output


def test_same_seed_other_input_or_preset_shares_no_uid(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", rng.integers(-1000, 1000, size=(2, 6, 6)).astype(np.int16))
    runs = [("a", "ct-chest"), ("b", "ct-chest"), ("a", "ct-pelvis")]
    seen: dict[str, set[str]] = {}
    for i, (name, preset) in enumerate(runs):
        out = tmp_path / f"out{i}"
        code, stdout, _ = run(str(tmp_path / f"{name}.npy"), "-m", preset, "--spacing", "1,1,1", "-o", str(out),
                              "--seed", "7", "--json")
        assert code == 0, stdout
        files = json.loads((out / "manifest.json").read_text())["files"]
        ids = {f[k] for f in files for k in ("sop_instance_uid", "series_instance_uid", "study_instance_uid",
                                             "patient_id")}
        for other, prev in seen.items():
            assert not ids & prev, (i, other)
        seen[str(i)] = ids
