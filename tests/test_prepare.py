"""`medsynth prepare` tests: every real CT/MR scan, X-ray inputs, labels, bad input, output safety."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.dataset import load_dataset
from medsynth.dicom_io.reader import read_images
from medsynth.errors import ConfigError, InputError
from medsynth.prepare import PrepareConfig, ZRange, prepare_dataset, preprocess_series
from medsynth.presets import get_preset

CT_INPUTS = ["ct/abdomen_pelvis_totalseg.nii.gz", "ct/cardiac_cta_totalseg_1.nii.gz", "ct/cardiac_cta_totalseg_2.nii.gz",
             "ct/chest_pyradiomics_lung1.nrrd", "ct/chest_pyradiomics_lung2.nrrd", "ct/upper_abdomen_dicom",
             "ct/head_gantry_tilt_dicom"]
MR_INPUTS = [("mr/abdomen_mr_totalseg.nii.gz", "mr-brain"), ("mr/brain_stroke_flair.nii.gz", "mr-brain"),
             ("mr/brain_stroke_t1.nii.gz", "mr-brain"), ("mr/brain_stroke_t2.nii.gz", "mr-brain"),
             ("mr/brain_t1_chris.nii.gz", "mr-brain"), ("mr/brain_t1_colin27.nii.gz", "mr-brain"),
             ("mr/brain_t1c_pyradiomics_1.nrrd", "mr-brain"), ("mr/brain_t1c_pyradiomics_2.nrrd", "mr-brain"),
             ("mr/cardiac_lge_dicom", "mr-cardiac")]


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, args)
    return res.exit_code, res.output


@pytest.mark.parametrize("name", CT_INPUTS)
def test_every_real_ct_prepares_into_plausible_slices(shared_data: Path, name: str) -> None:
    preset = get_preset("ct-abdomen")
    res = read_images([shared_data / name])
    assert not res.skipped
    series = res.series[0]
    out = preprocess_series(series, preset, PrepareConfig(preset=preset.name))
    n = len(out.slices)
    assert n >= 5 and out.slices.shape[1:] == (64, 64) and out.slices.dtype == np.float32
    assert out.slices.min() >= -1.0 and out.slices.max() <= 1.0
    hu = preset.intensity.to_physical(out.slices)
    # body centred in the matrix: the middle is mostly tissue, the corners mostly air
    centre = hu[:, 24:40, 24:40]
    corners = np.concatenate([hu[:, :6, :6].ravel(), hu[:, -6:, -6:].ravel()])
    assert np.median(centre) > -300, np.median(centre)
    assert np.mean(corners < -900) > 0.7 or "cardiac" in name  # cardiac CTA has a small field of view
    assert 0 < (hu > 300).mean() < 0.2  # some bone, not all of it
    # positions increase from the inferior-most slice and stay in [0, 1]
    assert np.all(np.diff(out.positions) > 0) and out.positions.min() >= 0.0 and out.positions.max() <= 1.0
    assert np.all(np.diff(out.z_mm) > 0)


@pytest.mark.parametrize(("name", "preset_name"), MR_INPUTS)
def test_every_real_mr_prepares_into_plausible_slices(shared_data: Path, name: str, preset_name: str) -> None:
    preset = get_preset(preset_name)
    series = read_images([shared_data / name]).series[0]
    out = preprocess_series(series, preset, PrepareConfig(preset=preset_name))
    assert len(out.slices) >= 5 and out.slices.shape[1:] == (64, 64)
    assert out.slices.min() >= -1.0 and out.slices.max() <= 1.0
    # robust normalisation: foreground spreads over the range, background is black
    per_slice_max = out.slices.reshape(len(out.slices), -1).max(axis=1)
    assert np.all(per_slice_max > -0.5)  # no empty slice kept
    assert np.mean(out.slices == -1.0) > 0.1
    assert np.percentile(out.slices[out.slices > -1.0], 99) > 0.5


def test_cli_ct_pelvis_with_z_range(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "ct/abdomen_pelvis_totalseg.nii.gz"
    out = tmp_path / "ds"
    code, text = _run(["prepare", str(src), "--modality", "ct-pelvis", "--label", "pelvis", "--z-range", "0:0.4",
                       "-o", str(out)])
    assert code == 0, text
    assert "slices kept" in text
    ds = load_dataset(out)
    assert ds.manifest.labels == ("pelvis", "abdomen", "chest") and ds.manifest.preset == "ct-pelvis"
    assert ds.slices.shape[1:] == (64, 64) and len(ds) >= 10
    assert set(np.asarray(ds.labels).tolist()) == {0}
    pos = np.asarray(ds.positions)
    assert pos.min() == pytest.approx(0.0) and pos.max() <= 0.4 + 1e-6
    assert ds.manifest.sources[0].sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert list(ds.manifest.slice_sources) == [0] * len(ds)


def test_cli_dicom_folders_json_summary(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, text = _run(["prepare", str(shared_data / "ct/upper_abdomen_dicom"), str(shared_data / "ct/head_gantry_tilt_dicom"),
                       "--modality", "ct-abdomen", "--label", "abdomen", "-o", str(out), "--json"])
    assert code == 0, text
    rep = json.loads(text)
    assert rep["files_read"] == 48 and rep["series_found"] == 2 and rep["skipped"] == []
    assert rep["slices_kept"] == len(load_dataset(out))
    assert [s["name"] for s in rep["sources"]] == ["source-0001", "source-0002"]  # inputs in order
    gantry = rep["sources"][1]
    assert any("gantry tilt" in n for n in gantry["notes"])


def test_labels_file_splits_one_scan_into_regions(shared_data: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label,z_range\nabdomen_pelvis_totalseg.nii.gz,pelvis,0:0.4\n"
                      "abdomen_pelvis_totalseg,abdomen,0.5:1\n", encoding="utf-8")
    rep = prepare_dataset([shared_data / "ct/abdomen_pelvis_totalseg.nii.gz"], tmp_path / "ds",
                          PrepareConfig(preset="ct-abdomen", labels_file=labels))
    ds = load_dataset(tmp_path / "ds")
    lab, pos = np.asarray(ds.labels), np.asarray(ds.positions)
    assert set(lab.tolist()) == {0, 1} and rep.per_label["pelvis"] > 5 and rep.per_label["abdomen"] > 5
    assert pos[lab == 0].max() <= 0.4 + 1e-6 and pos[lab == 1].min() >= 0.5 - 1e-6
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"abdomen_pelvis_totalseg.nii.gz": {"label": "chest", "z_range": "0.9:1"}}),
                  encoding="utf-8")
    rep2 = prepare_dataset([shared_data / "ct/abdomen_pelvis_totalseg.nii.gz"], tmp_path / "ds2",
                           PrepareConfig(preset="ct-chest", labels_file=js))
    assert set(rep2.per_label) == {"chest"}


def test_mr_labels_from_folder_and_n4(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "t2").mkdir()
    (tmp_path / "flair").mkdir()
    shutil.copy(shared_data / "mr/brain_stroke_t2.nii.gz", tmp_path / "t2" / "a.nii.gz")
    shutil.copy(shared_data / "mr/brain_stroke_flair.nii.gz", tmp_path / "flair" / "b.nii.gz")
    rep = prepare_dataset([tmp_path / "t2", tmp_path / "flair"], tmp_path / "ds",
                          PrepareConfig(preset="mr-brain", label_from_folder=True, n4=True))
    assert set(rep.per_label) == {"t2", "flair"}
    assert all("N4 bias field corrected" in s.notes for s in rep.sources)
    ds = load_dataset(tmp_path / "ds")
    assert set(np.asarray(ds.labels).tolist()) == {1, 2}  # indices into (t1, t2, flair, t1c)


def test_xray_npz_uses_file_labels_and_split(shared_data: Path, tmp_path: Path) -> None:
    npz = shared_data / "xr/pneumoniamnist_28.npz"
    code, text = _run(["prepare", str(npz), "--modality", "xr-chest", "-o", str(tmp_path / "tr"), "--json"])
    assert code == 0, text
    ds = load_dataset(tmp_path / "tr")
    with np.load(npz) as z:
        truth = z["train_labels"][:, 0]
    assert ds.slices.shape == (2428, 32, 32)
    np.testing.assert_array_equal(np.asarray(ds.labels), truth)
    assert ds.manifest.labels == ("normal", "pneumonia")
    assert np.allclose(np.asarray(ds.positions), 0.5)
    code, _ = _run(["prepare", str(npz), "-m", "xr-chest", "--split", "val", "-o", str(tmp_path / "va")])
    assert code == 0 and len(load_dataset(tmp_path / "va")) == 270


def test_png_xrays_keep_aspect_and_folder_labels(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("normal", 120), ("pneumonia", 220)):
        (tmp_path / cls).mkdir()
        img = np.full((40, 80), value, np.uint8)
        img[:, 40:] += 30
        Image.fromarray(img).save(tmp_path / cls / "img.png")  # 2:1 wide
    prepare_dataset([tmp_path / "normal", tmp_path / "pneumonia"], tmp_path / "ds",
                    PrepareConfig(preset="xr-chest", label_from_folder=True))
    ds = load_dataset(tmp_path / "ds")
    s = np.asarray(ds.slices)
    assert s.shape == (2, 32, 32) and sorted(np.asarray(ds.labels).tolist()) == [0, 1]
    # 80x40 -> 32x16: rows 8..23 hold the image, the rest is black padding
    assert np.all(s[:, :8] == -1.0) and np.all(s[:, 24:] == -1.0) and np.all(s[:, 10:22] > -0.5)


def test_mismatched_modality_is_skipped_and_the_rest_continues(shared_data: Path, tmp_path: Path) -> None:
    rep = prepare_dataset([shared_data / "mr/brain_stroke_t1.nii.gz", shared_data / "ct/abdomen_pelvis_totalseg.nii.gz",
                           shared_data / "mr/cardiac_lge_dicom"], tmp_path / "ds", PrepareConfig(preset="ct-pelvis"))
    reasons = {Path(s.path).name: s.reason for s in rep.skipped}
    assert "do not look like CT Hounsfield units" in reasons["brain_stroke_t1.nii.gz"]
    assert any("modality MR does not match" in r for r in reasons.values())
    assert [s.display for s in rep.sources] == ["abdomen_pelvis_totalseg.nii.gz"]
    assert [s.name for s in rep.sources] == ["source-0001"]


def test_nothing_usable_exits_non_zero_without_output(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    out = tmp_path / "ds"
    code, text = _run(["prepare", str(tmp_path / "junk.dcm"), "-m", "ct-pelvis", "-o", str(out)])
    assert code != 0 and "nothing usable" in text and "Traceback" not in text
    assert "not a DICOM file" in text
    assert not out.exists() and not list(tmp_path.glob(".ds*"))


def test_output_not_replaced_without_force(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    src = str(shared_data / "mr/abdomen_mr_totalseg.nii.gz")
    code, text = _run(["prepare", src, "-m", "mr-brain", "-o", str(out)])
    assert code != 0 and "--force" in text and (out / "keep.txt").exists()
    code, text = _run(["prepare", src, "-m", "mr-brain", "-o", str(out), "--force"])
    assert code == 0, text
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_bad_options_are_config_errors(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ConfigError):
        ZRange.parse("0.5:0.2")
    with pytest.raises(ConfigError):
        ZRange.parse("-300:-100")  # mm values need the unit
    assert ZRange.parse("-300:-100mm") == ZRange(-300.0, -100.0, "mm")
    src = shared_data / "mr/abdomen_mr_totalseg.nii.gz"
    with pytest.raises(ConfigError, match="unknown condition"):
        prepare_dataset([src], tmp_path / "a", PrepareConfig(preset="mr-brain", label="pelvis"))
    bad = tmp_path / "l.csv"
    bad.write_text("abdomen_mr_totalseg.nii.gz,dwi\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="dwi"):
        prepare_dataset([src], tmp_path / "b", PrepareConfig(preset="mr-brain", labels_file=bad))
    code, text = _run(["prepare", str(src), "-m", "mr-brain", "--z-range", "a:b", "-o", str(tmp_path / "c")])
    assert code == 2 and "bad z range" in text


def test_z_range_in_mm_selects_by_patient_coordinate(shared_data: Path) -> None:
    preset = get_preset("ct-abdomen")
    series = read_images([shared_data / "ct/abdomen_pelvis_totalseg.nii.gz"]).series[0]
    full = preprocess_series(series, preset, PrepareConfig(preset=preset.name), ZRange(0.0, 1.0, "fraction"))
    lo, hi = float(full.z_mm[10]), float(full.z_mm[20])
    part = preprocess_series(series, preset, PrepareConfig(preset=preset.name), ZRange(lo, hi, "mm"))
    np.testing.assert_allclose(part.z_mm, full.z_mm[10:21])
    with pytest.raises(InputError, match="no slice left"):
        preprocess_series(series, preset, PrepareConfig(preset=preset.name), ZRange(5000, 6000, "mm"))


def test_implausible_spacing_is_refused_before_allocating_and_the_rest_continues(shared_data: Path,
                                                                                 tmp_path: Path) -> None:
    """A 2 MB NIfTI with 200 mm pixels would need a 9 GB grid: refused by the voxel cap, one line."""
    import nibabel as nib

    from medsynth.prepare import MAX_RESAMPLED_VOXELS

    src = nib.load(shared_data / "ct/abdomen_pelvis_totalseg.nii.gz")
    big = nib.Nifti1Image(np.asarray(src.dataobj), np.diag([200.0, 200.0, 3.0, 1.0]))
    nib.save(big, tmp_path / "huge_pixels.nii.gz")
    rep = prepare_dataset([tmp_path / "huge_pixels.nii.gz", shared_data / "ct/abdomen_pelvis_totalseg.nii.gz"],
                          tmp_path / "ds", PrepareConfig(preset="ct-pelvis"))
    (skipped,) = rep.skipped
    assert Path(skipped.path).name == "huge_pixels.nii.gz"
    assert f"limit of {MAX_RESAMPLED_VOXELS} voxels" in skipped.reason and "\n" not in skipped.reason
    assert len(rep.sources) == 1 and rep.slices_kept > 0


def test_names_in_input_paths_never_reach_manifest_or_json(shared_data: Path, tmp_path: Path) -> None:
    """File and folder names often hold patient names: the manifest and --json carry a neutral index
    and the sha256 only."""
    folder = tmp_path / "DOE_JANE_19610203"
    folder.mkdir()
    src = folder / "SMITHJOHN_MRN4471_ct.nii.gz"
    shutil.copy(shared_data / "ct/abdomen_pelvis_totalseg.nii.gz", src)
    dicom = tmp_path / "ROE_RICHARD_dicom"
    shutil.copytree(shared_data / "ct/upper_abdomen_dicom", dicom)
    out = tmp_path / "ds"
    code, text = _run(["prepare", str(src), str(dicom), "-m", "ct-abdomen", "-o", str(out), "--json"])
    assert code == 0, text
    report = json.loads(text)
    assert [s["name"] for s in report["sources"]] == ["source-0001", "source-0002"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["sources"]][0] == hashlib.sha256(src.read_bytes()).hexdigest()
    for needle in ("DOE", "JANE", "SMITH", "MRN4471", "ROE_RICHARD", "19610203"):
        assert needle.lower() not in text.lower(), needle
        for p in out.rglob("*"):
            if p.is_file() and p.suffix in (".json", ".png"):
                assert needle.lower().encode() not in p.read_bytes().lower(), (needle, p.name)
    rep = prepare_dataset([src], tmp_path / "ds2", PrepareConfig(preset="ct-abdomen"))
    assert rep.sources[0].display == src.name  # the terminal table still tells the user which file
    assert "display" not in json.dumps(rep.to_json())


def test_help_percent_signs_are_single() -> None:
    code, text = _run(["prepare", "--help"])
    assert code == 0 and "30%" in text and "%%" not in text
