"""A fixed, offline, torch-free feature space for the Fréchet distance, and the distance itself.

Inception-based FID needs downloaded ImageNet weights (no network here, and a poor fit for 64×64
grey-scale medical slices); an encoder trained here would make the number depend on its training
run. So the features are fixed and deterministic, 64 numbers per image ``[H, W]`` in model space:

* 16 — intensity histogram: fraction of pixels in 16 equal bins over [-1, 1];
* 16 — layout: the image area-averaged to 4×4 pixels;
* 8 + 8 — texture: histogram of the gradient magnitude (central differences, model units per
  pixel) in 8 fixed bins, at full resolution and at half resolution;
* 16 — structure: the image area-averaged to 16×16 and projected on 16 fixed random directions
  (a seeded Gaussian matrix, Johnson–Lindenstrauss style), which keeps coarse shape information.

Before the distance each feature is standardised by the mean and standard deviation (floored at
0.01) of the real reference set, so that no group dominates by its units. The same features and standardisation are
used for the real-vs-real baseline, which is the number to compare with.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation.metrics import area_downsample

FEATURE_SPACE = (
    "fixed features (64-D): 16-bin intensity histogram, 4x4 area-averaged layout, 8-bin gradient-"
    "magnitude histograms at full and half resolution, 16 fixed random projections of the 16x16 "
    "image; standardised by the real reference set"
)
FEATURE_DIM = 64
_PROJECTION_SEED = 20240607
_GRAD_EDGES = np.array([0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.6, np.inf])
_INTENSITY_EDGES = np.linspace(-1.0, 1.0, 17)


def _projection() -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(_PROJECTION_SEED)
    return (rng.standard_normal((256, 16)) / 16.0).astype(np.float32)


def _binned_fractions(values: npt.NDArray[np.float32], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per-image fraction of pixels in each bin: ``[N, ...]`` → ``[N, len(edges)-1]``."""
    flat = values.reshape(values.shape[0], -1)
    idx = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, len(edges) - 2)
    counts = np.zeros((flat.shape[0], len(edges) - 1), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(flat.shape[0]), flat.shape[1]), idx.ravel()), 1.0)
    return counts / flat.shape[1]


def _gradient_magnitude(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    gy, gx = np.gradient(x, axis=(1, 2))
    return np.sqrt(gy * gy + gx * gx).astype(np.float32)


def image_features(images: npt.ArrayLike, batch: int = 512) -> npt.NDArray[np.float64]:
    """Fixed features ``[N, 64]`` (see the module docstring) of images ``[N, H, W]`` in model space."""
    x_all = np.asarray(images, dtype=np.float32)
    if x_all.ndim != 3 or x_all.shape[0] == 0:
        raise EvaluationError(f"features need images [N, H, W], got shape {x_all.shape}")
    h, w = x_all.shape[1:]
    if h < 16 or w < 16:
        raise EvaluationError(f"features need images of at least 16x16 pixels, got {h}x{w}")
    proj = _projection()
    out = []
    for s in range(0, x_all.shape[0], batch):
        x = np.clip(x_all[s : s + batch], -1.0, 1.0)
        half = area_downsample(x, (h // 2, w // 2))
        feats = [
            _binned_fractions(x, _INTENSITY_EDGES),
            area_downsample(x, (4, 4)).reshape(x.shape[0], 16),
            _binned_fractions(_gradient_magnitude(x), _GRAD_EDGES),
            _binned_fractions(_gradient_magnitude(half) / 2.0, _GRAD_EDGES),  # per full-res pixel
            area_downsample(x, (16, 16)).reshape(x.shape[0], 256) @ proj,
        ]
        out.append(np.concatenate([np.asarray(f, dtype=np.float64) for f in feats], axis=1))
    return np.concatenate(out, axis=0)


def standardiser(reference: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mean and scale ``[D]`` of reference features ``[N, D]``.

    The scale is the standard deviation floored at 0.01 (features are fractions and model-space
    intensities of order 1): a feature that hardly varies among real images (e.g. an empty
    gradient bin) would otherwise turn any small synthetic difference into an enormous distance.
    """
    mu = reference.mean(axis=0)
    sd = np.maximum(reference.std(axis=0), 1e-2)
    return mu, sd


def frechet_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``[Na, D]`` and ``b`` ``[Nb, D]``:
    ``‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``.

    The trace of the matrix square root is computed from the eigenvalues of the symmetric PSD
    matrix ``Σa^½ Σb Σa^½`` (scipy.linalg.eigh) instead of ``sqrtm(Σa Σb)``: the two are equal in
    exact arithmetic, and the symmetric form never yields complex parts or fails on the
    rank-deficient covariances of small sets (fewer images than features).
    """
    from scipy.linalg import eigh

    fa, fb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise EvaluationError(f"feature sets must be [N, D] with the same D, got {fa.shape} and {fb.shape}")
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise EvaluationError("the Fréchet distance needs at least 2 images per set")
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    wa, va = eigh(ca)
    sqrt_a = (va * np.sqrt(np.clip(wa, 0.0, None))) @ va.T
    mid = sqrt_a @ cb @ sqrt_a
    w_mid = eigh((mid + mid.T) / 2.0, eigvals_only=True)
    tr_sqrt = float(np.sum(np.sqrt(np.clip(w_mid, 0.0, None))))
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2.0 * tr_sqrt)
    return max(0.0, d)
