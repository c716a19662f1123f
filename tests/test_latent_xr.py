"""The bundled 256² latent chest X-ray pack (xr-chest-256) on real input: 2D latent packs through
generate (one image per series, no previous slice), its autoencoder on held-out NIH patients, the
recipe's patient split, and the model card of a 2D pack. Quality is measured by
benchmarks/eval_latent_xr.py, not here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomllib
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.pack import bundled_packs_dir, load_pack

REPO = Path(__file__).resolve().parents[1]
PACK = bundled_packs_dir() / "xr-chest-256"
RECIPE = tomllib.loads((REPO / "packaging" / "packs.toml").read_text(encoding="utf-8"))["xr-chest-256"]


def test_generate_writes_a_dciodvfy_clean_256_chest_xray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`generate --modality xr-chest --model xr-chest-256` as a user runs it: one 256² DX image per
    series at the pack's detector spacing (256 × 1.6 mm = 41 cm), valid DICOM, a chest on black
    (not noise): the lungs darker than the mediastinum."""
    monkeypatch.delenv("MEDSYNTH_MODEL_DIR", raising=False)  # conftest's stand-in folder: this test is of the bundled pack
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["generate", "--modality", "xr-chest", "--model", "xr-chest-256", "--patients", "2",
                                   "--condition", "pneumonia", "--seed", "3", "-o", str(out), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["model_id"] == "xr-chest-256"
    files = sorted(out.rglob("IM*"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "DX" and ds.Rows == 256 and ds.Columns == 256
    spacing = float(ds.ImagerPixelSpacing[0]) if "ImagerPixelSpacing" in ds else float(ds.PixelSpacing[0])
    assert 350 <= 256 * spacing <= 430  # a 35–43 cm detector
    dciodvfy = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    report = subprocess.run([dciodvfy, str(files[0])], capture_output=True, text=True)
    assert [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")] == []
    img = ds.pixel_array.astype(np.float64)
    assert img.std() > 0.05 * img.max()  # not a flat image
    centre, lungs = img[64:192, 112:144].mean(), np.concatenate([img[64:192, 48:96], img[64:192, 160:208]]).mean()
    assert centre > lungs  # mediastinum brighter than the lung fields, as on every real frontal chest film


def test_autoencoder_reconstructs_held_out_patients(shared_data: Path) -> None:
    """The pack's ONNX encoder/decoder on 8 images of patients it never saw (the recipe's held-out list),
    read as `prepare -m xr-chest --matrix 256` reads them: no regression below the card's PSNR − 1 dB / SSIM − 0.05."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from eval_latent_xr import reconstruction
    from medsynth.prepare import preprocess_xray
    from medsynth.presets import get_preset

    held = set(RECIPE["held_out_patients"])
    files = sorted(p for p in (shared_data / "xr" / "nih_cxr14_256").rglob("*.png") if p.stem.split("_")[0] in held)[::20]
    from PIL import Image

    preset = dataclasses.replace(get_preset("xr-chest"), matrix=(256, 256))
    real = np.stack([preprocess_xray(np.asarray(Image.open(f).convert("L"), np.float32) / 255.0, preset) for f in files])
    rec = reconstruction(PACK, real)
    card = load_pack(PACK).metadata.quality["reconstruction"]
    assert rec["psnr_db_8bit"] >= float(card["psnr_db_8bit"]) - 1.0 and rec["ssim"] >= float(card["ssim"]) - 0.05


def test_recipe_splits_nih_by_patient(shared_data: Path) -> None:
    """build_latent_pack's split: every image of a held-out patient is held out, none is trained on;
    the pack counts them but names no patient (the ids, taken from input file names, stay in the recipe)."""
    sys.path.insert(0, str(REPO / "packaging"))
    from build_latent_pack import split_labels

    train, held = split_labels(RECIPE, shared_data)
    pt = {row.split("_")[0] for row in train.splitlines()}
    ph = {row.split("_")[0] for row in held.splitlines()}
    assert ph == set(RECIPE["held_out_patients"]) and not pt & ph
    assert len(train.splitlines()) + len(held.splitlines()) == 800
    pack_json = (PACK / "pack.json").read_text(encoding="utf-8")  # ids from input file names stay out of the pack
    assert not any(pid in pack_json for pid in RECIPE["held_out_patients"] + sorted(pt))
    assert f"{len(ph)} patients" in load_pack(PACK).metadata.training["held_out"]


def test_card_of_a_2d_pack_speaks_of_images_not_series() -> None:
    from medsynth.latent.export import latent_model_card

    meta = load_pack(PACK).metadata
    card = latent_model_card(meta)
    assert "images of 256×256 pixels" in card and "previous-slice input stays empty" in card
    assert "Position support" not in card and "Wang" in card  # NIH attribution
    assert len(card.splitlines()) < 200  # hundreds of single-image sources are summarised per label
