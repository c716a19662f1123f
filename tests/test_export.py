"""`medsynth export`: ONNX parity with PyTorch, pack format, atomic writing (tiny models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.errors import CheckpointError, ExportError, OutputError
from medsynth.pack import PackMetadata, load_pack, sha256_file

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.test_training import TINY, make_dataset  # noqa: E402

from medsynth.export import pack_writer  # noqa: E402
from medsynth.export.onnx_export import check_parity, export_onnx  # noqa: E402
from medsynth.export.pack_writer import export_run  # noqa: E402
from medsynth.training.config import ModelConfig  # noqa: E402
from medsynth.training.model import Denoiser  # noqa: E402
from medsynth.training.trainer import train  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny position-conditioned run trained hard enough that its output is far from zero."""
    root = tmp_path_factory.mktemp("export")
    ds = make_dataset(root / "ds")
    train(ds, root / "run", overrides={**TINY, "model.use_position": True, "optim.steps": 4, "optim.lr": 1e-2,
                                       "optim.ema_decay": 0.0}, progress=False)
    return root / "run"


def _random_denoiser(use_position: bool) -> Denoiser:
    torch.manual_seed(0)
    m = Denoiser(ModelConfig(channels=(8, 16, 16), use_position=use_position), num_labels=3)
    with torch.no_grad():  # MONAI zero-initialises the output conv: randomise everything
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m.eval()


@pytest.mark.parametrize("use_position", [False, True])
def test_traced_export_matches_torch_with_random_weights(tmp_path: Path, use_position: bool) -> None:
    m = _random_denoiser(use_position)
    res = export_onnx(m, tmp_path / "m.onnx", (16, 16), 1000, opset=20, exporter="legacy")
    assert res.exporter == "legacy" and res.opset == 20
    parity = check_parity(m, tmp_path / "m.onnx", (16, 16), 1000, batches=(1, 4))
    assert parity["output_max_abs"] > 0.1  # the comparison is not between zeros
    assert parity["max_abs_error"] <= 1e-4
    names = [i.name for i in ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()]
    assert names == ["sample", "timestep", "class_labels"] + (["position"] if use_position else [])


def test_export_cli_writes_a_verified_pack(run: Path, tmp_path: Path) -> None:
    pack_dir = tmp_path / "pack"
    res = CliRunner().invoke(cli, ["export", str(run), "-o", str(pack_dir), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["parity"]["max_abs_error"] <= 1e-4
    assert summary["parity"]["output_max_abs"] > 1e-2
    assert summary["parity"]["opset"] == 23
    assert sorted(p.name for p in pack_dir.iterdir()) == ["MODEL_CARD.md", "model.fp16.onnx", "model.onnx", "pack.json"]
    pack = load_pack(pack_dir)  # verifies every sha256
    meta = pack.metadata
    assert meta.presets == ("xr-chest",) and meta.modality == "DX" and meta.matrix == (32, 32)
    assert meta.labels == ("normal", "pneumonia") and meta.null_class == 2 and meta.uses_position
    assert meta.prediction_type == "v_prediction" and meta.schedule.schedule == "scaled_linear_beta"
    assert meta.default_guidance == 2.0 and meta.default_sampler == "dpmpp_2m" and meta.default_steps == 25
    assert meta.physical_range == (0.0, 4095.0) and meta.unit == "US"
    assert meta.data_sources[0]["name"] == "discs.npy" and meta.data_sources[0]["licence"] == "CC0-1.0"
    assert meta.training["steps"] == 4 and meta.training["weights"] == "EMA" and meta.training["hardware"]
    assert meta.files["model.onnx"] == sha256_file(pack_dir / "model.onnx")
    # one self-contained file with a dynamic batch, run here at batch 5 in both precisions
    proto = onnx.load(str(pack_dir / "model.onnx"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 20
    feed = {"sample": np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32),
            "timestep": np.array([0, 10, 500, 900, 999], np.int64), "class_labels": np.array([0, 1, 2, 0, 1], np.int64),
            "position": np.linspace(0, 1, 5).astype(np.float32)}
    out32 = ort.InferenceSession(str(pack.onnx_path())).run(["prediction"], feed)[0]
    out16 = ort.InferenceSession(str(pack.onnx_path(fp16=True))).run(["prediction"], feed)[0]
    assert out32.shape == (5, 1, 32, 32) and out32.dtype == np.float32 and out16.dtype == np.float32
    assert np.abs(out32 - out16).max() < 0.05 * max(1.0, float(np.abs(out32).max()))
    card = (pack_dir / "MODEL_CARD.md").read_text()
    assert "discs.npy" in card and "## Quality" in card and meta.files["model.onnx"] in card
    # an existing pack is not overwritten without --force
    again = CliRunner().invoke(cli, ["export", str(run), "-o", str(pack_dir), "--no-fp16", "--exporter", "legacy"])
    assert again.exit_code == 1 and "--force" in again.output
    forced = CliRunner().invoke(cli, ["export", str(run), "-o", str(pack_dir), "--no-fp16", "--exporter", "legacy",
                                      "--force", "--guidance", "1.5"])
    assert forced.exit_code == 0, forced.output
    meta2 = load_pack(pack_dir).metadata
    assert "model.fp16.onnx" not in meta2.files and meta2.default_guidance == 1.5
    assert not (pack_dir / "model.fp16.onnx").exists()


def test_failed_parity_writes_nothing(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_writer, "FP32_TOLERANCE", -1.0)  # any difference, even 0, now fails
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_run(run, tmp_path / "pack", fp16=False, exporter="legacy")
    assert list(tmp_path.iterdir()) == []  # no pack, no partial folder


def test_export_refuses_corrupt_runs(run: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoint.safetensors").write_bytes(b"\x00" * 64)
    res = CliRunner().invoke(cli, ["export", str(broken), "-o", str(tmp_path / "p")])
    assert res.exit_code == 1 and "corrupt checkpoint" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p").exists()
    with pytest.raises(CheckpointError, match="not a training run"):
        export_run(tmp_path, tmp_path / "p2")
    with pytest.raises(OutputError):
        export_run(run, run)  # the run folder itself exists


def test_pack_metadata_round_trips(run: Path, tmp_path: Path) -> None:
    export_run(run, tmp_path / "p", fp16=False, exporter="legacy", opset=20, model_id="my-xr")
    raw = json.loads((tmp_path / "p" / "pack.json").read_text())
    meta = PackMetadata.from_json(raw)
    assert meta.model_id == "my-xr" and meta.parity["opset"] == 20 and meta.parity["exporter"] == "legacy"
    assert meta.to_json() == raw
