"""Data-parallel training: 2 gloo processes under torchrun train the weights of 1 process (real X-rays)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsynth.errors import ConfigError, OutputError
from medsynth.prepare import PrepareConfig, prepare_dataset
from medsynth.training.config import ModelConfig, OptimConfig

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from medsynth.training.distributed import DistContext, init_distributed, micro_batches  # noqa: E402
from medsynth.training.model import build_denoiser  # noqa: E402
from medsynth.training.trainer import BatchSampler, StepDraws, train  # noqa: E402

# Everything but the micro-batch: the torchrun job and the single process read the same file.
TOML = """\
[model]
channels = [8, 16, 16]
[optim]
steps = 2
batch_size = 5
lr = 1e-3
warmup_steps = 0
precision = "fp32"
threads = 1
sample_every = 0
sample_steps = 2
sample_per_label = 1
log_every = 1
"""
# 2 processes sum the gradients of the same images in another order than one process: float
# rounding. Weights are compared by what they compute (outputs on real images, measured ~2e-6 after
# 4 steps): the biases just before a one-channel-per-group GroupNorm have an exactly zero gradient,
# so Adam turns rounding noise into ±lr steps there without changing the function. The Adam moments
# hold the gradients themselves (measured ~4e-8); they would expose a wrong loss weight.
OUT_TOL = 1e-4
MOMENT_TOL = 1e-6


@pytest.fixture(scope="module")
def xr(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """270 real chest X-rays (PneumoniaMNIST validation split) prepared for xr-chest (32x32)."""
    out = tmp_path_factory.mktemp("xr") / "ds"
    prepare_dataset([shared_data / "xr" / "pneumoniamnist_28.npz"], out, PrepareConfig(preset="xr-chest", split="val"))
    return out


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(run / "checkpoint.safetensors"))


def _outputs(tensors: dict[str, torch.Tensor], prefix: str, ds: Path) -> torch.Tensor:
    """The denoiser's output [8, 1, 32, 32] for 8 real slices at timesteps 0..999, all conditions."""
    model = build_denoiser(ModelConfig(channels=(8, 16, 16)), num_labels=2)
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    model.eval()
    x = torch.from_numpy(np.load(ds / "slices.npy")[:8]).unsqueeze(1)
    t = torch.tensor([0, 50, 200, 400, 600, 800, 950, 999])
    with torch.no_grad():
        return model(x, t, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ds: Path) -> tuple[float, float]:
    """(max |output difference| of model and EMA, max |Adam moment difference|)."""
    assert a.keys() == b.keys()
    out = max(float((_outputs(a, p, ds) - _outputs(b, p, ds)).abs().max()) for p in ("model.", "ema."))
    moments = max(float((a[k].double() - b[k].double()).abs().max()) for k in a
                  if k.startswith("optim.") and k.endswith(("exp_avg", "exp_avg_sq")))
    return out, moments


def _assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ds: Path) -> None:
    out, moments = _distance(a, b, ds)
    assert out < OUT_TOL and moments < MOMENT_TOL, (out, moments)


def _log(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_shards_cover_the_global_batch_once() -> None:
    for world in (1, 2, 3, 4):
        for n in range(world, 12):
            parts = [DistContext(rank=r, world_size=world).shard_range(n) for r in range(world)]
            got = np.concatenate([np.arange(n)[p] for p in parts])
            assert got.tolist() == list(range(n))  # contiguous, in order, each index once
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1
            # the loss weights of all micro-batches of all ranks average (as DDP does) to one mean
            weights = [DistContext(rank=r, world_size=world).loss_weight(c.stop - c.start, n)
                       for r, p in enumerate(parts) for c in micro_batches(p.stop - p.start, 2)]
            assert sum(weights) / world == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="cannot be split over 4 processes"):
        DistContext(rank=0, world_size=4).shard_range(3)
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batches(5, 0) == [slice(0, 5)] == micro_batches(5, 8)
    # each rank's slice of the global draws is the global draws of its images
    opt = OptimConfig()  # augmentation and label dropout on
    full = StepDraws.draw(torch.Generator().manual_seed(1), 5, (4, 4), opt, 1000)
    part = StepDraws.draw(torch.Generator().manual_seed(1), 5, (4, 4), opt, 1000).take(slice(3, 5))
    assert torch.equal(full.noise[3:], part.noise) and torch.equal(full.timesteps[3:], part.timesteps)
    assert full.shifts is not None and part.shifts is not None and torch.equal(full.shifts[3:], part.shifts)
    assert np.array_equal(DistContext(rank=1, world_size=2).shard(BatchSampler(9, 5, 0).indices(3)),
                          BatchSampler(9, 5, 0).indices(3)[3:])


def test_single_process_context_and_launch_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed, ctx.device.type) == (0, 1, True, False, "cpu")
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(ctx.all_reduce_mean(x), x) and torch.equal(ctx.all_reduce_sum(x), x)
    def refuse() -> None:
        raise OutputError("refused")

    with pytest.raises(OutputError, match="refused"):
        ctx.on_main(refuse)
    assert ctx.on_main(lambda: 7) == 7
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set; start the processes with torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")


def test_gradient_accumulation_keeps_the_step(xr: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML)
    whole = train(xr, tmp_path / "whole", config_file=cfg, progress=False)
    acc = train(xr, tmp_path / "acc", config_file=cfg, overrides={"optim.micro_batch": 2}, progress=False)
    assert whole.world_size == acc.world_size == 1
    a, b = _tensors(tmp_path / "whole"), _tensors(tmp_path / "acc")
    _assert_same_training(a, b, xr)
    assert [e["loss"] for e in _log(tmp_path / "whole")] == pytest.approx([e["loss"] for e in _log(tmp_path / "acc")],
                                                                           abs=1e-5)
    out_w = [v for k, v in a.items() if k.startswith("model.unet.out") and k.endswith("weight")]
    assert out_w and max(float(v.abs().max()) for v in out_w) > 1e-4  # trained: the zero-initialised layer moved


def test_two_gloo_processes_equal_one_and_resume_in_one(xr: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML)
    # the reference: one process, the whole global batch of 5 in one pass; 2 steps, then 4
    train(xr, tmp_path / "one", config_file=cfg, progress=False)
    one_at_2 = _tensors(tmp_path / "one")
    log_one = _log(tmp_path / "one")
    train(xr, tmp_path / "one", overrides={"optim.steps": 4}, resume=True, progress=False)
    one_at_4 = _tensors(tmp_path / "one")

    # 2 gloo processes (3 + 2 images, micro-batches of 2: accumulation and uneven shards)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medsynth.cli.main", "train", str(xr), "-o", str(run), "--config", str(cfg),
           "--micro-batch", "2", "--quiet", "--json"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)  # rank 0 alone prints
    assert summary["world_size"] == 2 and summary["steps_done"] == 2
    assert "2 processes (gloo)" in summary["hardware"]
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["step"] == 2 and state["extra"]["world_size"] == 2
    log_ddp = _log(run)
    assert [e["step"] for e in log_ddp] == [1, 2]  # one log line per step, not one per process
    assert [e["loss"] for e in log_ddp] == pytest.approx([e["loss"] for e in log_one], abs=1e-5)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000002.png"]
    _assert_same_training(_tensors(run), one_at_2, xr)
    out, moments = _distance(one_at_2, one_at_4, xr)  # the tolerances are far below what 2 steps change
    assert out > 100 * OUT_TOL and moments > 100 * MOMENT_TOL

    # the 2-process checkpoint resumes in 1 process and lands where the 1-process run did
    resumed = train(xr, run, overrides={"optim.steps": 4, "optim.micro_batch": 0}, resume=True, progress=False)
    assert (resumed.start_step, resumed.steps_done, resumed.world_size) == (2, 4, 1)
    _assert_same_training(_tensors(run), one_at_4, xr)
