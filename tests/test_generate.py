"""``medsynth generate`` / ``medsynth models`` end to end on tiny random-weight packs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from _packs import make_tiny_pack
from medsynth.cli.main import cli
from medsynth.generate import GenerateConfig, generate
from medsynth.pack import NoiseScheduleConfig

SIZE = 16


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of packs: ct-body (position-conditioned), xr (2D, ε), and a tampered copy of ct-body."""
    base = tmp_path_factory.mktemp("packs")
    make_tiny_pack(base / "ct-body", size=SIZE, uses_position=True, model_id="ct-body",
                   default_sampler="dpmpp_2m", default_steps=7, default_guidance=1.5)
    make_tiny_pack(base / "xr-chest", size=SIZE, labels=("normal", "pneumonia"), prediction_type="epsilon",
                   model_id="xr-chest", presets=("xr-chest",), modality="DX", physical_range=(0.0, 4095.0),
                   unit="US", schedule=NoiseScheduleConfig("linear_beta", 200, 1e-4, 0.02), seed=3)
    bad = base.parent / "tampered"
    shutil.copytree(base / "ct-body", bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    return base


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def read_series(root: Path) -> list[pydicom.Dataset]:
    files = sorted(p for p in root.rglob("IM*") if p.is_file())
    return [pydicom.dcmread(f) for f in files]


def test_generate_dicom_valid_and_reproducible(packs: Path, tmp_path: Path) -> None:
    pack = str(packs / "ct-body")
    code, out = run("generate", "-m", "ct-pelvis", "--model", pack, "-o", str(tmp_path / "a"), "--slices", "6",
                    "--patients", "2", "--seed", "5", "--reproducible-uids", "--preview", "--batch-size", "4", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["slices"] == 12 and summary["files"] == 12 and summary["series"] == 2
    # defaults come from pack.json, not from the CLI
    assert (summary["sampler"], summary["steps"], summary["guidance"]) == ("dpmpp-2m", 7, 1.5)
    a = read_series(tmp_path / "a")
    assert len(a) == 12 and (tmp_path / "a" / "DICOMDIR").is_file() and (tmp_path / "a" / "preview.png").is_file()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["generator"]["seed"] == 5
    assert manifest["provenance"]["sampler"] == "dpmpp-2m" and manifest["provenance"]["model_id"] == "ct-body"
    ds = a[0]
    assert ds.Modality == "CT" and ds.Rows == SIZE and ds.SyntheticData == "YES"
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in a])
    assert hu.min() >= -1024 and hu.max() <= 2047 and hu.std() > 10
    z = [float(d.ImagePositionPatient[2]) for d in a[:6]]
    assert z == sorted(z) and len(set(z)) == 6
    # dciodvfy: zero errors
    dciodvfy = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    report = subprocess.run([dciodvfy, str(sorted((tmp_path / "a").rglob("IM*"))[0])], capture_output=True, text=True)
    errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors
    # same seed, another batch size → same pixels (±1 HU rounding) and, with --reproducible-uids, same UIDs
    code, out = run("generate", "-m", "ct-pelvis", "--model", pack, "-o", str(tmp_path / "b"), "--slices", "6",
                    "--patients", "2", "--seed", "5", "--reproducible-uids", "--batch-size", "5", "--json")
    assert code == 0, out
    b = read_series(tmp_path / "b")
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert np.abs(np.stack([d.pixel_array.astype(int) for d in a]) - np.stack([d.pixel_array.astype(int) for d in b])).max() <= 1
    # another seed → other pixels and UIDs
    code, out = run("generate", "-m", "ct-pelvis", "--model", pack, "-o", str(tmp_path / "c"), "--slices", "6",
                    "--patients", "2", "--seed", "6", "--json")
    c = read_series(tmp_path / "c")
    assert np.abs(np.stack([d.pixel_array.astype(int) for d in a]) - np.stack([d.pixel_array.astype(int) for d in c])).max() > 50
    assert a[0].SOPInstanceUID != c[0].SOPInstanceUID


def test_nifti_png_and_2d_preset(packs: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk
    from PIL import Image

    code, out = run("generate", "-m", "ct-chest", "--model", str(packs / "ct-body"), "-o", str(tmp_path / "n"),
                    "--slices", "5", "--series", "2", "--format", "nifti", "--sampler", "ddim", "--steps", "4",
                    "--seed", "1", "--json")
    assert code == 0, out
    niis = sorted((tmp_path / "n").rglob("*.nii.gz"))
    assert len(niis) == 2
    img = sitk.ReadImage(str(niis[0]))
    assert img.GetSize() == (SIZE, SIZE, 5) and np.allclose(img.GetSpacing(), (6.0, 6.0, 5.0))
    arr = sitk.GetArrayFromImage(img)
    assert arr.dtype == np.int16 and arr.min() >= -1024 and arr.max() <= 2047
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["generator"]["condition"] == "chest"
    code, out = run("generate", "-m", "ct-abdomen", "--model", str(packs / "ct-body"), "-o", str(tmp_path / "p"),
                    "--slices", "3", "--format", "png", "--steps", "3", "--json")
    assert code == 0, out
    pngs = sorted((tmp_path / "p").rglob("*.png"))
    assert len(pngs) == 3 and np.asarray(Image.open(pngs[0])).dtype == np.uint8
    # a 2D preset: one image per series, DDPM with the pack's ε-prediction
    code, out = run("generate", "-m", "xr-chest", "--model", str(packs / "xr-chest"), "-o", str(tmp_path / "x"),
                    "--patients", "3", "--condition", "pneumonia", "--sampler", "ddpm", "--steps", "20", "--json")
    assert code == 0, out
    xs = read_series(tmp_path / "x")
    assert len(xs) == 3 and xs[0].Modality == "DX" and json.loads(out)["condition"] == "pneumonia"


def test_refusals(packs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = str(packs / "ct-body")
    code, out = run("generate", "-m", "ct-pelvis", "--model", str(packs.parent / "tampered"), "-o", str(tmp_path / "t"))
    assert code != 0 and "tampered or foreign" in out and "Traceback" not in out
    assert not (tmp_path / "t").exists()
    code, out = run("generate", "-m", "mr-brain", "--model", ok, "-o", str(tmp_path / "m"))
    assert code != 0 and "serves ct-pelvis" in out
    code, out = run("generate", "-m", "ct-pelvis", "--model", ok, "-o", str(tmp_path / "c"), "--condition", "brain")
    assert code != 0 and "choose one of: pelvis, abdomen, chest" in out
    code, out = run("generate", "-m", "ct-pelvis", "--model", ok, "-o", str(tmp_path / "s"), "--steps", "5000")
    assert code != 0 and "1000 training timesteps" in out
    code, out = run("generate", "-m", "ct-pelvis", "--model", ok, "-o", str(tmp_path / "d"), "--device", "cuda")
    assert code != 0 and "CUDAExecutionProvider" in out and out.count("\n") <= 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user file")
    code, out = run("generate", "-m", "ct-pelvis", "--model", ok, "-o", str(tmp_path / "full"), "--slices", "2")
    assert code != 0 and "not empty" in out
    code, out = run("generate", "-m", "ct-pelvis", "--model", ok, "-o", str(tmp_path / "full"), "--slices", "2",
                    "--steps", "2", "--force")
    assert code == 0 and (tmp_path / "full" / "keep.txt").read_text() == "user file"
    # no pack for the preset at all
    import medsynth.generate as gen

    monkeypatch.setattr(gen, "bundled_packs_dir", lambda: tmp_path / "nothing")
    code, out = run("generate", "-m", "mr-cardiac", "-o", str(tmp_path / "np"))
    assert code != 0 and "no model pack 'mr-cardiac'" in out and "--model" in out
    # --model-dir finds a pack by the preset's default model id (ct-pelvis: ct-body-512)
    shutil.copytree(packs / "ct-body", tmp_path / "mine" / "ct-body-512")
    code, out = run("generate", "-m", "ct-pelvis", "--model-dir", str(tmp_path / "mine"), "-o", str(tmp_path / "md"),
                    "--slices", "2", "--steps", "2", "--json")
    assert code == 0 and json.loads(out)["model_id"] == "ct-body"


def test_models_lists_packs_with_cards(packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSYNTH_MODEL_DIR")
    code, out = run("models", "--model-dir", str(packs), "--model-dir", str(packs.parent / "tampered"), "--json")
    assert code == 0, out
    listed = {Path(p["root"]).name: p for p in json.loads(out)["packs"] if p["source"] == "model-dir"}
    assert set(listed) == {"ct-body", "xr-chest", "tampered"}
    # $MEDSYNTH_MODEL_DIR is listed too, and generate looks there first
    monkeypatch.setenv("MEDSYNTH_MODEL_DIR", str(packs))
    code, out = run("models", "--json")
    assert code == 0 and {Path(p["root"]).name for p in json.loads(out)["packs"] if p["source"] == "model-dir"} == \
        {"ct-body", "xr-chest"}
    assert listed["ct-body"]["metadata"]["presets"] == ["ct-pelvis", "ct-abdomen", "ct-chest"]
    assert "Random weights" in listed["ct-body"]["model_card"] and listed["ct-body"]["error"] is None
    assert "tampered" in listed["tampered"]["error"]
    code, out = run("models", "--model-dir", str(packs))
    assert code == 0 and "ct-body" in out and "xr-chest" in out
    code, out = run("models", "--model-dir", str(packs / "missing"))
    assert code != 0 and "does not exist" in out


def test_generate_never_imports_torch(packs: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from medsynth.cli.main import cli\n"
        f"cli(['generate', '-m', 'ct-pelvis', '--model', {str(packs / 'ct-body')!r}, '-o', {str(tmp_path / 'o')!r},"
        " '--slices', '2', '--steps', '2', '--json', '--format', 'nifti'], standalone_mode=False)\n"
        "assert 'onnxruntime' in sys.modules and sys.modules['torch'] is None\n"
        "print('TORCH-FREE')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "TORCH-FREE" in res.stdout, res.stderr


def test_memory_is_bounded_by_the_batch_not_the_run(packs: Path, tmp_path: Path) -> None:
    peaks = []
    for i, slices in enumerate((8, 64)):
        cfg = GenerateConfig("ct-pelvis", tmp_path / f"m{i}", slices=slices, steps=2, sampler="ddim",
                             model=packs / "ct-body", batch_size=4, seed=0)
        tracemalloc.start()
        res = generate(cfg)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res.slices == slices
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_coherent_noise_is_unit_gaussian_and_smooth_along_the_series() -> None:
    from medsynth.generate import ANCHOR_SLICES, _coherent_noise

    shape = (1, 64, 64)
    z = np.stack([_coherent_noise(7, (0, 0, 0), k, shape) for k in range(2 * ANCHOR_SLICES + 1)])
    assert z.dtype == np.float32
    assert abs(float(z.std()) - 1.0) < 0.05 and abs(float(z.mean())) < 0.05

    def corr(a: int, b: int) -> float:
        return float(np.corrcoef(z[a].ravel(), z[b].ravel())[0, 1])

    assert corr(3, 4) > 0.9  # neighbours share most of their noise
    assert abs(corr(0, ANCHOR_SLICES)) < 0.1  # anchors are independent
    assert np.array_equal(z[5], _coherent_noise(7, (0, 0, 0), 5, shape))  # reproducible
    assert not np.array_equal(z[5], _coherent_noise(7, (0, 0, 1), 5, shape))  # per series
