"""Texture and series coherence: radial power spectra, adjacent-slice consistency, working copies.

First-order statistics (histograms, tissue fractions) cannot see texture: an image whose pixels are
shuffled has exactly the real histogram. The radial power spectrum can — blur removes high
frequencies, noise adds them, shuffling flattens the spectrum — and the SSIM of neighbouring
slices shows whether a generated series is a coherent volume or a stack of unrelated slices.

All functions take images ``[N, H, W]`` float32 in model space [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from medsynth.evaluation.metrics import SSIMConfig, area_downsample, ssim_pairs

SPECTRUM_BINS = 24
_EPS = 1e-12


def working_copy(images: npt.ArrayLike, max_side: int) -> npt.NDArray[np.float32]:
    """``images`` area-downsampled by the smallest integer factor that brings both sides to at most
    ``max_side`` pixels (unchanged when already small enough). SSIM-based metrics use these copies
    so that 512x512 CT costs what 128x128 does."""
    x = np.asarray(images, dtype=np.float32)
    h, w = x.shape[-2:]
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return x
    return area_downsample(x, (h // f, w // f))


def radial_log_spectra(images: npt.ArrayLike, bins: int = SPECTRUM_BINS, batch: int = 64) -> npt.NDArray[np.float64]:
    """Per-image radially averaged power spectrum, log10, ``[N, bins]``.

    Each image minus its mean is multiplied by a 2-D Hann window (no edge artefact), Fourier
    transformed, and its power ``|F|² / (H·W)`` averaged over rings of radial frequency in ``bins``
    equal bins on (0, 0.5] cycles per pixel (the DC term excluded), at full resolution.
    """
    x_all = np.asarray(images, dtype=np.float32)
    n, h, w = x_all.shape
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")
    r = np.sqrt(fy**2 + fx**2)
    idx = np.clip(np.ceil(r / 0.5 * bins).astype(np.int64) - 1, -1, bins)  # 0 < r <= 0.5 → 0..bins-1
    valid = (idx >= 0) & (idx < bins) & (r > 0)
    flat_idx = idx[valid]
    counts = np.bincount(flat_idx, minlength=bins).astype(np.float64)
    out = np.empty((n, bins), dtype=np.float64)
    for s in range(0, n, batch):
        x = x_all[s : s + batch].astype(np.float32)
        x = (x - x.mean(axis=(1, 2), keepdims=True)) * win
        p = np.abs(np.fft.rfft2(x)) ** 2 / (h * w)
        pv = p[:, valid]
        sums = np.zeros((len(x), bins))
        for i in range(len(x)):
            sums[i] = np.bincount(flat_idx, weights=pv[i], minlength=bins)
        out[s : s + batch] = np.log10(sums / np.maximum(counts, 1) + _EPS)
    return out


def spectrum_distance(query: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> float:
    """Mean absolute difference (dB, i.e. 10·log10 units) between the mean log spectra of two sets
    of per-image log10 spectra ``[N, bins]``."""
    return float(10.0 * np.mean(np.abs(query.mean(axis=0) - reference.mean(axis=0))))


def adjacent_pairs(volumes: npt.ArrayLike, positions: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Index pairs ``[P, 2]`` of consecutive slices (ordered by ``positions``) within each volume."""
    vol = np.asarray(volumes, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    pairs = []
    for v in np.unique(vol):
        idx = np.flatnonzero(vol == v)
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(pos[idx], kind="stable")]
        pairs.append(np.stack([idx[:-1], idx[1:]], axis=1))
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)


def adjacent_ssim(images: npt.ArrayLike, pairs: npt.NDArray[np.int64],
                  cfg: SSIMConfig | None = None) -> npt.NDArray[np.float64]:
    """SSIM of each neighbour pair ``[P]`` (``pairs`` from :func:`adjacent_pairs`)."""
    x = np.asarray(images, dtype=np.float32)
    if len(pairs) == 0:
        return np.zeros(0)
    return ssim_pairs(x[pairs[:, 0]], x[pairs[:, 1]], cfg or SSIMConfig())
