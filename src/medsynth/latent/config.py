"""Configuration of latent diffusion: the autoencoder and the latent denoiser (frozen dataclasses).

Both are saved as JSON beside every checkpoint (``RUN/latent_config.json``) and inside the exported
pack (``pack.json`` → ``latent``), so sampling and resuming rebuild themselves from them. Nothing
here imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from medsynth.errors import ConfigError
from medsynth.pack import NoiseScheduleConfig

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """MONAI ``AutoencoderKL`` (2D, no attention) and how it is trained.

    ``channels``: one entry per level; the image is downsampled ``2 ** (len(channels) - 1)`` times
    per side (4 levels = 8×, a 512² slice → a 64² latent). Trained with L1 + ``kl_weight`` · KL on
    random ``crop``² crops of full-resolution slices (model space [-1, 1]), so a few scans give many
    samples; three crops in four show body, the fourth may be plain air.
    """

    channels: tuple[int, ...] = (32, 64, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 32
    crop: int = 96
    batch_size: int = 8
    lr: float = 4e-4
    kl_weight: float = 1e-6
    steps: int = 3000
    seed: int = 0
    precision: Precision = "bf16"
    checkpoint_every: int = 100
    # the last ``whole_slice_steps`` steps train on whole slices (batch ``whole_slice_batch``), so
    # GroupNorm sees at training the statistics of the whole slices it encodes and decodes later
    whole_slice_steps: int = 0
    whole_slice_batch: int = 1
    # then the last ``decoder_only_steps`` steps (whole slices too) train the decoder alone: the
    # encoder, and so the latent space a denoiser was trained on, stays as it was (see train_autoencoder)
    decoder_only_steps: int = 0

    @property
    def downsample(self) -> int:
        return int(2 ** (len(self.channels) - 1))

    def validate(self) -> AutoencoderConfig:
        if len(self.channels) < 2 or any(c < 1 or c % self.norm_num_groups for c in self.channels):
            raise ConfigError(f"autoencoder channels {self.channels} must be ≥ 2 levels, each a multiple of "
                              f"{self.norm_num_groups}")
        if self.crop % self.downsample:
            raise ConfigError(f"crop {self.crop} must be a multiple of the downsampling {self.downsample}")
        for name in ("latent_channels", "num_res_blocks", "batch_size", "steps", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"autoencoder {name} must be ≥ 1")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ConfigError("autoencoder lr must be > 0 and kl_weight ≥ 0")
        if self.whole_slice_steps < 0 or self.decoder_only_steps < 0 or \
                self.whole_slice_steps + self.decoder_only_steps >= self.steps:
            raise ConfigError(f"autoencoder whole_slice_steps ({self.whole_slice_steps}) + decoder_only_steps "
                              f"({self.decoder_only_steps}) must be ≥ 0 and fewer than steps ({self.steps})")
        return self


@dataclass(frozen=True)
class LatentDenoiserConfig:
    """The latent denoiser (MONAI ``DiffusionModelUNet``) and how it is trained.

    Inputs of the network: the noisy latent [B, C, h, w], the previous slice's clean latent
    [B, C, h, w] (zeros for the first slice of a series; "coherent series"), the slice position
    (a constant plane) and a has-previous flag plane; class label embedding with a null class for
    classifier-free guidance. ``previous_dropout``: probability that a training pair is shown
    without its previous slice (so first slices are learned at every position);
    ``previous_noise``: the previous latent gets N(0, σ²) noise with σ ~ U(0, previous_noise), so
    the sampler tolerates its own imperfect previous slices. ``previous_dropout_from``: later phases
    of one run, ``((step, dropout), ...)`` ascending: from ``step`` on the dropout is ``dropout``
    (a series' first slice is sampled without a previous one, so that path must be learned well;
    the config describes the whole history, so a run replays from scratch in one call).
    """

    channels: tuple[int, ...] = (64, 128, 128)
    attention_levels: tuple[bool, ...] = (False, False, True)  # attention on 16² tokens only (CPU cost)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 32
    schedule: NoiseScheduleConfig = NoiseScheduleConfig()
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 100
    steps: int = 6000
    ema_decay: float = 0.995
    label_dropout: float = 0.1
    previous_dropout: float = 0.15
    previous_noise: float = 0.2
    previous_dropout_from: tuple[tuple[int, float], ...] = ()
    seed: int = 0
    precision: Precision = "bf16"
    checkpoint_every: int = 100

    def previous_dropout_at(self, step: int) -> float:
        """The previous-slice dropout in force at training ``step`` (see ``previous_dropout_from``)."""
        p = self.previous_dropout
        for start, value in self.previous_dropout_from:
            if step >= start:
                p = value
        return p

    def validate(self) -> LatentDenoiserConfig:
        if len(self.channels) != len(self.attention_levels):
            raise ConfigError("latent denoiser channels and attention_levels differ in length")
        for name in ("batch_size", "steps", "num_res_blocks", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"latent denoiser {name} must be ≥ 1")
        for name in ("label_dropout", "previous_dropout", "previous_noise"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"latent denoiser {name} must be in [0, 1]")
        starts = [int(a) for a, _ in self.previous_dropout_from]
        if starts != sorted(set(starts)) or any(a < 0 for a in starts) or \
                any(not 0.0 <= float(b) <= 1.0 for _, b in self.previous_dropout_from):
            raise ConfigError("latent denoiser previous_dropout_from must be ascending (step ≥ 0, dropout in [0, 1])")
        return self


def to_json(cfg: AutoencoderConfig | LatentDenoiserConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v for k, v in d.items()}


def autoencoder_from_json(d: dict[str, Any]) -> AutoencoderConfig:
    try:
        known = {f.name for f in fields(AutoencoderConfig)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return AutoencoderConfig(**kw).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"malformed autoencoder config ({exc})") from None


def denoiser_from_json(d: dict[str, Any]) -> LatentDenoiserConfig:
    try:
        known = {f.name for f in fields(LatentDenoiserConfig)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        if isinstance(kw.get("schedule"), dict):
            kw["schedule"] = NoiseScheduleConfig(**kw["schedule"])
        if "previous_dropout_from" in kw:
            kw["previous_dropout_from"] = tuple((int(a), float(b)) for a, b in kw["previous_dropout_from"])
        return LatentDenoiserConfig(**kw).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"malformed latent denoiser config ({exc})") from None


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def with_steps(cfg: Any, steps: int | None, whole_slice_steps: int | None = None,
               decoder_only_steps: int | None = None) -> Any:
    """``cfg`` with a new step budget (and, for the autoencoder, new numbers of final whole-slice and
    decoder-only steps): the only fields that may change when resuming."""
    if steps is not None:
        cfg = replace(cfg, steps=int(steps))
    if whole_slice_steps is not None:
        cfg = replace(cfg, whole_slice_steps=int(whole_slice_steps))
    if decoder_only_steps is not None:
        cfg = replace(cfg, decoder_only_steps=int(decoder_only_steps))
    return cfg
