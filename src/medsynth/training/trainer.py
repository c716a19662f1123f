"""The training loop behind ``medsynth train``.

One step: draw a batch (deterministic in ``seed`` and the step number, so a resumed run sees the
same batches as an uninterrupted one), augment it (small contrast jitter around the air level, none for CT,
small translation with edge replication; no flips, anatomy has a side), add noise with MONAI's
``DDPMScheduler``, predict ε or v (``get_velocity``) with the UNet under bf16/fp16 autocast, take an
AdamW step with gradient clipping, update the EMA weights. Every random draw of a step comes from a
``torch.Generator`` seeded by (seed, step), so resuming is bitwise exact on the same machine and
thread count.

Under ``torchrun`` (see :mod:`medsynth.training.distributed`) each process takes its slice of the
same global batch and of the same random draws, gradients are averaged by DistributedDataParallel
and accumulated over micro-batches (``optim.micro_batch``), so N processes train the weights of
one process with the same ``batch_size`` up to float rounding; rank 0 alone writes the run folder.
A checkpoint does not depend on the number of processes: resume it with any.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medsynth import __version__
from medsynth.dataset import PreparedDataset, image_channels, load_dataset
from medsynth.errors import CheckpointError, ConfigError, DatasetError, OutputError
from medsynth.presets import Preset, get_preset
from medsynth.training.checkpoint import (
    CONFIG_NAME,
    LOG_NAME,
    RUN_INFO_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    load_state_strict,
    read_run,
    restore_rng,
    save_checkpoint,
)
from medsynth.training.config import (
    RESUMABLE_OPTIM_FIELDS,
    OptimConfig,
    TrainConfig,
    load_config_file,
    save_config,
)
from medsynth.training.distributed import DeferredInterrupt, DistContext, distributed, micro_batches
from medsynth.training.model import Denoiser, build_denoiser, ddim_sample, ddpm_scheduler

StopReason = Literal["completed", "time_budget", "interrupted", "already_done"]


@dataclass(frozen=True)
class TrainSummary:
    """What a ``medsynth train`` invocation did (``--json`` prints :meth:`to_json`)."""

    run_dir: Path
    dataset: Path
    start_step: int
    steps_done: int
    steps_target: int
    stopped: StopReason
    last_loss: float | None
    wall_seconds: float
    total_train_seconds: float
    images_per_second: float
    device: str
    precision: str
    hardware: str
    checkpoint: Path
    sample_grids: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "dataset": str(self.dataset),
            "start_step": self.start_step,
            "steps_done": self.steps_done,
            "steps_target": self.steps_target,
            "stopped": self.stopped,
            "last_loss": self.last_loss,
            "wall_seconds": round(self.wall_seconds, 3),
            "total_train_seconds": round(self.total_train_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "device": self.device,
            "precision": self.precision,
            "hardware": self.hardware,
            "checkpoint": str(self.checkpoint),
            "sample_grids": [str(p) for p in self.sample_grids],
            "warnings": list(self.warnings),
            "world_size": self.world_size,
            "config": self.config,
        }


# ---------------------------------------------------------------------------------------------
# configuration and data checks


def resolve_config(
    run_dir: Path,
    resume: bool,
    config_file: str | Path | None,
    overrides: dict[str, Any] | None,
) -> TrainConfig:
    """The configuration of this invocation: the run's own when resuming, else file + flags."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if resume:
        saved, _ = read_run(run_dir)
        if config_file is not None:
            other = load_config_file(config_file)
            if other != saved:
                raise ConfigError("--config differs from the run's saved config.json; resume uses the saved one",
                                  config_file)
        for key, value in overrides.items():
            sect, _, name = key.partition(".")
            if sect == "optim" and name in RESUMABLE_OPTIM_FIELDS:
                continue
            if saved.with_overrides({key: value}) != saved:
                raise ConfigError(f"{key} cannot change when resuming (the run was trained with another value)")
        return saved.with_overrides(overrides)
    base = load_config_file(config_file) if config_file is not None else TrainConfig()
    return base.with_overrides(overrides)


def check_dataset(ds: PreparedDataset, config: TrainConfig) -> tuple[Preset, list[str]]:
    """Refuse a dataset the configuration cannot train on; return its preset and warnings."""
    m = ds.manifest
    mpath = ds.root / "manifest.json"
    try:
        preset = get_preset(m.preset)
    except ConfigError as exc:
        raise DatasetError(exc.message, mpath) from None
    h, w = (int(s) for s in ds.slices.shape[-2:])
    if image_channels(ds.slices) != preset.samples_per_pixel:
        raise DatasetError(f"slices have {image_channels(ds.slices)} channel(s) but preset {preset.name} has "
                           f"{preset.samples_per_pixel}; prepare the dataset again for this preset", ds.root)
    if (h, w) != tuple(preset.matrix):
        raise DatasetError(
            f"slices are {h}x{w} but preset {preset.name} models {preset.matrix[0]}x{preset.matrix[1]}; "
            "prepare the dataset again for this preset", ds.root)
    f = config.model.downsample_factor
    if h % f or w % f:
        raise DatasetError(f"slices are {h}x{w}; a UNet with {len(config.model.channels)} levels needs sides "
                           f"divisible by {f}", ds.root)
    lo, hi = preset.intensity.physical_low, preset.intensity.physical_high
    if not (math.isclose(m.physical_range[0], lo) and math.isclose(m.physical_range[1], hi)):
        raise DatasetError(f"intensity range {list(m.physical_range)} {m.unit} does not match preset "
                           f"{preset.name} ({lo}..{hi} {preset.intensity.unit})", mpath)
    if len(set(m.labels)) != len(m.labels) or any(not lbl for lbl in m.labels):
        raise DatasetError(f"label names must be unique and non-empty, got {list(m.labels)}", mpath)
    counts = np.bincount(np.asarray(ds.labels), minlength=len(m.labels))
    warnings = [f"label {lbl!r} has no slices in the dataset; the model will not learn it"
                for lbl, c in zip(m.labels, counts, strict=True) if c == 0]
    return preset, warnings


def _check_resume_dataset(ds: PreparedDataset, info: dict[str, Any]) -> None:
    run_manifest = info["manifest"]
    run_labels = [str(x) for x in run_manifest.get("labels", [])]
    missing = [lbl for lbl in run_labels if lbl not in ds.manifest.labels]
    if missing:
        raise DatasetError(f"dataset lacks label(s) {missing} that the run was trained with", ds.root)
    if list(ds.manifest.labels) != run_labels:
        raise DatasetError(f"dataset labels {list(ds.manifest.labels)} differ from the run's {run_labels}", ds.root)
    if list(ds.manifest.matrix) != list(run_manifest.get("matrix", [])) or ds.manifest.preset != run_manifest.get(
        "preset"
    ):
        raise DatasetError(
            f"dataset is {ds.manifest.preset} {ds.manifest.matrix[0]}x{ds.manifest.matrix[1]} but the run was trained "
            f"on {run_manifest.get('preset')} {run_manifest.get('matrix')}", ds.root)


# ---------------------------------------------------------------------------------------------
# devices and precision


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("fp16 autocast is for CUDA; use bf16 or fp32 on the CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def hardware_string(device: torch.device, threads: int) -> str:
    """A human-readable description of what trained the model (CPU model or GPU name)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")  # Linux only; elsewhere platform.processor() is informative
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {threads} torch threads of {os.cpu_count()} logical CPUs, torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------
# batches


def _step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BatchSampler:
    """Slice indices of each step: epoch-wise permutations of the dataset seeded by (seed, epoch).

    The indices of step ``s`` depend only on ``seed``, ``s``, ``batch_size`` and the dataset size,
    so a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, npt.NDArray[np.int64]] = {}

    def _perm(self, epoch: int) -> npt.NDArray[np.int64]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> npt.NDArray[np.int64]:
        start = step * self.batch_size
        out = np.empty(self.batch_size, dtype=np.int64)
        for i in range(self.batch_size):
            epoch, r = divmod(start + i, self.n)
            out[i] = self._perm(epoch)[r]
        return out


def augment(x: torch.Tensor, jitter: float, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Anatomy-preserving augmentation of x [B, 1, H, W] in model space [-1, 1].

    Contrast jitter keeps -1 (air / no signal) fixed: x' = -1 + (x + 1)(1 + a), a ~ U(-jitter,
    jitter). Translation by up to ``max_shift`` pixels per axis replicates the border. No flips or
    rotations: left and right are anatomy. (MONAI's random transforms draw from numpy's global
    state per sample; this small hand-written version draws from the step's generator so resume
    stays exact.) ``augment_draws`` + ``apply_augment`` split the draws from their use, so that a
    process of a data-parallel job can apply its slice of the global batch's draws.
    """
    gains, shifts = augment_draws(x.shape[0], jitter, max_shift, gen)
    return apply_augment(x, gains, shifts, max_shift)


def augment_draws(
    batch: int, jitter: float, max_shift: int, gen: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The random part of :func:`augment` for ``batch`` images: gains a [B, 1, 1, 1] (None when
    ``jitter`` is 0) and shifts (dy, dx) int64 [B, 2] in pixels (None when ``max_shift`` is 0)."""
    gains = (torch.rand((batch, 1, 1, 1), generator=gen) * 2 - 1) * jitter if jitter > 0 else None
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=gen) if max_shift > 0 else None
    return gains, shifts


def apply_augment(
    x: torch.Tensor, gains: torch.Tensor | None, shifts: torch.Tensor | None, max_shift: int
) -> torch.Tensor:
    """Apply drawn gains [B, 1, 1, 1] and shifts [B, 2] (see :func:`augment`) to x [B, 1, H, W]."""
    _, _, h, w = x.shape
    if gains is not None:
        x = (-1.0 + (x + 1.0) * (1.0 + gains)).clamp(-1.0, 1.0)
    if shifts is not None and max_shift > 0:
        padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift), mode="replicate")
        x = torch.stack([
            padded[i, :, max_shift + int(dy): max_shift + int(dy) + h, max_shift + int(dx): max_shift + int(dx) + w]
            for i, (dy, dx) in enumerate(shifts.tolist())
        ])
    return x


@dataclass(frozen=True)
class StepDraws:
    """Every random value of one training step, for the whole global batch of B images.

    ``gains`` [B, 1, 1, 1] and ``shifts`` [B, 2] (augmentation, None when off), ``noise`` float32
    [B, C, H, W], ``timesteps`` int64 [B], ``drop`` bool [B] (label dropout, None when off).
    """

    gains: torch.Tensor | None
    shifts: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor
    drop: torch.Tensor | None

    @classmethod
    def draw(cls, gen: torch.Generator, batch: int, hw: tuple[int, int], optim: OptimConfig,
             num_timesteps: int, channels: int = 1) -> StepDraws:
        """Draw in a fixed order from the step's generator (the order of the single-process loop)."""
        gains, shifts = augment_draws(batch, optim.intensity_jitter, optim.max_shift_px, gen) if optim.augment \
            else (None, None)
        noise = torch.randn((batch, channels, *hw), generator=gen)
        t = torch.randint(0, num_timesteps, (batch,), generator=gen)
        drop = torch.rand(batch, generator=gen) < optim.label_dropout if optim.label_dropout > 0 else None
        return cls(gains, shifts, noise, t, drop)

    def take(self, part: slice) -> StepDraws:
        """The draws of the images ``part`` of the batch."""
        def cut(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[part]

        return StepDraws(cut(self.gains), cut(self.shifts), self.noise[part], self.timesteps[part], cut(self.drop))


# ---------------------------------------------------------------------------------------------
# sample grids


def save_sample_grid(
    path: Path,
    model: Denoiser,
    config: TrainConfig,
    preset: Preset,
    labels: tuple[str, ...],
    device: torch.device,
    rows: tuple[int, ...] | None = None,
) -> Path:
    """Sample ``sample_per_label`` images per label with DDIM from ``model`` (EMA) and save a PNG.

    Rows are labels (``rows``: their indices, default all), columns samples (positions spread over
    0.2..0.8 when position-conditioned), shown in the preset's first display window.
    """
    from PIL import Image

    per = config.optim.sample_per_label
    row_labels = rows if rows else tuple(range(len(labels)))
    n_lab = len(row_labels)
    lab = torch.tensor(row_labels, dtype=torch.long).repeat_interleave(per)
    pos = None
    if config.model.use_position:
        pos = torch.linspace(0.2, 0.8, per).repeat(n_lab).to(torch.float32)
    gen = torch.Generator().manual_seed(config.optim.seed)
    h, w = preset.matrix
    was_training = model.training
    model.eval()
    try:
        imgs = ddim_sample(model, config.schedule, lab, pos, (h, w), config.optim.sample_steps, gen, device)
    finally:
        model.train(was_training)
    phys = preset.intensity.to_physical(imgs.float().cpu().numpy().transpose(0, 2, 3, 1))  # [B, H, W, C]
    win = preset.windows[0]
    lo, hi = win.center - win.width / 2, win.center + win.width / 2
    grey = (np.clip((phys - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    if grey.shape[-1] == 1:
        grey = grey[..., 0]
    grid = np.zeros((n_lab * h, per * w, *grey.shape[3:]), dtype=np.uint8)
    for i in range(n_lab * per):
        r, c = divmod(i, per)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = grey[i]
    img = Image.fromarray(grid)
    scale = max(1, 128 // max(h, w))
    if scale > 1:
        img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# the loop


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # Hand-written because torch's AveragedModel has no warm-up; parameters only (the UNet has no
    # buffers that change in training).
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm.detach(), 1.0 - decay)


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / STATE_NAME).is_file():
            raise CheckpointError("nothing to resume: no checkpoint.json in the run folder", run_dir)
        return
    if run_dir.exists():
        if not run_dir.is_dir():
            raise OutputError("output exists and is not a folder", run_dir)
        if (run_dir / CONFIG_NAME).exists() or (run_dir / WEIGHTS_NAME).exists():
            raise OutputError("already holds a training run; add --resume to continue it or choose another folder",
                              run_dir)
        if any(run_dir.iterdir()):
            raise OutputError("output folder is not empty", run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder ({exc.strerror})", run_dir) from None


def train(
    dataset_dir: str | Path,
    run_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> TrainSummary:
    """Train (or resume training) a denoiser on a prepared dataset; see the module docstring.

    ``config`` (when given) is used as is for a new run; otherwise ``config_file`` and
    ``overrides`` (``{"optim.steps": 100, ...}``) are resolved by :func:`resolve_config`.
    """
    t_start = time.monotonic()
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    if config is not None and not resume:
        cfg = config.validate()
    else:
        cfg = resolve_config(run_dir, resume, config_file, overrides)
    ds = load_dataset(dataset_dir)
    preset, warnings = check_dataset(ds, cfg)
    if cfg.model.image_channels != preset.samples_per_pixel:  # the UNet's channels follow the images
        import dataclasses

        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_channels=preset.samples_per_pixel))
    if preset.modality == "CT" and cfg.optim.intensity_jitter > 0:  # HU are absolute: ±5 % is ±53 HU at water
        import dataclasses

        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, intensity_jitter=0.0))
        warnings = [*warnings, "CT: intensity (contrast) jitter is off (HU are absolute); shifts only"]
    if resume:
        _check_resume_dataset(ds, read_run(run_dir)[1])
    with distributed(cfg.optim.device) as ctx:
        return _train(ctx, cfg, ds, preset, warnings, dataset_dir, run_dir, resume, progress, console, t_start)


def _write_run_files(run_dir: Path, resume: bool, cfg: TrainConfig, ds: PreparedDataset, dataset_dir: Path,
                     warnings: list[str]) -> None:
    """Create the run folder (or check it can be resumed) and write config.json and run.json."""
    _prepare_run_dir(run_dir, resume)
    save_config(run_dir / CONFIG_NAME, cfg)  # on resume: resumable settings (steps, budget) may have changed
    if resume:
        return
    manifest = ds.manifest.to_json()
    manifest.pop("slice_sources", None)
    info = {
        "dataset_path": str(dataset_dir.resolve()),
        "manifest": manifest,
        "num_slices": len(ds),
        "slices_per_label": np.bincount(np.asarray(ds.labels), minlength=len(ds.manifest.labels)).tolist(),
        "medsynth_version": __version__,
        "warnings": warnings,
    }
    tmp = run_dir / f".{RUN_INFO_NAME}.partial"
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / RUN_INFO_NAME)


def _train(
    ctx: DistContext,
    cfg: TrainConfig,
    ds: PreparedDataset,
    preset: Preset,
    warnings: list[str],
    dataset_dir: Path,
    run_dir: Path,
    resume: bool,
    progress: bool,
    console: Console | None,
    t_start: float,
) -> TrainSummary:
    """The loop of :func:`train` in one process of a (possibly one-process) job."""
    device = ctx.device
    precision = pick_precision(cfg.optim.precision, device)
    threads = cfg.optim.threads or torch.get_num_threads()  # torch's default (torchrun sets OMP_NUM_THREADS=1)
    torch.set_num_threads(threads)
    o = cfg.optim
    mine = ctx.shard_range(o.batch_size)  # refuses a batch smaller than the number of processes
    ctx.on_main(lambda: _write_run_files(run_dir, resume, cfg, ds, dataset_dir, warnings))

    labels = tuple(ds.manifest.labels)
    counts = np.bincount(np.asarray(ds.labels), minlength=len(labels))
    grid_rows = tuple(i for i in range(len(labels)) if counts[i] > 0)  # labels the model sees
    torch.manual_seed(cfg.optim.seed)
    model = build_denoiser(cfg.model, len(labels)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    start_step, prior_seconds = 0, 0.0
    if resume:
        ckpt = load_checkpoint(run_dir)
        load_state_strict(model, ckpt.model, "model", run_dir / WEIGHTS_NAME)
        load_state_strict(ema, ckpt.ema, "EMA", run_dir / WEIGHTS_NAME)
        try:
            optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"optimizer state does not match the model ({exc})", run_dir / WEIGHTS_NAME) from None
        restore_rng(ckpt)
        start_step, prior_seconds = ckpt.step, ckpt.train_seconds
    wrapped = ctx.wrap(model)  # DDP (broadcasting rank 0's weights) when world_size > 1
    scheduler = ddpm_scheduler(cfg.schedule)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    sampler = BatchSampler(len(ds), o.batch_size, o.seed)
    hw = (int(ds.slices.shape[-2]), int(ds.slices.shape[-1]))
    n_channels = cfg.model.image_channels
    chunks = micro_batches(mine.stop - mine.start, o.micro_batch)
    steps_target = o.steps
    hardware = hardware_string(device, threads) + ctx.describe()
    out = console or Console(stderr=True)
    grids: list[Path] = []
    log_path = run_dir / LOG_NAME
    stopped: StopReason = "completed" if start_step < steps_target else "already_done"
    step = start_step
    last_loss: float | None = None
    loss_acc, loss_n = 0.0, 0
    t_loop = time.monotonic()
    t_window, imgs_window = time.monotonic(), 0
    img_per_s = 0.0
    budget_s = o.max_minutes * 60.0 if o.max_minutes > 0 else math.inf
    model.train()

    def checkpoint() -> None:
        if not ctx.is_main:
            return
        extra = {"device": str(device), "precision": precision, "hardware": hardware, "last_loss": last_loss,
                 "batch_size": o.batch_size, "world_size": ctx.world_size}
        save_checkpoint(run_dir, step, prior_seconds + (time.monotonic() - t_loop), model, ema, optimizer, extra)

    def chunk_loss(idx: npt.NDArray[np.int64], draws: StepDraws) -> torch.Tensor:
        """The mean loss of the images ``idx`` with their ``draws`` (forward pass only)."""
        x0 = torch.from_numpy(np.ascontiguousarray(ds.slices[idx], dtype=np.float32))
        if x0.ndim == 3:  # grey [B, H, W] → [B, 1, H, W]; RGB datasets are [B, 3, H, W] already
            x0 = x0.unsqueeze(1)
        cls = torch.from_numpy(np.asarray(ds.labels[idx], dtype=np.int64))
        pos = torch.from_numpy(np.asarray(ds.positions[idx], dtype=np.float32))
        x0 = apply_augment(x0, draws.gains, draws.shifts, o.max_shift_px)
        if draws.drop is not None:
            cls = torch.where(draws.drop, torch.full_like(cls, len(labels)), cls)
        x0, noise, t, cls, pos = (v.to(device) for v in (x0, draws.noise, draws.timesteps, cls, pos))
        noisy = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
        target = scheduler.get_velocity(x0, noise, t) if cfg.schedule.prediction_type == "v_prediction" else noise
        with autocast_context(precision, device):
            pred = wrapped(noisy, t, cls, pos if cfg.model.use_position else None)
        pred = pred.float()
        if o.loss == "huber":
            return F.huber_loss(pred, target, delta=o.huber_delta)
        return F.mse_loss(pred, target)

    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[speed]} img/s"), TimeElapsedColumn(), TimeRemainingColumn())
    consistent = True  # False between the optimizer update and the step counter
    with contextlib.ExitStack() as stack:
        interrupt = stack.enter_context(DeferredInterrupt(escalate=not ctx.is_distributed))
        bar = stack.enter_context(Progress(*columns, console=out, disable=not (progress and ctx.is_main)))
        log = stack.enter_context(open(log_path, "a", encoding="utf-8")) if ctx.is_main else None
        task = bar.add_task("train", total=steps_target, completed=start_step, loss="-", speed="-")
        try:
            while step < steps_target:
                gen = torch.Generator().manual_seed(_step_seed(o.seed, step, 0))
                # the global batch and all its random draws, then this process's slice of both
                idx = sampler.indices(step)[mine]
                draws = StepDraws.draw(gen, o.batch_size, hw, o, cfg.schedule.num_train_timesteps,
                                       n_channels).take(mine)
                for group in optimizer.param_groups:
                    group["lr"] = o.lr * min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else o.lr
                optimizer.zero_grad(set_to_none=True)
                local_loss = torch.zeros((), dtype=torch.float32)
                for i, part in enumerate(chunks):
                    with ctx.accumulate(wrapped, sync=i == len(chunks) - 1):
                        loss = chunk_loss(idx[part], draws.take(part))
                        weight = ctx.loss_weight(part.stop - part.start, o.batch_size)
                        scaled = loss if weight == 1.0 else loss * weight
                        if scaler is not None:
                            scaler.scale(scaled).backward()
                        else:
                            scaled.backward()
                    local_loss += scaled.detach().float().cpu() / ctx.world_size
                # one collective per step: the global mean loss, and whether any process is over its
                # time budget or was interrupted (then all stop after this step)
                over = 1.0 if time.monotonic() - t_start >= budget_s else 0.0
                flags = torch.tensor([over, 1.0 if interrupt.requested else 0.0])
                total = ctx.all_reduce_sum(torch.cat([local_loss.reshape(1), flags]))
                step_loss, over_budget, interrupted = float(total[0]), bool(total[1] > 0), bool(total[2] > 0)
                if not math.isfinite(step_loss):
                    raise ConfigError(f"loss became {step_loss} at step {step}; lower optim.lr or use fp32")
                consistent = False
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if o.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                _ema_update(ema, model, min(o.ema_decay, (1 + step) / (10 + step)))
                step += 1
                consistent = True
                loss_acc += step_loss
                loss_n += 1
                imgs_window += o.batch_size
                if step % max(1, o.log_every) == 0 or step == steps_target:
                    now = time.monotonic()
                    img_per_s = imgs_window / max(now - t_window, 1e-9)
                    t_window, imgs_window = now, 0
                    last_loss = loss_acc / loss_n
                    loss_acc, loss_n = 0.0, 0
                    if log is not None:
                        log.write(json.dumps({"step": step, "loss": round(last_loss, 6),
                                              "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(img_per_s, 3),
                                              "train_seconds": round(prior_seconds + now - t_loop, 3)}) + "\n")
                        log.flush()
                    bar.update(task, loss=f"{last_loss:.4f}", speed=f"{img_per_s:.1f}")
                bar.update(task, completed=step)
                if o.sample_every and step % o.sample_every == 0 and step < steps_target and ctx.is_main:
                    grids.append(save_sample_grid(run_dir / "samples" / f"step_{step:06d}.png", ema, cfg, preset,
                                                  labels, device, grid_rows))
                if o.checkpoint_every and step % o.checkpoint_every == 0 and step < steps_target:
                    checkpoint()
                if interrupted:
                    stopped = "interrupted"
                    break
                if over_budget and step < steps_target:
                    stopped = "time_budget"
                    break
        except KeyboardInterrupt:  # a second Ctrl-C (one process): save what is consistent, stop now
            if consistent:
                checkpoint()
            raise
    if stopped == "interrupted":
        checkpoint()  # after a complete step, identical on every process
        ctx.barrier()
        raise KeyboardInterrupt
    if loss_n:
        last_loss = loss_acc / loss_n
    loop_s = time.monotonic() - t_loop
    checkpoint()
    if ctx.is_main and (step > start_step or not (run_dir / "samples").is_dir()):
        grids.append(save_sample_grid(run_dir / "samples" / f"step_{step:06d}.png", ema, cfg, preset, labels, device,
                                       grid_rows))
    ctx.barrier()  # every process returns once the final checkpoint is written
    total_s = prior_seconds + (time.monotonic() - t_loop)
    done = step - start_step
    return TrainSummary(
        run_dir=run_dir,
        dataset=dataset_dir,
        start_step=start_step,
        steps_done=step,
        steps_target=steps_target,
        stopped=stopped,
        last_loss=last_loss,
        wall_seconds=time.monotonic() - t_start,
        total_train_seconds=total_s,
        images_per_second=(done * o.batch_size / loop_s) if done and loop_s > 0 else img_per_s,
        device=str(device),
        precision=precision,
        hardware=hardware,
        checkpoint=run_dir / WEIGHTS_NAME,
        sample_grids=tuple(grids),
        warnings=tuple(warnings),
        config=cfg.to_json(),
        world_size=ctx.world_size,
        rank=ctx.rank,
    )


def iter_log(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The entries of ``train_log.jsonl`` (skipping a torn last line)."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads(line)
