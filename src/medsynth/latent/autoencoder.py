"""The autoencoder of latent diffusion: MONAI ``AutoencoderKL`` trained on crops of real slices.

``train_autoencoder(dataset, run_dir, config)`` trains on random ``crop``² crops of the dataset's
full-resolution slices (float32 [N, H, W] in model space [-1, 1]) with L1 + KL, bf16 autocast on
the CPU, AdamW; it checkpoints every ``checkpoint_every`` steps (safetensors, no pickle) and resumes
from the run folder, bitwise: crops depend only on (seed, step). ``encode`` / ``decode`` run the
trained model on whole slices (an 8× autoencoder maps a 512² slice to a 64² latent).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.networks.nets import AutoencoderKL
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medsynth.dataset import PreparedDataset, load_dataset
from medsynth.errors import CheckpointError, ConfigError, OutputError
from medsynth.latent.config import AutoencoderConfig, autoencoder_from_json, save_json, to_json, with_steps
from medsynth.training.checkpoint import STATE_NAME, load_checkpoint, load_state_strict, save_checkpoint

AE_CONFIG_NAME = "autoencoder_config.json"
AE_LOG_NAME = "autoencoder_log.jsonl"


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A fresh 2D ``AutoencoderKL``: 1 channel in and out, ``cfg.latent_channels`` latent channels."""
    n = len(cfg.channels)
    return AutoencoderKL(
        spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks,
        attention_levels=(False,) * n, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        norm_num_groups=cfg.norm_num_groups,
    )


def _channel_buffers(shift: Sequence[float] | None, std: Sequence[float] | None, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    sh = torch.zeros(c) if shift is None else torch.tensor([float(v) for v in shift])
    sd = torch.ones(c) if std is None else torch.tensor([float(v) for v in std])
    return sh.reshape(1, -1, 1, 1), sd.reshape(1, -1, 1, 1)


class Encoder(torch.nn.Module):
    """image [B, 1, H, W] (model space) → latent mean [B, C, H/f, W/f].

    With ``shift`` and ``std`` (one value per latent channel, the training latents' mean and standard
    deviation) the output is normalised per channel, (mean − shift) / std, as the latent denoiser
    sees it; without them it is the autoencoder's raw latent mean."""

    shift: torch.Tensor
    std: torch.Tensor

    def __init__(self, ae: AutoencoderKL, shift: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ae = ae
        sh, sd = _channel_buffers(shift, std, int(ae.latent_channels))
        self.register_buffer("shift", sh)
        self.register_buffer("std", sd)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        z_mu, _ = self.ae.encode(image)
        return (z_mu - self.shift) / self.std


class Decoder(torch.nn.Module):
    """latent [B, C, h, w] → image [B, 1, h·f, w·f] in model space, clipped to [-1, 1].

    With ``shift`` and ``std`` the input is a per-channel normalised latent (the inverse of
    :class:`Encoder`'s): latent · std + shift is decoded."""

    shift: torch.Tensor
    std: torch.Tensor

    def __init__(self, ae: AutoencoderKL, shift: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ae = ae
        sh, sd = _channel_buffers(shift, std, int(ae.latent_channels))
        self.register_buffer("shift", sh)
        self.register_buffer("std", sd)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latent * self.std + self.shift).clamp(-1.0, 1.0)


def _phases(cfg: AutoencoderConfig) -> tuple[int, int]:
    """(first whole-slice step, first decoder-only step): crops before the first, whole slices after it."""
    decoder_start = cfg.steps - cfg.decoder_only_steps
    return decoder_start - cfg.whole_slice_steps, decoder_start


def _learning_rate(cfg: AutoencoderConfig, step: int) -> float:
    """Constant ``cfg.lr`` on crops; over the whole-slice phase a cosine from ``cfg.lr`` down to a
    tenth; over the decoder-only phase a cosine from a quarter of ``cfg.lr`` down to a fortieth."""
    whole_start, decoder_start = _phases(cfg)
    if step >= decoder_start:
        k = (step - decoder_start) / cfg.decoder_only_steps
        return cfg.lr * 0.25 * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * k)))
    if step < whole_start or cfg.whole_slice_steps == 0:
        return cfg.lr
    k = (step - whole_start) / cfg.whole_slice_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * k)))


_ENCODER_PARTS = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")


def _freeze_encoder(model: AutoencoderKL, ema: AutoencoderKL) -> None:
    """Give ``model`` the EMA's encoder (the one exported and used to encode a denoiser's training
    latents) and stop its gradients: from here on the latent space no longer moves."""
    for name in _ENCODER_PARTS:
        part, ema_part = getattr(model, name), getattr(ema, name)
        part.load_state_dict(ema_part.state_dict())
        part.requires_grad_(False)


def _crops(slices: npt.NDArray[np.float32], cfg: AutoencoderConfig, step: int) -> torch.Tensor:
    """The batch of step ``step``: [B, 1, crop, crop], deterministic in (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step, 11])
    n, h, w = slices.shape
    c = cfg.crop
    out = np.empty((cfg.batch_size, 1, c, c), dtype=np.float32)
    for b in range(cfg.batch_size):
        # three crops in four must show some body (≥ 10 % of pixels above air); the rest are free,
        # so the decoder also learns plain air and the slice's edges
        need_body = b % 4 != 3
        for _ in range(8):
            i = int(rng.integers(n))
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            crop = slices[i, y : y + c, x : x + c]
            if not need_body or float(np.mean(crop > -0.9)) > 0.1:
                break
        out[b, 0] = crop
    return torch.from_numpy(out)


def _whole(slices: npt.NDArray[np.float32], cfg: AutoencoderConfig, step: int) -> torch.Tensor:
    """Whole slices [B, 1, H, W] for the final whole-slice steps, deterministic in (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step, 13])
    idx = rng.integers(0, len(slices), cfg.whole_slice_batch)
    return torch.from_numpy(np.array(slices[idx], dtype=np.float32)[:, None])


@dataclass(frozen=True)
class AutoencoderSummary:
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


def read_autoencoder_config(run_dir: Path) -> AutoencoderConfig:
    path = run_dir / AE_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"not an autoencoder run (no {AE_CONFIG_NAME})", run_dir)
    try:
        return autoencoder_from_json(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{AE_CONFIG_NAME} is not valid JSON ({exc.msg})", path) from None


def train_autoencoder(
    dataset: str | Path,
    run_dir: str | Path,
    config: AutoencoderConfig | None = None,
    *,
    steps: int | None = None,
    whole_slice_steps: int | None = None,
    decoder_only_steps: int | None = None,
    max_minutes: float | None = None,
    threads: int | None = None,
    show_progress: bool = True,
) -> AutoencoderSummary:
    """Train (or resume, when ``run_dir`` holds a checkpoint) an autoencoder on ``dataset``.

    ``steps`` raises or sets the step budget, ``whole_slice_steps`` how many steps before the last
    ``decoder_only_steps`` use whole slices; those last steps (whole slices too) train the decoder
    alone on the encoder's latent means (L1), the encoder frozen as the EMA had it, so a denoiser
    trained on that encoder's latents keeps working with the sharper decoder. ``max_minutes`` stops
    cleanly with a checkpoint.
    """
    run_dir = Path(run_dir)
    ds: PreparedDataset = load_dataset(dataset)
    resume = (run_dir / STATE_NAME).is_file() and (run_dir / AE_CONFIG_NAME).is_file()
    if resume:
        cfg = with_steps(read_autoencoder_config(run_dir), steps, whole_slice_steps, decoder_only_steps)
        if config is not None and with_steps(config, cfg.steps, cfg.whole_slice_steps, cfg.decoder_only_steps) != cfg:
            raise ConfigError("the run folder holds an autoencoder with other settings; use a new folder", run_dir)
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise OutputError("output folder is not empty and holds no autoencoder checkpoint", run_dir)
        cfg = with_steps(config or AutoencoderConfig(), steps, whole_slice_steps, decoder_only_steps)
    cfg.validate()
    h, w = ds.manifest.matrix
    if h < cfg.crop or w < cfg.crop:
        raise ConfigError(f"dataset matrix {h}×{w} is smaller than the crop {cfg.crop}", ds.root)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(cfg)
    ema = build_autoencoder(cfg)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    start, secs = 0, 0.0
    if resume:
        ck = load_checkpoint(run_dir)
        load_state_strict(model, ck.model, "autoencoder", run_dir)
        load_state_strict(ema, ck.ema, "autoencoder EMA", run_dir)
        opt.load_state_dict(ck.optimizer)  # type: ignore[arg-type]
        start, secs = ck.step, ck.train_seconds
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_dir / "autoencoder_run.json", {"dataset": ds.manifest.to_json() | {"slice_sources": []}})
    save_json(run_dir / AE_CONFIG_NAME, to_json(cfg))  # the resolved budget of this invocation
    slices = np.asarray(ds.slices)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    t_start = time.monotonic()
    last: float | None = None
    step = start
    log = open(run_dir / AE_LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else torch.autocast("cpu", enabled=False)
    try:
        with Progress(TextColumn("autoencoder"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress) as progress:
            task = progress.add_task("ae", total=cfg.steps, completed=start, loss="-")
            phase_start, decoder_start = _phases(cfg)
            frozen = False
            while step < cfg.steps:
                whole = step >= phase_start
                decoder_only = step >= decoder_start
                if decoder_only and not frozen:
                    _freeze_encoder(model, ema)
                    frozen = True
                x = _whole(slices, cfg, step) if whole else _crops(slices, cfg, step)
                for group in opt.param_groups:
                    group["lr"] = _learning_rate(cfg, step)
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # the KL sampling noise, so a resumed run is bitwise
                if decoder_only:
                    with torch.no_grad():
                        z_mu, z_sigma = model.encode(x)
                    with ctx:
                        recon = model.decode(z_mu)
                else:
                    with ctx:
                        recon, z_mu, z_sigma = model(x)
                rec = torch.nn.functional.l1_loss(recon.float(), x)
                kl = 0.5 * torch.mean(z_mu.float() ** 2 + z_sigma.float() ** 2 - torch.log(z_sigma.float() ** 2 + 1e-8) - 1)
                loss = rec if decoder_only else rec + cfg.kl_weight * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                # the average restarts with the whole-slice phase: crop-phase weights fail on whole
                # slices (GroupNorm statistics), so they must not linger in the exported EMA
                k = step - phase_start if whole else step
                decay = min(0.999, (1 + k) / (10 + k))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.lerp_(pm.detach(), 1.0 - decay)
                step += 1
                last = float(rec.detach())
                progress.update(task, completed=step, loss=f"{last:.4f}")
                if step % 25 == 0:
                    log.write(json.dumps({"step": step, "l1": last, "kl": float(kl.detach())}) + "\n")
                    log.flush()
                out_of_time = deadline is not None and time.monotonic() > deadline
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                    save_checkpoint(run_dir, step, secs + time.monotonic() - t_start, model, ema, opt,
                                    {"kind": "autoencoder", "last_l1": last})
                if out_of_time:
                    break
    except KeyboardInterrupt:
        save_checkpoint(run_dir, step, secs + time.monotonic() - t_start, model, ema, opt,
                        {"kind": "autoencoder", "last_l1": last})
    finally:
        log.close()
    return AutoencoderSummary(run_dir, start, step, cfg.steps, last, secs + time.monotonic() - t_start)


def load_autoencoder(run_dir: str | Path) -> tuple[AutoencoderConfig, AutoencoderKL]:
    """The EMA weights of a trained autoencoder run, in eval mode."""
    run_dir = Path(run_dir)
    cfg = read_autoencoder_config(run_dir)
    ae = build_autoencoder(cfg)
    ck = load_checkpoint(run_dir, need_optimizer=False)
    load_state_strict(ae, ck.ema, "autoencoder EMA", run_dir)
    return cfg, ae.eval()


@torch.no_grad()
def encode(ae: AutoencoderKL, slices: npt.NDArray[np.float32], batch: int = 4) -> npt.NDArray[np.float32]:
    """Slices float32 [N, H, W] (model space) → latent means float32 [N, C, H/f, W/f] (unscaled)."""
    enc = Encoder(ae).eval()
    out = [enc(torch.from_numpy(np.array(slices[i : i + batch], dtype=np.float32))[:, None]).numpy()
           for i in range(0, len(slices), batch)]
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def decode(ae: AutoencoderKL, latents: npt.NDArray[np.float32], batch: int = 4) -> npt.NDArray[np.float32]:
    """Latents float32 [N, C, h, w] (unscaled) → slices float32 [N, H, W] in [-1, 1]."""
    dec = Decoder(ae).eval()
    out = [dec(torch.from_numpy(np.ascontiguousarray(latents[i : i + batch])))[:, 0].numpy()
           for i in range(0, len(latents), batch)]
    return np.concatenate(out).astype(np.float32)
