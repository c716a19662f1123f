"""Latent series sampling: one slice after another, each conditioned on the slice below it.

A latent pack's denoiser takes the previous slice's clean latent as a condition, so a series is
one body rather than unrelated slices: slice k is sampled with :func:`medsynth.sampling.samplers.sample`
(any sampler, classifier-free guidance) while the denoiser sees slice k−1's latent (zeros for
k = 0), then latents are decoded in batches by the pack's decoder. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from medsynth.pack import PredictionType
from medsynth.sampling.diffusion import DiffusionSchedule
from medsynth.sampling.samplers import Conditioning, NoiseSource, SamplerConfig, sample

F32 = npt.NDArray[np.float32]


class PreviousAware(Protocol):
    """A denoiser (:class:`medsynth.sampling.samplers.Denoiser`) with a settable ``previous``
    latent [b, C, h, w] (see :class:`medsynth.sampling.runtime.OnnxDenoiser`)."""

    previous: F32 | None

    def __call__(self, sample: F32, timestep: npt.NDArray[np.int64], class_labels: npt.NDArray[np.int64],
                 position: F32 | None) -> F32: ...


@dataclass
class StageTimer:
    """Seconds spent per stage (``denoiser``, ``decoder``, ...), accumulated."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, t0: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def series_positions(n: int, support: tuple[float, float]) -> F32:
    """Conditioning positions of an ``n``-slice series spread over the label's ``support`` [lo, hi]
    (inferior → superior); a single slice gets the middle."""
    lo, hi = support
    if n == 1:
        return np.array([(lo + hi) / 2.0], dtype=np.float32)
    return (lo + (hi - lo) * np.arange(n) / (n - 1)).astype(np.float32)


def sample_latent_series(
    denoiser: PreviousAware,
    decoder: Callable[[F32], F32],
    schedule: DiffusionSchedule,
    prediction_type: PredictionType,
    config: SamplerConfig,
    *,
    label: int,
    null_class: int,
    positions: F32,
    start_noise: Callable[[int], F32],
    step_noise: Callable[[int], NoiseSource],
    scale_factor: float,
    decode_batch: int = 4,
    timer: StageTimer | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, F32]]:
    """Yield ``(k, image)`` for k = 0 … len(positions)−1 in order; ``image`` float32 [H, W] in model
    space [-1, 1]. ``start_noise(k)`` gives slice k's starting latent noise [C, h, w] and
    ``step_noise(k)`` its per-step noise source (stochastic samplers)."""
    timer = timer or StageTimer()
    prev: F32 | None = None
    pending: list[tuple[int, F32]] = []

    def flush() -> Iterator[tuple[int, F32]]:
        t0 = time.perf_counter()
        z = np.stack([p[1] for p in pending]) / np.float32(scale_factor)
        images = decoder(z.astype(np.float32))
        timer.add("decoder", t0)
        for (k, _), img in zip(pending, images[:, 0], strict=True):
            yield k, img
        pending.clear()

    for k, pos in enumerate(positions):
        x_t = start_noise(k)[None].astype(np.float32)
        denoiser.previous = np.zeros_like(x_t) if prev is None else prev[None]
        cond = Conditioning(np.array([label], dtype=np.int64), null_class, np.array([pos], dtype=np.float32))
        t0 = time.perf_counter()
        z0 = sample(denoiser, schedule, prediction_type, x_t, cond, config, step_noise(k), on_step=on_step)
        timer.add("denoiser", t0)
        prev = z0[0]
        pending.append((k, z0[0]))
        if len(pending) >= decode_batch:
            yield from flush()
    if pending:
        yield from flush()
