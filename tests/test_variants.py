"""``generate --variants-of``: SDEdit variants of a real CT series with a tiny latent pack (trained
in seconds on real CT, as in tests/test_latent.py).

What these tests prove: the mechanics — real slices are encoded, noised to the timestep the
strength names and denoised over the truncated schedule; with a fixed seed the variants move
further from the source's reconstruction as the strength grows; the files are dciodvfy-clean,
derived synthetic images with their own identity, the method and strength named, the source
only as a salted hash; pixel-space packs and unsuitable series are refused in one line. What they
do not prove: that nearest-source SSIM falls with strength on a trained pack (an untrained tiny
autoencoder reconstructs the source with SSIM ≈ 0.03, so its SSIMs are noise) — that table is
measured by benchmarks/bench_variants.py on a real latent pack.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.variants import sdedit_timesteps

SOURCE = ("ct", "upper_abdomen_dicom")


@pytest.fixture(scope="module")
def latent_pack(tiny_latent_runs: dict[str, Path]) -> Path:
    return tiny_latent_runs["pack"]


def _variants(source: Path, pack: Path, out: Path, strength: float, *extra: str) -> dict:
    res = CliRunner().invoke(cli, ["generate", "--variants-of", str(source), "--strength", str(strength), "--model",
                                   str(pack), "--steps", "10", "--seed", "3", "--threads", "1", "-o", str(out),
                                   "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def test_sdedit_timesteps() -> None:
    ts = sdedit_timesteps(1000, 20, 0.5)
    assert ts.t[0] == 500 and len(ts) == 10 and ts.t_prev[-1] == -1
    assert all(a > b for a, b in zip(ts.t, ts.t[1:], strict=False))
    assert len(sdedit_timesteps(1000, 20, 0.01)) == 1 and sdedit_timesteps(1000, 20, 0.01).t[0] == 10


def test_variants_by_strength(shared_data: Path, latent_pack: Path, tmp_path: Path) -> None:
    source = shared_data.joinpath(*SOURCE)
    real = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(source.iterdir())]
    real_uids = {str(d.get(k, "")) for d in real for k in ("SOPInstanceUID", "StudyInstanceUID", "PatientID")} - {""}
    plain_sha = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.iterdir()))).hexdigest()
    moved = {}
    for s in (0.05, 0.2, 0.5, 0.8):
        out = tmp_path / f"s{s}"
        summary = _variants(source, latent_pack, out, s)
        assert summary["start_timestep"] == round(s * 999) and summary["slices"] == len(real)
        files = sorted(out.rglob("IM*"))
        assert len(files) == len(real)
        ds = pydicom.dcmread(files[0])
        assert ds.SyntheticData == "YES" and ds.ImageType[0] == "DERIVED"
        assert "SDEdit" in ds.DerivationDescription and f"strength {s:g}" in ds.DerivationDescription
        assert str(ds.SOPInstanceUID) not in real_uids and str(ds.PatientID) not in real_uids
        text = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()).decode("latin-1")
        assert plain_sha not in text and not any(u in text for u in real_uids)  # the source only as a salted hash
        if s in (0.2, 0.5, 0.8):
            assert _dciodvfy_errors(files[0]) == []
        report = json.loads((out / "variants_report.json").read_text())
        assert len(report["nearest_source_ssim"]) == len(real)
        assert all(-1.0 <= v <= 1.0 for v in report["nearest_source_ssim"])
        moved[s] = float(np.mean(report["from_reconstruction"]))
    # fixed seed: a weak edit stays near the source's reconstruction, stronger ones move further away
    assert moved[0.05] < moved[0.2] < moved[0.8]
    # same seed, same variants
    again = tmp_path / "again"
    _variants(source, latent_pack, again, 0.2)
    a = [pydicom.dcmread(p).pixel_array for p in sorted((tmp_path / "s0.2").rglob("IM*"))]
    b = [pydicom.dcmread(p).pixel_array for p in sorted(again.rglob("IM*"))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_variants_refusals(shared_data: Path, latent_pack: Path, tmp_path: Path) -> None:
    source = shared_data.joinpath(*SOURCE)
    res = CliRunner().invoke(cli, ["generate", "--variants-of", str(source), "--strength", "0.5", "-o",
                                   str(tmp_path / "o1")])  # the bundled ct-body pack is pixel-space
    assert res.exit_code != 0 and "latent-diffusion pack with an encoder" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o1").exists()
    res = CliRunner().invoke(cli, ["generate", "--variants-of", str(shared_data / "mr" / "cardiac_lge_dicom"),
                                   "--strength", "0.5", "--model", str(latent_pack), "-o", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "not mr-cardiac" in res.output and "Traceback" not in res.output
    for args in (["--strength", "1.0"], ["--strength", "0"], []):
        res = CliRunner().invoke(cli, ["generate", "--variants-of", str(source), *args, "--model", str(latent_pack),
                                       "-o", str(tmp_path / "o3")])
        assert res.exit_code == 2, res.output
    res = CliRunner().invoke(cli, ["generate", "-m", "ct-pelvis", "--strength", "0.5", "-o", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "--strength needs --variants-of" in res.output


def test_like_with_a_latent_pack(shared_data: Path, latent_pack: Path, tmp_path: Path) -> None:
    """``--like`` through a latent pack: the same source geometry, pixels from the latent sampler."""
    source = shared_data.joinpath(*SOURCE)
    res = CliRunner().invoke(cli, ["generate", "--like", str(source), "--model", str(latent_pack), "--steps", "1",
                                   "--seed", "2", "--threads", "1", "--transfer-syntax", "explicit", "-o",
                                   str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "out").rglob("IM*"))
    real = pydicom.dcmread(next(p for p in sorted(source.iterdir())), stop_before_pixels=True)
    ds = pydicom.dcmread(files[0])
    assert len(files) == len(list(source.iterdir())) and (ds.Rows, ds.Columns) == (real.Rows, real.Columns)
    assert ds.ManufacturerModelName == "medsynth ct-body-512" and ds.SyntheticData == "YES"  # the pack's model id
    assert _dciodvfy_errors(files[0]) == []
