"""`medsynth train`: configuration, exact resume, clean refusals (tiny datasets, tiny UNets, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.dataset import DatasetManifest, SourceRecord, save_dataset
from medsynth.errors import CheckpointError, ConfigError, DatasetError, OutputError
from medsynth.training.config import TrainConfig, load_config_file

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from medsynth.training.trainer import BatchSampler, augment, train  # noqa: E402

TINY = {
    "model.channels": (8, 16, 16),
    "optim.batch_size": 4,
    "optim.sample_steps": 2,
    "optim.sample_per_label": 2,
    "optim.sample_every": 0,
    "optim.threads": 1,
    "optim.warmup_steps": 0,
    "optim.lr": 1e-3,
}
TINY_FLAGS = ["--channels", "8,16,16", "--batch-size", "4", "--threads", "1", "--quiet"]


def make_dataset(root: Path, n: int = 12, hw: tuple[int, int] = (32, 32), labels: tuple[str, ...] = ("normal", "pneumonia"),
                 label_values: list[int] | None = None, preset: str = "xr-chest") -> Path:
    """A tiny xr-chest-like dataset: discs on a dark background, [-1, 1]."""
    rng = np.random.default_rng(0)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.array(label_values if label_values is not None else [i % len(labels) for i in range(n)], dtype=np.int64)
    slices = np.stack([
        np.where((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 4 + 2 * lab[i]) ** 2, 0.5, -0.8) + rng.normal(0, 0.05, hw)
        for i in range(n)
    ]).clip(-1, 1).astype(np.float32)
    manifest = DatasetManifest(
        preset=preset, matrix=hw, pixel_spacing_mm=(10.0, 10.0), physical_range=(0.0, 4095.0), unit="US",
        labels=labels,
        sources=(SourceRecord(name="discs.npy", sha256="ab" * 32, slices=n, label=labels[0], licence="CC0-1.0"),),
        slice_sources=tuple([0] * n),
    )
    # save_dataset validates label indices; write the arrays ourselves when a test needs a bad one.
    if lab.max() < len(labels):
        save_dataset(root, manifest, slices, lab, rng.random(n).astype(np.float32))
    else:
        root.mkdir(parents=True)
        np.save(root / "slices.npy", slices)
        np.save(root / "labels.npy", lab)
        np.save(root / "positions.npy", rng.random(n).astype(np.float32))
        (root / "manifest.json").write_text(json.dumps(manifest.to_json()), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "xr")


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(run / "checkpoint.safetensors"))


def test_config_from_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[model]\nchannels = [16, 32]\nattention_levels = [false, true]\nnum_head_channels = 16\n'
                 '[schedule]\nschedule = "cosine"\nprediction_type = "epsilon"\n[optim]\nsteps = 7\nloss = "huber"\n')
    cfg = load_config_file(f)
    assert cfg.model.channels == (16, 32) and cfg.schedule.schedule == "cosine" and cfg.optim.loss == "huber"
    cfg2 = cfg.with_overrides({"optim.steps": "9", "model.use_position": "true"})
    assert cfg2.optim.steps == 9 and cfg2.model.use_position and cfg.optim.steps == 7
    # the saved JSON form round-trips
    j = tmp_path / "c.json"
    j.write_text(json.dumps(cfg2.to_json()))
    assert load_config_file(j) == cfg2
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig().with_overrides({"optim.stepz": 3})
    with pytest.raises(ConfigError, match="prediction_type"):
        TrainConfig().with_overrides({"schedule.prediction_type": "x0"})
    with pytest.raises(ConfigError, match="attention_levels"):
        TrainConfig().with_overrides({"model.channels": (8, 16)})
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nsteps=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)


def test_batches_are_deterministic_and_augment_keeps_air() -> None:
    s = BatchSampler(10, 4, seed=3)
    assert np.array_equal(s.indices(5), BatchSampler(10, 4, seed=3).indices(5))
    first_epoch = np.concatenate([s.indices(0), s.indices(1), s.indices(2)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # each slice once per epoch
    x = torch.full((3, 1, 8, 8), -1.0)
    x[:, :, 2:6, 2:6] = 0.5
    y = augment(x, 0.05, 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) == -1.0  # air stays air
    # translation only moves the square by ≤ 1 pixel: its mass stays the same
    assert torch.allclose((y > 0).sum(dim=(1, 2, 3)).float(), torch.full((3,), 16.0))


def test_resume_is_bitwise_exact(dataset: Path, tmp_path: Path) -> None:
    ov = {**TINY, "model.use_position": True, "optim.steps": 4}
    straight = train(dataset, tmp_path / "a", overrides=ov, progress=False)
    assert straight.stopped == "completed" and straight.steps_done == 4
    half = train(dataset, tmp_path / "b", overrides={**ov, "optim.steps": 2}, progress=False)
    assert half.steps_done == 2
    resumed = train(dataset, tmp_path / "b", overrides={"optim.steps": 4}, resume=True, progress=False)
    assert resumed.start_step == 2 and resumed.steps_done == 4
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    assert any(k.startswith("ema.") for k in a) and any(k.startswith("optim.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # training changed the weights (the zero-initialised output layer is no longer zero)
    out_w = [v for k, v in a.items() if k.startswith("model.") and "out" in k and k.endswith("weight")]
    assert out_w and any(float(v.abs().max()) > 0 for v in out_w)
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and all(np.isfinite(e["loss"]) for e in log)
    assert (tmp_path / "b" / "samples" / "step_000004.png").is_file()


def test_ctrl_c_stops_after_a_complete_step(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import medsynth.training.trainer as trainer

    ov = {**TINY, "optim.steps": 4}
    train(dataset, tmp_path / "a", overrides=ov, progress=False)
    # Ctrl-C lands after the optimizer update of the second step, before the step is counted
    ema_update, calls = trainer._ema_update, []

    def ema_then_ctrl_c(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        ema_update(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "_ema_update", ema_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "b", overrides=ov, progress=False)
    # the request is shared at the next step's all-reduce: that step completes, then the run stops
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 3
    monkeypatch.setattr(trainer, "_ema_update", ema_update)
    train(dataset, tmp_path / "b", overrides={"optim.steps": 4}, resume=True, progress=False)
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # the interrupted run resumes exactly
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C behaves as before again


def test_cli_train_json_and_outputs(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "t.toml"
    cfg.write_text('[schedule]\nschedule = "linear_beta"\n[optim]\nsample_per_label = 1\nsample_steps = 2\n')
    res = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--config", str(cfg), "--steps", "3",
                                   "--loss", "huber", "--precision", "fp32", "--sample-every", "2", "--json",
                                   *TINY_FLAGS])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps_done"] == 3 and summary["precision"] == "fp32" and summary["stopped"] == "completed"
    saved = json.loads((run / "config.json").read_text())
    assert saved["schedule"]["schedule"] == "linear_beta" and saved["optim"]["loss"] == "huber"
    for name in ("checkpoint.safetensors", "checkpoint.json", "run.json", "train_log.jsonl",
                 "samples/step_000002.png", "samples/step_000003.png"):
        assert (run / name).is_file(), name
    # a second `train` into the same folder without --resume is refused
    again = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--steps", "3", *TINY_FLAGS])
    assert again.exit_code != 0 and "--resume" in again.output and "Traceback" not in again.output
    # a model setting cannot change on resume
    changed = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--resume", "--loss", "mse", "--quiet"])
    assert changed.exit_code == 2 and "cannot change when resuming" in changed.output


def test_time_budget_stops_with_checkpoint(dataset: Path, tmp_path: Path) -> None:
    s = train(dataset, tmp_path / "r", overrides={**TINY, "optim.steps": 1000, "optim.max_minutes": 1e-4},
              progress=False)
    assert s.stopped == "time_budget" and 1 <= s.steps_done < 1000
    state = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert state["step"] == s.steps_done


def test_corrupt_checkpoint_is_refused(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(dataset, run, overrides={**TINY, "optim.steps": 1}, progress=False)
    weights = run / "checkpoint.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        train(dataset, run, overrides={"optim.steps": 2}, resume=True, progress=False)
    res = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--resume", "--steps", "2", "--quiet"])
    assert res.exit_code == 1 and "corrupt checkpoint" in res.output and "Traceback" not in res.output
    (run / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint state"):
        train(dataset, run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="run folder not found"):
        train(dataset, tmp_path / "empty", resume=True, progress=False)


def test_wrong_shape_dataset_is_refused(tmp_path: Path) -> None:
    small = make_dataset(tmp_path / "small", hw=(16, 16))
    with pytest.raises(DatasetError, match="16x16 but preset xr-chest models 32x32"):
        train(small, tmp_path / "r", overrides={**TINY, "optim.steps": 1}, progress=False)
    assert not (tmp_path / "r").exists()  # nothing written for a refused dataset
    ok = make_dataset(tmp_path / "ok")
    with pytest.raises(DatasetError, match="divisible by 64"):
        train(ok, tmp_path / "r", overrides={**TINY, "model.channels": (8,) * 7,
                                             "model.attention_levels": (False,) * 7}, progress=False)
    res = CliRunner().invoke(cli, ["train", str(small), "-o", str(tmp_path / "r2"), *TINY_FLAGS])
    assert res.exit_code == 1 and "16x16" in res.output and "Traceback" not in res.output


def test_missing_label_is_refused(dataset: Path, tmp_path: Path) -> None:
    # a slice whose label index has no name in the manifest
    bad = make_dataset(tmp_path / "bad", n=4, label_values=[0, 1, 2, 0])
    res = CliRunner().invoke(cli, ["train", str(bad), "-o", str(tmp_path / "r"), *TINY_FLAGS])
    assert res.exit_code == 1 and "label index 2 has no name" in res.output
    # resuming on a dataset that lacks a label the run was trained with
    run = tmp_path / "run"
    train(dataset, run, overrides={**TINY, "optim.steps": 1}, progress=False)
    # a named label without slices trains (prepare lists every preset condition) but is reported
    one_label = make_dataset(tmp_path / "one", n=4, label_values=[0, 0, 0, 0])
    s = train(one_label, tmp_path / "r1", overrides={**TINY, "optim.steps": 1}, progress=False)
    assert s.warnings == ("label 'pneumonia' has no slices in the dataset; the model will not learn it",)
    fewer = make_dataset(tmp_path / "fewer", n=4, labels=("normal",))
    with pytest.raises(DatasetError, match=r"lacks label\(s\) \['pneumonia'\]"):
        train(fewer, run, overrides={"optim.steps": 2}, resume=True, progress=False)


def test_output_must_be_a_new_or_empty_folder(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        train(dataset, tmp_path / "busy", overrides={**TINY, "optim.steps": 1}, progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_ct_is_trained_without_intensity_jitter(tmp_path: Path) -> None:
    """CT values are absolute HU: a ±5 % contrast jitter would be ±53 HU at water, so it is off for CT
    (the run records 0 and says why); other modalities keep it."""
    rng = np.random.default_rng(0)
    manifest = DatasetManifest(
        preset="ct-pelvis", matrix=(64, 64), pixel_spacing_mm=(6.0, 6.0), physical_range=(-1024.0, 2047.0),
        unit="HU", labels=("pelvis", "abdomen", "chest"),
        sources=(SourceRecord(name="ct.npy", sha256="cd" * 32, slices=4, label="pelvis", licence="CC0-1.0"),),
        slice_sources=(0, 0, 0, 0))
    save_dataset(tmp_path / "ct", manifest, rng.uniform(-1, 0, (4, 64, 64)).astype(np.float32),
                 np.zeros(4, np.int64), np.linspace(0, 1, 4, dtype=np.float32))
    s = train(tmp_path / "ct", tmp_path / "run", overrides={**TINY, "optim.steps": 1}, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["intensity_jitter"] == 0.0
    assert any("jitter is off" in w for w in s.warnings)
    assert TrainConfig().optim.intensity_jitter > 0  # the X-ray/MR default is unchanged
