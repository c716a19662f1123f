"""The latent denoiser and its training loop (``medsynth train-latent``).

:class:`LatentDenoiser` takes ``sample`` float32 [B, C, h, w] (noisy scaled latent), ``timestep``
int64 [B], ``class_labels`` int64 [B] (``num_labels`` = null class), ``position`` float32 [B] in
[0, 1] and ``previous`` float32 [B, C, h, w] (the previous slice's clean scaled latent; all zeros
= no previous slice). Position and a has-previous flag enter as constant planes beside the sample
and previous latent, so the exported ONNX graph has exactly these five inputs. Output: v or ε
[B, C, h, w].

Training data: the dataset's slices encoded once by the autoencoder (latent means), normalised per
channel, (z − mean_c) / std_c over the training latents (``latent_channel_mean`` / ``latent_channel_std``
in the run's ``latent_run.json``; the exported encoder and decoder carry this affine, so the pack's
``scale_factor`` is 1). Runs made before per-channel normalisation keep their single
``scale_factor`` = 1 / std of all latents. A CT autoencoder puts most of its bone and fat contrast in
its low-variance channels (in-body std 0.37 against 1.60 for the air/body channel): a single scale
left that contrast ~10× below the diffusion noise. Pairs (slice, its inferior neighbour in
the same source volume). Every random draw of step ``s`` comes from (seed, s): resuming is exact.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medsynth.dataset import load_dataset
from medsynth.errors import CheckpointError, ConfigError, OutputError
from medsynth.latent.autoencoder import encode, load_autoencoder
from medsynth.latent.config import LatentDenoiserConfig, denoiser_from_json, save_json, to_json, with_steps
from medsynth.training.checkpoint import STATE_NAME, load_checkpoint, load_state_strict, save_checkpoint

LATENT_CONFIG_NAME = "latent_config.json"
LATENT_RUN_NAME = "latent_run.json"
LATENTS_NAME = "latents.npy"
LOG_NAME = "latent_log.jsonl"


class LatentDenoiser(torch.nn.Module):
    """(x_t, t, class, position, previous) → v or ε; shapes in the module docstring."""

    def __init__(self, cfg: LatentDenoiserConfig, latent_channels: int, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.latent_channels = latent_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=2 * latent_channels + 2, out_channels=latent_channels,
            num_res_blocks=cfg.num_res_blocks, channels=tuple(cfg.channels),
            attention_levels=tuple(cfg.attention_levels), norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels, num_class_embeds=num_labels + 1, use_flash_attention=True,
        )

    @property
    def null_class(self) -> int:
        return self.num_labels

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
                position: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(sample[:, :1])
        pos = (position.to(sample.dtype) * 2.0 - 1.0).reshape(-1, 1, 1, 1) * ones
        has_prev = (previous.abs().amax(dim=(1, 2, 3)) > 0).to(sample.dtype).reshape(-1, 1, 1, 1) * ones
        x = torch.cat([sample, previous.to(sample.dtype), pos, has_prev], dim=1)
        return self.unet(x, timesteps=timestep, class_labels=class_labels)


@dataclass(frozen=True)
class LatentData:
    """Scaled latents float32 [N, C, h, w], labels [N], positions [N], and for every slice the index
    of its inferior neighbour in the same volume (-1 = none)."""

    latents: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    positions: npt.NDArray[np.float32]
    previous: npt.NDArray[np.int64]
    scale_factor: float
    label_names: tuple[str, ...]
    channel_mean: tuple[float, ...] | None = None  # per-channel normalisation (None: single scale_factor)
    channel_std: tuple[float, ...] | None = None


def _previous_index(sources: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    prev = np.full(len(sources), -1, dtype=np.int64)
    same = sources[1:] == sources[:-1]
    prev[1:][same] = np.arange(len(sources) - 1)[same]
    return prev


def build_latent_data(dataset: Path, ae_run: Path, run_dir: Path, per_channel: bool = True,
                      stats: tuple[Sequence[float], Sequence[float]] | None = None) -> LatentData:
    """Encode ``dataset`` with the autoencoder of ``ae_run`` (once; cached in ``run_dir``), normalised
    per channel (``per_channel``; by ``stats`` = (mean, std) per channel when given, as a resumed run
    keeps the normalisation its weights were trained with, else by the data's own) or by one scale
    factor (runs made before per-channel normalisation)."""
    ds = load_dataset(dataset)
    cache = run_dir / LATENTS_NAME
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
    else:
        _, ae = load_autoencoder(ae_run)
        z = encode(ae, np.asarray(ds.slices))
        tmp = run_dir / f".{LATENTS_NAME}.partial"
        with open(tmp, "wb") as fh:
            np.save(fh, z)
        tmp.replace(cache)
    if len(z) != len(ds):
        raise CheckpointError(f"cached latents hold {len(z)} slices, the dataset {len(ds)}", cache)
    sources = np.asarray(ds.manifest.slice_sources or np.zeros(len(ds)), dtype=np.int64)
    labels = np.asarray(ds.labels, dtype=np.int64)
    positions = np.asarray(ds.positions, dtype=np.float32)
    if per_channel:
        if stats is not None:
            mean, std = np.asarray(stats[0], dtype=np.float64), np.asarray(stats[1], dtype=np.float64)
            if mean.shape != (z.shape[1],) or std.shape != (z.shape[1],):
                raise CheckpointError(f"the run's latent normalisation has {mean.size} channels, the autoencoder "
                                      f"{z.shape[1]}", run_dir)
        else:
            mean = z.mean(axis=(0, 2, 3), dtype=np.float64)
            std = np.maximum(z.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
        normed = ((z - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        return LatentData(normed, labels, positions, _previous_index(sources), 1.0, ds.manifest.labels,
                          tuple(float(v) for v in mean), tuple(float(v) for v in std))
    scale = float(1.0 / max(float(np.std(z)), 1e-6))
    return LatentData((z * scale).astype(np.float32), labels, positions, _previous_index(sources), scale,
                      ds.manifest.labels)


@dataclass(frozen=True)
class LatentTrainSummary:
    run_dir: Path
    start_step: int
    steps_done: int
    steps_target: int
    last_loss: float | None
    train_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "start_step": self.start_step, "steps_done": self.steps_done,
                "steps_target": self.steps_target, "last_loss": self.last_loss,
                "train_seconds": round(self.train_seconds, 1)}


def read_latent_run(run_dir: Path) -> tuple[LatentDenoiserConfig, dict[str, Any]]:
    cpath, ipath = run_dir / LATENT_CONFIG_NAME, run_dir / LATENT_RUN_NAME
    if not cpath.is_file() or not ipath.is_file():
        raise CheckpointError(f"not a latent-diffusion run (no {LATENT_CONFIG_NAME})", run_dir)
    try:
        return (denoiser_from_json(json.loads(cpath.read_text(encoding="utf-8"))),
                json.loads(ipath.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"run file is not valid JSON ({exc.msg})", run_dir) from None


def _batch(data: LatentData, cfg: LatentDenoiserConfig, step: int, null: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s batch: x0, noise, timesteps, labels, positions, previous (all from (seed, step))."""
    rng = np.random.default_rng([cfg.seed, step, 23])
    n = len(data.latents)
    take = rng.choice(n, cfg.batch_size, replace=n < cfg.batch_size)
    dropout = cfg.previous_dropout_at(step)
    x0 = data.latents[take]
    prev = np.zeros_like(x0)
    for b, i in enumerate(take):
        p = data.previous[i]
        if p >= 0 and rng.random() >= dropout:
            sigma = rng.random() * cfg.previous_noise
            prev[b] = data.latents[p] + sigma * rng.standard_normal(x0.shape[1:]).astype(np.float32)
    labels = data.labels[take].copy()
    labels[rng.random(cfg.batch_size) < cfg.label_dropout] = null
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = rng.integers(0, cfg.schedule.num_train_timesteps, cfg.batch_size)
    return (torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t.astype(np.int64)),
            torch.from_numpy(labels), torch.from_numpy(data.positions[take].copy()), torch.from_numpy(prev))


def train_latent(
    dataset: str | Path,
    ae_run: str | Path,
    run_dir: str | Path,
    config: LatentDenoiserConfig | None = None,
    *,
    steps: int | None = None,
    max_minutes: float | None = None,
    threads: int | None = None,
    show_progress: bool = True,
    previous_dropout_from: tuple[int, float] | None = None,
) -> LatentTrainSummary:
    """Train (or resume) a latent denoiser on ``dataset`` encoded by the autoencoder of ``ae_run``.

    ``previous_dropout_from`` = (step, dropout) adds a phase to the run's config: from ``step`` on,
    training pairs lose their previous slice with probability ``dropout``. On a resumed run the
    step must not lie before the checkpoint (history is not rewritten); the phase is saved in the
    run's config, so the run replays from scratch in one call."""
    dataset, ae_run, run_dir = Path(dataset), Path(ae_run), Path(run_dir)
    resume = (run_dir / STATE_NAME).is_file() and (run_dir / LATENT_CONFIG_NAME).is_file()
    per_channel = True
    if resume:
        saved, saved_info = read_latent_run(run_dir)
        per_channel = "latent_channel_mean" in saved_info
        cfg = with_steps(saved, steps)
        if config is not None and with_steps(config, cfg.steps) != replace(cfg, previous_dropout_from=config.previous_dropout_from):
            raise ConfigError("the run folder holds a latent denoiser with other settings; use a new folder", run_dir)
        if previous_dropout_from is not None and previous_dropout_from not in cfg.previous_dropout_from:
            done = load_checkpoint(run_dir).step
            if previous_dropout_from[0] < done:
                raise ConfigError(f"previous-dropout phase at step {previous_dropout_from[0]} lies before the run's "
                                  f"checkpoint (step {done}); choose a step ≥ {done}", run_dir)
    else:
        if run_dir.exists() and any(p.name != LATENTS_NAME for p in run_dir.iterdir()):
            raise OutputError("output folder is not empty and holds no latent-denoiser checkpoint", run_dir)
        cfg = with_steps(config or LatentDenoiserConfig(), steps)
        run_dir.mkdir(parents=True, exist_ok=True)
    if previous_dropout_from is not None and previous_dropout_from not in cfg.previous_dropout_from:
        at, value = int(previous_dropout_from[0]), float(previous_dropout_from[1])
        cfg = replace(cfg, previous_dropout_from=tuple(sorted((*cfg.previous_dropout_from, (at, value)))))
    cfg.validate()
    if resume:
        save_json(run_dir / LATENT_CONFIG_NAME, to_json(cfg))
    if threads is not None:
        torch.set_num_threads(threads)
    stats = None
    if resume and "latent_channel_mean" in saved_info:
        stats = (saved_info["latent_channel_mean"], saved_info["latent_channel_std"])
    data = build_latent_data(dataset, ae_run, run_dir, per_channel, stats)
    if resume:
        if list(data.label_names) != list(saved_info["labels"]):
            raise ConfigError(f"the dataset's labels {list(data.label_names)} differ from the run's "
                              f"{list(saved_info['labels'])} (same names, same order)", dataset)
        if tuple(data.latents.shape[1:]) != tuple(saved_info["latent_shape"]):
            raise ConfigError(f"the dataset's latents are {list(data.latents.shape[1:])}, the run's "
                              f"{saved_info['latent_shape']} (another matrix or autoencoder)", dataset)
        if saved_info.get("dataset") != str(dataset):  # a fine-tune on more data: its sources join the run's
            _add_dataset(run_dir, saved_info, dataset, data)
    else:
        ds = load_dataset(dataset)
        save_json(run_dir / LATENT_CONFIG_NAME, to_json(cfg))
        save_json(run_dir / LATENT_RUN_NAME, {
            "dataset": str(dataset), "autoencoder_run": str(ae_run), "scale_factor": data.scale_factor,
            "latent_shape": list(data.latents.shape[1:]), "labels": list(data.label_names),
            "manifest": ds.manifest.to_json() | {"slice_sources": []},
            "position_ranges": _position_ranges(data),
            **({"latent_channel_mean": list(data.channel_mean or ()), "latent_channel_std": list(data.channel_std or ())}
               if data.channel_mean is not None else {}),
        })
    torch.manual_seed(cfg.seed)
    num_labels = len(data.label_names)
    model = LatentDenoiser(cfg, int(data.latents.shape[1]), num_labels)
    ema = LatentDenoiser(cfg, int(data.latents.shape[1]), num_labels)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    start, secs = 0, 0.0
    if resume:
        ck = load_checkpoint(run_dir)
        load_state_strict(model, ck.model, "latent denoiser", run_dir)
        load_state_strict(ema, ck.ema, "latent denoiser EMA", run_dir)
        opt.load_state_dict(ck.optimizer)  # type: ignore[arg-type]
        start, secs = ck.step, ck.train_seconds
        sched.last_epoch = start - 1
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, start / max(1, cfg.warmup_steps))
    ddpm = DDPMScheduler(num_train_timesteps=cfg.schedule.num_train_timesteps, schedule=cfg.schedule.schedule,
                         beta_start=cfg.schedule.beta_start, beta_end=cfg.schedule.beta_end,
                         prediction_type=cfg.prediction_type)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    t_start = time.monotonic()
    step, last = start, None
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16"
           else torch.autocast("cpu", enabled=False))
    log = open(run_dir / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def checkpoint() -> None:
        save_checkpoint(run_dir, step, secs + time.monotonic() - t_start, model, ema, opt,
                        {"kind": "latent-denoiser", "last_loss": last})

    try:
        with Progress(TextColumn("latent denoiser"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=not show_progress) as progress:
            task = progress.add_task("ld", total=cfg.steps, completed=start, loss="-")
            while step < cfg.steps:
                x0, noise, t, labels, pos, prev = _batch(data, cfg, step, num_labels)
                xt = ddpm.add_noise(x0, noise, t)
                target = ddpm.get_velocity(x0, noise, t) if cfg.prediction_type == "v_prediction" else noise
                with ctx:
                    out = model(xt, t, labels, pos, prev)
                loss = torch.nn.functional.mse_loss(out.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.lerp_(pm.detach(), 1.0 - decay)
                step += 1
                last = float(loss.detach())
                progress.update(task, completed=step, loss=f"{last:.4f}")
                if step % 25 == 0:
                    log.write(json.dumps({"step": step, "loss": last, "lr": opt.param_groups[0]["lr"]}) + "\n")
                    log.flush()
                out_of_time = deadline is not None and time.monotonic() > deadline
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                    checkpoint()
                if out_of_time:
                    break
    except KeyboardInterrupt:
        checkpoint()
    finally:
        log.close()
    return LatentTrainSummary(run_dir, start, step, cfg.steps, last, secs + time.monotonic() - t_start)


def _add_dataset(run_dir: Path, info: dict[str, Any], dataset: Path, data: LatentData) -> None:
    """Record in the run's info that training continues on ``dataset``: its sources (by name and
    sha256) join the manifest's, its position ranges widen the conditioning support."""
    ds = load_dataset(dataset)
    manifest = dict(info.get("manifest") or {})
    sources = list(manifest.get("sources", []))
    seen = {(s.get("name"), s.get("sha256"), s.get("label")) for s in sources}
    for s in ds.manifest.to_json().get("sources", []):
        if (s.get("name"), s.get("sha256"), s.get("label")) not in seen:
            sources.append(s)
    manifest["sources"] = sources
    ranges = dict(info.get("position_ranges") or {})
    for k, (lo, hi) in _position_ranges(data).items():
        old = ranges.get(k, [lo, hi])
        ranges[k] = [min(float(old[0]), lo), max(float(old[1]), hi)]
    info = info | {"dataset": str(dataset), "manifest": manifest, "position_ranges": ranges,
                   "datasets": [*info.get("datasets", []), str(dataset)]}
    save_json(run_dir / LATENT_RUN_NAME, info)


def _position_ranges(data: LatentData) -> dict[str, list[float]]:
    """Per label: the [min, max] slice position seen in training (the pack's conditioning support)."""
    out: dict[str, list[float]] = {}
    for i, name in enumerate(data.label_names):
        p = data.positions[data.labels == i]
        if len(p):
            out[name] = [float(np.min(p)), float(np.max(p))]
    return out


def load_latent_denoiser(run_dir: Path) -> tuple[LatentDenoiserConfig, dict[str, Any], LatentDenoiser]:
    """The EMA weights of a latent run, in eval mode, with its config and run info."""
    cfg, info = read_latent_run(run_dir)
    c = int(info["latent_shape"][0])
    model = LatentDenoiser(cfg, c, len(info["labels"]))
    ck = load_checkpoint(run_dir, need_optimizer=False)
    load_state_strict(model, ck.ema, "latent denoiser EMA", run_dir)
    if math.isnan(float(info["scale_factor"])):
        raise CheckpointError("latent run has no valid scale factor", run_dir)
    return cfg, info, model.eval()
