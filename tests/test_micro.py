"""micro-malaria on real NIH cells: prepare (RGB, letterboxed, split by patient), train → export →
generate colour VL Microscopic Image DICOM (dciodvfy 0 errors) and PNG, and the evaluation module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image

from medsynth.cli.main import cli
from medsynth.dataset import load_dataset
from medsynth.errors import ConfigError, InputError
from medsynth.evaluation.micro import (
    colour_distance,
    memorisation,
    read_dicom_cells,
    wilson_interval,
)
from medsynth.microscopy import background_colour, is_held_out, letterbox, patient_id, read_rgb
from medsynth.pack import bundled_packs_dir
from medsynth.prepare import PrepareConfig, prepare_dataset
from medsynth.presets import get_preset

DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
PRESET = get_preset("micro-malaria")


@pytest.fixture(scope="module")
def cells(shared_data: Path) -> Path:
    return shared_data / "micro" / "malaria_nih_cells"


def _subset(cells: Path, n: int = 24) -> list[Path]:
    """n cells of each class, spread over the sorted file list (both splits present)."""
    out: list[Path] = []
    for cls in ("parasitized", "uninfected"):
        files = sorted((cells / cls).glob("*.png"))
        out += [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    if proc.returncode != 0 and not errors:
        raise AssertionError(f"dciodvfy failed without an error line: {lines[:5]}")
    return errors


# ---------------------------------------------------------------------------------- patients and split

def test_patient_ids_of_every_real_file_name_form(cells: Path) -> None:
    assert patient_id("C100P61ThinF_IMG_20150918_144823_cell_157.png") == "P61"
    assert patient_id("C37BP2_thinF_IMG_20150620_133001a_cell_76.png") == "P2"
    assert patient_id("C51AP12thinF_IMG_20150724_153313_cell_94.png") == "P12"
    assert patient_id("C12NThinF_IMG_20150614_124212_cell_120.png") == "C12N"
    with pytest.raises(InputError):
        patient_id("cell_001.png")
    names = [p.name for p in cells.rglob("*.png")]
    patients = {patient_id(n) for n in names}  # every real file has one
    held = {p for p in patients if is_held_out(p)}
    assert 0.1 < len(held) / len(patients) < 0.3


def test_prepare_splits_by_patient_never_by_cell(cells: Path, tmp_path: Path) -> None:
    files = _subset(cells)
    counts = {}
    for split in ("train", "test"):
        report = prepare_dataset(files, tmp_path / split, PrepareConfig("micro-malaria", label_from_folder=True,
                                                                        split=split))  # type: ignore[arg-type]
        counts[split] = report.slices_kept
        ds = load_dataset(tmp_path / split)
        assert ds.slices.shape[1:] == (3, 64, 64) and ds.slices.dtype == np.float32
        assert float(ds.slices.min()) >= -1.0 and float(ds.slices.max()) <= 1.0
        # one neutral volume per patient; no patient id or file name in the manifest
        text = (tmp_path / split / "manifest.json").read_text()
        assert "ThinF" not in text and "thinF" not in text and "P61" not in text
        assert ds.volumes is not None and len(np.unique(ds.volumes)) == len(ds.manifest.sources)
    expected_test = sum(is_held_out(patient_id(f.name)) for f in files)
    assert counts["test"] == expected_test > 0
    assert counts["train"] == len(files) - expected_test > 0
    with pytest.raises(ConfigError):
        prepare_dataset(files, tmp_path / "val", PrepareConfig("micro-malaria", label_from_folder=True, split="val"))


def test_labels_file_of_the_data_set_labels_cells(cells: Path, tmp_path: Path) -> None:
    files = _subset(cells, 6)
    prepare_dataset(files, tmp_path / "ds", PrepareConfig("micro-malaria", labels_file=cells / "labels.csv"))
    ds = load_dataset(tmp_path / "ds")
    truth = [PRESET.condition_index(f.parent.name) for f in files if not is_held_out(patient_id(f.name))]
    assert sorted(np.asarray(ds.labels).tolist()) == sorted(truth)


def test_letterbox_keeps_aspect_and_pads_with_the_background(cells: Path) -> None:
    files = sorted((cells / "parasitized").glob("*.png"))
    rgb = next(a for a in (read_rgb(f) for f in files[:200]) if abs(a.shape[0] - a.shape[1]) > 20)
    assert background_colour(rgb) == (0, 0, 0)  # the NIH cells are segmented on black
    out = letterbox(rgb, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and tuple(out[0, 0]) == (0, 0, 0)
    fill = letterbox(rgb, (64, 64), fill=(10, 20, 30))
    is_fill = np.all(fill == np.array([10, 20, 30], np.uint8), axis=2)
    h, w = rgb.shape[:2]
    kept = int(np.sum(~is_fill.all(axis=1 if h < w else 0)))  # rows (wide cell) or columns (tall) with the cell
    assert abs(kept - round(min(h, w) * 64 / max(h, w))) <= 1
    assert not is_fill.all(axis=0 if h < w else 1).any()  # the longer side fills the matrix


def test_grey_and_broken_images_are_one_line_errors(cells: Path, tmp_path: Path) -> None:
    src = sorted((cells / "uninfected").glob("*.png"))[0]
    grey = tmp_path / "uninfected" / "C1P1thinF_grey.png"
    grey.parent.mkdir()
    Image.open(src).convert("L").save(grey)
    broken = tmp_path / "uninfected" / "C1P1thinF_broken.png"
    broken.write_bytes(src.read_bytes()[:100])
    with pytest.raises(InputError, match="grey"):
        read_rgb(grey)
    good = [f for f in _subset(cells, 4) if not is_held_out(patient_id(f.name))]
    report = prepare_dataset([*good, grey, broken], tmp_path / "ds",
                             PrepareConfig("micro-malaria", label_from_folder=True))
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert report.slices_kept == len(good)
    if not is_held_out("P1"):
        assert "grey" in reasons[grey.name] and "cannot read" in reasons[broken.name]


# ---------------------------------------------------------------------------------- the chain

@pytest.fixture(scope="module")
def tiny_pack(cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare → train (4 steps, a small UNet) → export: a 3-channel pack from real cells."""
    root = tmp_path_factory.mktemp("micro")
    runner = CliRunner()
    res = runner.invoke(cli, ["prepare", *map(str, _subset(cells, 12)), "-m", "micro-malaria", "--label-from-folder",
                              "-o", str(root / "data"), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", str(root / "data"), "-o", str(root / "run"), "--steps", "4",
                              "--batch-size", "4", "--channels", "16,16", "--attention-levels", "false,true",
                              "--threads", "1", "--sample-every", "0",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "run" / "config.json").read_text())["model"]["image_channels"] == 3
    res = runner.invoke(cli, ["export", str(root / "run"), "-o", str(root / "pack"), "--no-fp16", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["parity"]["max_abs_error"] < 1e-3
    return root / "pack"


def test_exported_pack_is_rgb(tiny_pack: Path) -> None:
    meta = json.loads((tiny_pack / "pack.json").read_text())
    assert meta["channels"] == 3 and meta["modality"] == "GM" and meta["labels"] == ["parasitized", "uninfected"]


def test_generate_writes_dciodvfy_clean_rgb_vl_microscopic_images(tiny_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["generate", "--modality", "micro-malaria", "--condition", "parasitized",
                                   "--model", str(tiny_pack), "--patients", "2", "--steps", "3", "--seed", "5",
                                   "--preview", "-o", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["files"]) == 2 and manifest["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.77.1.2"
    for rec in manifest["files"]:
        assert dciodvfy_errors(out / rec["path"]) == []
    assert dciodvfy_errors(out / "DICOMDIR") == []
    ds = pydicom.dcmread(out / manifest["files"][0]["path"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.2" and ds.Modality == "GM"
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
    assert (ds.BitsAllocated, ds.BitsStored, ds.Rows, ds.Columns) == (8, 8, 64, 64)
    assert ds.pixel_array.shape == (64, 64, 3)
    assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES"
    code = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("109100", "DCM")
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert "parasitized" in ds.SeriesDescription and "SYNTHETIC" in ds.StudyDescription
    assert ds.SpecimenDescriptionSequence[0].SpecimenUID and ds.ContainerIdentifier.startswith("SYN-")
    assert "WindowCenter" not in ds and "ImagePositionPatient" not in ds
    assert Image.open(out / "preview.png").mode == "RGB"
    # generate's own pixels, read back: the evaluation's input path
    x = read_dicom_cells(out)
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1.0 and x.max() <= 1.0


def test_generate_png_is_rgb_and_nifti_is_refused(tiny_pack: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "-m", "micro-malaria", "--model", str(tiny_pack), "--steps", "2",
                              "--seed", "1", "--format", "png", "-o", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "png").rglob("*.png"))
    assert pngs and Image.open(pngs[0]).mode == "RGB" and Image.open(pngs[0]).size == (64, 64)
    res = runner.invoke(cli, ["generate", "-m", "micro-malaria", "--model", str(tiny_pack), "--steps", "2",
                              "--format", "nifti", "-o", str(tmp_path / "nii")])
    assert res.exit_code != 0 and "RGB" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["generate", "-m", "micro-malaria", "--model", str(tiny_pack), "--steps", "2",
                              "--transfer-syntax", "rle", "-o", str(tmp_path / "rle")])
    assert res.exit_code != 0 and "explicit" in res.output


# ---------------------------------------------------------------------------------- evaluation

def test_colour_histograms_and_memorisation_on_real_cells(cells: Path, tmp_path: Path) -> None:
    prepare_dataset(_subset(cells, 30), tmp_path / "ds", PrepareConfig("micro-malaria", label_from_folder=True))
    x = np.asarray(load_dataset(tmp_path / "ds").slices)
    a, b = x[::2], x[1::2]
    same = colour_distance(a, a)
    assert same["kl"] == 0.0 and same["cramers_v"] == 0.0
    real = colour_distance(a, b)
    tinted = colour_distance(np.clip(a + np.array([0.3, -0.3, 0.0], np.float32)[None, :, None, None], -1, 1), b)
    assert 0.0 < real["kl"] < tinted["kl"] and real["cramers_v"] < tinted["cramers_v"]
    mem = memorisation(a[:5], b[:5], a)  # synthetic = training cells: copies
    assert mem["copies"] is True and mem["synthetic"]["frac_ge_0.99"] == 1.0
    assert memorisation(b[:5], b[5:10], a)["copies"] is False
    lo, hi = wilson_interval(45, 50) or [0.0, 0.0]
    assert lo < 0.9 < hi


BUNDLED = bundled_packs_dir() / "micro-malaria"


@pytest.mark.skipif(not (BUNDLED / "pack.json").is_file(), reason="the micro-malaria pack is not bundled")
def test_bundled_pack_makes_smear_coloured_cells(cells: Path, tmp_path: Path) -> None:
    """The issue's command with the bundled pack: dciodvfy-clean RGB cells whose colours are those of
    real held-out cells (far closer than noise or a grey image would be)."""
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["generate", "--modality", "micro-malaria", "--condition", "parasitized",
                                   "--patients", "6", "--seed", "3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(dciodvfy_errors(out / r["path"]) == [] for r in manifest["files"])
    synthetic = read_dicom_cells(out)
    held = [f for f in sorted((cells / "parasitized").glob("*.png")) if is_held_out(patient_id(f.name))][:60]
    prepare_dataset(held, tmp_path / "real", PrepareConfig("micro-malaria", label="parasitized", split="test"))
    real = np.asarray(load_dataset(tmp_path / "real").slices)
    grey = np.repeat(real.mean(axis=1, keepdims=True), 3, axis=1)
    kl = colour_distance(synthetic, real)["kl"]
    assert kl < 0.5 * colour_distance(grey, real)["kl"]
    assert kl < 0.5 * colour_distance(np.random.default_rng(0).uniform(-1, 1, synthetic.shape), real)["kl"]


@pytest.mark.skipif(not (BUNDLED / "pack.json").is_file(), reason="the micro-malaria pack is not bundled")
def test_bundled_pack_names_no_patient(cells: Path) -> None:
    """No slide/patient id of the source data reaches the pack: the held-out patients are a count."""
    ids = {patient_id(f.name) for f in cells.glob("*/*.png")}
    held = {p for p in ids if is_held_out(p)}
    assert held and len(ids) > len(held)
    meta = json.loads((BUNDLED / "pack.json").read_text(encoding="utf-8"))
    assert isinstance(meta["quality"]["held_out_patients"], int) and 0 < meta["quality"]["held_out_patients"] <= len(held)
    for name in ("pack.json", "MODEL_CARD.md"):
        words = set((BUNDLED / name).read_text(encoding="utf-8").replace('"', " ").replace(",", " ").split())
        assert not words & ids, name


def test_evaluate_micro_reuses_a_fitted_classifier() -> None:
    """A sweep judges every sampling setting with one CNN: ``classifier=`` is used, nothing is fitted."""
    from medsynth.evaluation.micro import CnnClassifier, evaluate_micro

    class Always(CnnClassifier):
        def __init__(self, k: int) -> None:
            self.k = k

        def predict(self, images: object, batch: int = 256) -> np.ndarray:
            return np.full(len(np.asarray(images)), self.k, np.int64)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1] * 4)
    r = evaluate_micro(x, y, x[:4], y[:4], {"parasitized": x[:3], "uninfected": x[3:6]},
                       ("parasitized", "uninfected"), classifier=Always(0))
    assert r["per_class"]["parasitized"]["synthetic"]["accuracy"] == 1.0
    assert r["per_class"]["uninfected"]["synthetic"]["accuracy"] == 0.0
    assert r["per_class"]["uninfected"]["held_out_real"]["accuracy"] == 0.0
    assert r["per_class"]["uninfected"]["within_tolerance"] is True  # real 0 %, synthetic 0 %
