"""Training runs rebuilt from a latent pack's ONNX weights (`medsynth runs-from-pack`), on the tiny
real-CT pack of `tiny_latent_runs`: the rebuilt weights are the run's EMA weights, training resumes
from them and exports again, and bad requests fail cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from medsynth.cli.main import cli
from medsynth.errors import ConfigError, ModelPackError, OutputError
from medsynth.latent.recover import runs_from_pack
from medsynth.pack import bundled_packs_dir, load_pack


def test_rebuilt_weights_are_the_runs_ema_weights(tiny_latent_runs: dict[str, Path], tmp_path: Path) -> None:
    out = runs_from_pack(tiny_latent_runs["pack"], tmp_path / "ae", tmp_path / "ld")
    assert max(out.max_abs_error.values()) < 1e-4
    for run, name in (("ld", "ld"), ("ae", "ae")):
        got = load_file(str(tmp_path / name / "checkpoint.safetensors"))
        want = load_file(str(tiny_latent_runs[run] / "checkpoint.safetensors"))
        keys = [k for k in want if k.startswith("ema.") and "quant_conv_log_sigma" not in k]
        assert keys
        for k in keys:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=k)
    state = json.loads((tmp_path / "ld" / "checkpoint.json").read_text())
    assert state["step"] == load_pack(tiny_latent_runs["pack"]).metadata.training["denoiser"]["steps"]
    info = json.loads((tmp_path / "ld" / "latent_run.json").read_text())
    assert info["recovered_from"]["identity_sha256"] == load_pack(tiny_latent_runs["pack"]).identity


def test_recovered_run_trains_further_and_exports(tiny_latent_runs: dict[str, Path], tmp_path: Path) -> None:
    from medsynth.latent.denoiser import train_latent
    from medsynth.latent.export import export_latent_pack

    runs_from_pack(tiny_latent_runs["pack"], tmp_path / "ae", tmp_path / "ld")
    before = load_file(str(tmp_path / "ld" / "checkpoint.safetensors"))
    summary = train_latent(tiny_latent_runs["data"], tmp_path / "ae", tmp_path / "ld", steps=6, threads=1,
                           show_progress=False)
    assert (summary.start_step, summary.steps_done) == (4, 6)
    after = load_file(str(tmp_path / "ld" / "checkpoint.safetensors"))
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("model."))
    info = json.loads((tmp_path / "ld" / "latent_run.json").read_text())
    # the pack's latent normalisation is kept (the decoder graph carries it), not recomputed
    orig = json.loads((tiny_latent_runs["ld"] / "latent_run.json").read_text())
    np.testing.assert_allclose(info["latent_channel_mean"], orig["latent_channel_mean"], atol=1e-5)
    assert info["dataset"] == str(tiny_latent_runs["data"]) and info["manifest"]["sources"]
    pack = export_latent_pack(tmp_path / "ae", tmp_path / "ld", tmp_path / "pack", steps=2)
    meta = load_pack(pack.pack_dir).metadata
    assert meta.training["denoiser"]["steps"] == 6 and meta.data_sources
    assert meta.training["continued_from"]["denoiser_steps"] == 4  # the card says where the restart was
    assert "runs-from-pack" in (pack.pack_dir / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_resume_refuses_a_dataset_with_other_labels(tiny_latent_runs: dict[str, Path], tmp_path: Path) -> None:
    from medsynth.latent.denoiser import train_latent

    runs_from_pack(tiny_latent_runs["pack"], tmp_path / "ae", tmp_path / "ld")
    other = tmp_path / "data"
    shutil.copytree(tiny_latent_runs["data"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["labels"] = ["bladder"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="labels"):
        train_latent(other, tmp_path / "ae", tmp_path / "ld", steps=6, threads=1, show_progress=False)


def test_cli_runs_from_pack(tiny_latent_runs: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["runs-from-pack", str(tiny_latent_runs["pack"]), "--autoencoder-out",
                                   str(tmp_path / "ae"), "-o", str(tmp_path / "ld"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["denoiser_steps"] == 4
    assert (tmp_path / "ae" / "checkpoint.safetensors").is_file() and (tmp_path / "ld" / "latent_config.json").is_file()
    # the folders now hold runs: a second call refuses, with one clean line, and changes nothing
    mtime = (tmp_path / "ld" / "checkpoint.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["runs-from-pack", str(tiny_latent_runs["pack"]), "--autoencoder-out",
                                   str(tmp_path / "ae2"), "-o", str(tmp_path / "ld")])
    assert res.exit_code != 0 and "not empty" in res.output and "Traceback" not in res.output
    assert (tmp_path / "ld" / "checkpoint.json").stat().st_mtime_ns == mtime
    assert not (tmp_path / "ae2").exists()


def test_a_pixel_pack_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="latent pack"):
        runs_from_pack(bundled_packs_dir() / "ct-body", tmp_path / "ae", tmp_path / "ld")
    res = CliRunner().invoke(cli, ["runs-from-pack", "no-such-pack", "--autoencoder-out", str(tmp_path / "a"),
                                   "-o", str(tmp_path / "b")])
    assert res.exit_code != 0 and "no-such-pack" in res.output
    assert not (tmp_path / "a").exists()


def test_existing_folder_is_refused_before_anything_is_written(tiny_latent_runs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "ld").mkdir()
    (tmp_path / "ld" / "mine.txt").write_text("keep")
    with pytest.raises(OutputError):
        runs_from_pack(tiny_latent_runs["pack"], tmp_path / "ae", tmp_path / "ld")
    assert not (tmp_path / "ae").exists() and (tmp_path / "ld" / "mine.txt").read_text() == "keep"
