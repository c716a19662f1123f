"""Diffusion scheduler maths in numpy: noise schedules, timestep respacing and single-step updates.

Nothing here imports torch. The noise schedules reproduce MONAI's ``NoiseSchedules`` formulas
(``monai/networks/schedulers/scheduler.py``: ``linear_beta``, ``scaled_linear_beta``, ``cosine``) so
that a pack trained with MONAI's ``DDPMScheduler`` is sampled with the same ᾱ_t. They are computed in
float64 (MONAI uses float32; the two agree to ~1e-6, see ``tests/test_diffusion.py``).

The step functions work on arrays of any shape (typically [B, 1, H, W], model space) at one pair of
training timesteps ``t`` → ``t_prev``; ``t_prev = -1`` means "the clean image", ᾱ = 1 (MONAI's DDIM
``set_alpha_to_one=True``). Working on explicit (t, t_prev) pairs is what makes respacing work: the
DDPM posterior between two respaced steps uses the effective β = 1 − ᾱ_t/ᾱ_prev, as in
openai/improved-diffusion's ``SpacedDiffusion``; with ``t_prev = t - 1`` every formula reduces to
MONAI's ``DDPMScheduler.step`` / ``DDIMScheduler.step`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from medsynth.errors import ConfigError
from medsynth.pack import NoiseScheduleConfig, PredictionType

Spacing = Literal["trailing", "leading", "linspace"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
FloatArray = npt.NDArray[np.floating]


def betas_for(config: NoiseScheduleConfig) -> npt.NDArray[np.float64]:
    """β_t for t = 0..T-1 of a MONAI-named schedule, float64 [T]."""
    n = config.num_train_timesteps
    if n < 1:
        raise ConfigError(f"num_train_timesteps must be >= 1, got {n}")
    if config.schedule == "linear_beta":
        return np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
    if config.schedule == "scaled_linear_beta":
        return np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float64) ** 2
    if config.schedule == "cosine":
        # MONAI's _cosine_beta (Nichol & Dhariwal 2021) with s = 8e-3; beta_start/end are unused.
        s = 8e-3
        x = np.linspace(0, n, n + 1, dtype=np.float64)
        abar = np.cos(((x / n) + s) / (1 + s) * np.pi * 0.5) ** 2
        abar = abar / abar[0]
        return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)
    raise ConfigError(f"unknown noise schedule {config.schedule!r}; choose linear_beta, scaled_linear_beta or cosine")


@dataclass(frozen=True)
class DiffusionSchedule:
    """ᾱ_t (``alphas_cumprod``, float64 [T]) of a training noise schedule."""

    alphas_cumprod: npt.NDArray[np.float64]

    @classmethod
    def from_config(cls, config: NoiseScheduleConfig) -> DiffusionSchedule:
        betas = betas_for(config)
        return cls(np.cumprod(1.0 - betas, dtype=np.float64))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t; 1.0 for t < 0 (the clean image)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])


@dataclass(frozen=True)
class Timesteps:
    """The (t, t_prev) training-timestep pairs a sampler visits, in order (t descending).

    ``t_prev[i]`` is where step ``i`` lands; -1 means the clean image. Normally
    ``t_prev[i] == t[i + 1]``, but MONAI's DDIM scheduler uses ``t - T // steps``, which can
    differ, so both are stored.
    """

    t: tuple[int, ...]
    t_prev: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.t or len(self.t) != len(self.t_prev):
            raise ConfigError("timesteps: need at least one (t, t_prev) pair")
        for a, b in zip(self.t, self.t_prev, strict=True):
            if not (b < a and b >= -1):
                raise ConfigError(f"timesteps: step {a} -> {b} does not go towards the clean image")

    def __len__(self) -> int:
        return len(self.t)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.t, self.t_prev, strict=True))


def respace(num_train_timesteps: int, steps: int, spacing: Spacing = "trailing") -> Timesteps:
    """Choose ``steps`` of the ``num_train_timesteps`` training timesteps, evenly spaced.

    ``trailing`` (default) starts at T-1 and ends at T/steps - 1 (Lin et al. 2024, "Common
    diffusion noise schedules and sample steps are flawed": it starts from the noisiest step).
    ``leading`` is ``0, k, 2k, ...`` (k = T // steps), as in DDIM/diffusers "leading".
    ``linspace`` is ``round(linspace(T-1, 0, steps))``, the timesteps of MONAI's ``set_timesteps``.
    Each step lands on the next chosen timestep, the last one on the clean image (-1).
    """
    n = num_train_timesteps
    if not 1 <= steps <= n:
        raise ConfigError(f"steps must be between 1 and {n} (the pack's training timesteps), got {steps}")
    if spacing == "trailing":
        ts = (np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1)[:steps]
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps))[::-1].astype(np.int64)
    elif spacing == "linspace":
        ts = np.round(np.linspace(n - 1, 0, steps)).astype(np.int64)
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    t = tuple(int(v) for v in ts)
    return Timesteps(t, (*t[1:], -1))


def predict_x0_eps(
    model_output: FloatArray,
    sample: FloatArray,
    alpha_bar_t: float,
    prediction_type: PredictionType,
    clip_sample: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Convert a network output at ᾱ_t to (x̂0, ε̂), same shape as ``sample``.

    x_t = √ᾱ x0 + √(1-ᾱ) ε and v = √ᾱ ε − √(1-ᾱ) x0. With ``clip_sample`` x̂0 is clipped to [-1, 1]
    and ε̂ is kept from the unclipped prediction (as MONAI's DDIM does).
    """
    a = math.sqrt(alpha_bar_t)
    s = math.sqrt(1.0 - alpha_bar_t)
    x0: FloatArray
    eps: FloatArray
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - s * model_output) / a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - a * model_output) / s
    elif prediction_type == "v_prediction":
        x0 = a * sample - s * model_output
        eps = a * model_output + s * sample
    else:
        raise ConfigError(f"unknown prediction type {prediction_type!r}")
    if clip_sample:
        x0 = np.clip(x0, -1.0, 1.0)
    return x0, eps


def ddpm_step(
    x0: FloatArray, sample: FloatArray, alpha_bar_t: float, alpha_bar_prev: float, noise: FloatArray | None
) -> FloatArray:
    """One ancestral DDPM step x_t → x_prev (Ho et al. 2020 eqs. 6–7, "fixed_small" variance).

    β and α are the effective ones between the two (possibly respaced) timesteps. ``noise`` (standard
    normal, shape of ``sample``) is added when landing on a noisy timestep; pass None for the last step.
    """
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1.0 - alpha_t
    coef_x0 = math.sqrt(alpha_bar_prev) * beta_t / (1.0 - alpha_bar_t)
    coef_xt = math.sqrt(alpha_t) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    prev = coef_x0 * x0 + coef_xt * sample
    if noise is not None:
        variance = max((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta_t, 1e-20)
        prev = prev + math.sqrt(variance) * noise
    return prev


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """σ_t(η) of DDIM (Song et al. 2021, eq. 16)."""
    variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
    return eta * math.sqrt(max(variance, 0.0))


def ddim_step(
    x0: FloatArray, eps: FloatArray, alpha_bar_t: float, alpha_bar_prev: float, eta: float, noise: FloatArray | None
) -> FloatArray:
    """One DDIM step (Song et al. 2021, eq. 12): √ᾱ_prev x̂0 + √(1-ᾱ_prev-σ²) ε̂ + σ z."""
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0))
    prev = math.sqrt(alpha_bar_prev) * x0 + direction * eps
    if noise is not None and sigma > 0:
        prev = prev + sigma * noise
    return prev


def _lambda(alpha_bar: float) -> float:
    """Half log-SNR λ = log(α/σ); +inf for the clean image."""
    if alpha_bar >= 1.0:
        return math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def dpmpp_2m_step(
    sample: FloatArray,
    x0: FloatArray,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    last: tuple[FloatArray, float] | None,
) -> FloatArray:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2, midpoint form as in diffusers).

    ``last`` is (x̂0, ᾱ) of the previous step, or None for a first-order step (the first step, and
    the final one onto the clean image, where λ = ∞: there the update is exactly x̂0).
    """
    sigma_t, sigma_prev = math.sqrt(1.0 - alpha_bar_t), math.sqrt(1.0 - alpha_bar_prev)
    alpha_prev = math.sqrt(alpha_bar_prev)
    lam_t, lam_prev = _lambda(alpha_bar_t), _lambda(alpha_bar_prev)
    if math.isinf(lam_prev):
        return x0
    h = lam_prev - lam_t
    phi = -math.expm1(-h)  # 1 - e^{-h}
    prev = (sigma_prev / sigma_t) * sample + alpha_prev * phi * x0
    if last is not None:
        x0_last, alpha_bar_last = last
        r = (lam_t - _lambda(alpha_bar_last)) / h
        d1 = (x0 - x0_last) / r
        prev = prev + 0.5 * alpha_prev * phi * d1
    return prev
