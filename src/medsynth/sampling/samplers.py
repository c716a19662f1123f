"""Sampling loops: DDPM ancestral, DDIM (η) and DPM-Solver++(2M), with classifier-free guidance.

The loops are kept apart from the scheduler maths (:mod:`medsynth.sampling.diffusion`) and from the
network: the denoiser is any callable with the model pack's signature (the onnxruntime session in
:mod:`medsynth.sampling.runtime`, a torch module in the tests), as in openai/improved-diffusion's
``gaussian_diffusion.py`` and diffusers' pipelines. Randomness comes in through a ``NoiseSource``
so that a caller controls exactly which standard-normal draws each image gets. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from medsynth.errors import ConfigError
from medsynth.pack import PredictionType
from medsynth.sampling.diffusion import (
    SPACINGS,
    DiffusionSchedule,
    Spacing,
    Timesteps,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    predict_x0_eps,
    respace,
)

SamplerName = Literal["ddpm", "ddim", "dpmpp-2m"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class Denoiser(Protocol):
    """The pack's network: ``sample`` f32 [B,1,H,W], ``timestep`` i64 [B], ``class_labels`` i64 [B],
    ``position`` f32 [B] or None → prediction f32 [B,1,H,W] (ε, v or x0)."""

    def __call__(self, sample: F32, timestep: I64, class_labels: I64, position: F32 | None) -> F32: ...


NoiseSource = Callable[[tuple[int, ...]], F32]
"""Returns standard-normal float32 noise of the given shape ([B, 1, H, W])."""


def numpy_noise(rng: np.random.Generator) -> NoiseSource:
    """A NoiseSource drawing from one numpy Generator."""

    def draw(shape: tuple[int, ...]) -> F32:
        return rng.standard_normal(shape, dtype=np.float32)

    return draw


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: the algorithm, its number of (respaced) steps, DDIM η, guidance scale w.

    Guidance follows ε̃ = ε(∅) + w·(ε(c) − ε(∅)): w = 1 is plain conditional sampling (one network
    pass per step), w = 0 unconditional, w > 1 stronger conditioning (two passes, batched).
    """

    sampler: SamplerName = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0
    spacing: Spacing = "trailing"
    clip_sample: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ConfigError(f"unknown timestep spacing {self.spacing!r}; choose one of: {', '.join(SPACINGS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if not (math.isfinite(self.eta) and 0.0 <= self.eta <= 1.0):
            raise ConfigError(f"eta must be between 0 and 1, got {self.eta}")
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 50.0):
            raise ConfigError(f"guidance must be between 0 and 50, got {self.guidance}")


@dataclass(frozen=True)
class Conditioning:
    """Per-image conditioning: ``class_labels`` i64 [B]; ``position`` f32 [B] in [0, 1] or None when
    the pack does not use it; ``null_class`` is the label meaning "unconditional"."""

    class_labels: I64
    null_class: int
    position: F32 | None = None


def guided_prediction(denoiser: Denoiser, x: F32, t: int, cond: Conditioning, guidance: float) -> F32:
    """Network output at timestep ``t`` for ``x`` [B,1,H,W], with classifier-free guidance.

    The conditional and unconditional passes run as one batch of 2B. Guidance is applied to the
    raw output: ε, v and x0 are each affine in the others at fixed x_t, so this equals guiding ε.
    """
    b = x.shape[0]
    labels = np.asarray(cond.class_labels, dtype=np.int64)
    pos = None if cond.position is None else np.asarray(cond.position, dtype=np.float32)
    if guidance == 1.0:
        return denoiser(x, np.full(b, t, dtype=np.int64), labels, pos)
    x2 = np.concatenate([x, x], axis=0)
    labels2 = np.concatenate([labels, np.full(b, cond.null_class, dtype=np.int64)])
    pos2 = None if pos is None else np.concatenate([pos, pos])
    out = denoiser(x2, np.full(2 * b, t, dtype=np.int64), labels2, pos2)
    out_c, out_u = out[:b], out[b:]
    return (out_u + guidance * (out_c - out_u)).astype(np.float32, copy=False)


def sample(
    denoiser: Denoiser,
    schedule: DiffusionSchedule,
    prediction_type: PredictionType,
    x_t: F32,
    cond: Conditioning,
    config: SamplerConfig,
    noise: NoiseSource | None = None,
    timesteps: Timesteps | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> F32:
    """Run the reverse process from ``x_t`` (f32 [B,1,H,W], normally N(0, I) at the first timestep)
    to a clean sample in model space [-1, 1] (clipped when ``config.clip_sample``).

    ``timesteps`` defaults to ``respace(T, config.steps, config.spacing)``. ``noise`` is needed by the
    stochastic samplers (DDPM; DDIM with η > 0): DDPM draws once per step that lands on a noisy
    timestep, DDIM with η > 0 once per step (the draw count MONAI's schedulers use).
    ``on_step(i, n)`` is called after each step.
    """
    if timesteps is None:
        timesteps = respace(schedule.num_train_timesteps, config.steps, config.spacing)
    if max(timesteps.t) >= schedule.num_train_timesteps:
        raise ConfigError(f"timestep {max(timesteps.t)} is beyond the schedule's {schedule.num_train_timesteps}")
    stochastic = config.sampler == "ddpm" or (config.sampler == "ddim" and config.eta > 0)
    if stochastic and noise is None:
        raise ConfigError(f"sampler {config.sampler} with eta={config.eta} needs a noise source")
    x = np.asarray(x_t, dtype=np.float32)
    last: tuple[F32, float] | None = None
    n = len(timesteps)
    for i, (t, t_prev) in enumerate(timesteps.pairs()):
        ab_t, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        out = guided_prediction(denoiser, x, t, cond, config.guidance)
        x0, eps = predict_x0_eps(out, x, ab_t, prediction_type, config.clip_sample)
        if config.sampler == "ddpm":
            z = noise(x.shape) if (t_prev >= 0 and noise is not None) else None
            x = ddpm_step(x0, x, ab_t, ab_prev, z)
        elif config.sampler == "ddim":
            z = noise(x.shape) if (config.eta > 0 and noise is not None) else None
            x = ddim_step(x0, eps, ab_t, ab_prev, config.eta, z)
        else:
            x = dpmpp_2m_step(x, x0, ab_t, ab_prev, last)
            last = (x0, ab_t)
        x = np.asarray(x, dtype=np.float32)
        if on_step is not None:
            on_step(i + 1, n)
    if config.clip_sample:
        x = np.clip(x, -1.0, 1.0)
    return x
