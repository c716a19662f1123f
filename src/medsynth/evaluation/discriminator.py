"""A real-vs-synthetic discriminator: an automated visual Turing test.

A small classifier learns to tell the reference real images (class 0) from the query images
(class 1: synthetic, or for the baseline other real patients); its cross-validated accuracy is the
number: 0.5 means indistinguishable, 1.0 trivially told apart. (The MT-DDPM paper's radiologists
reached 0.77 on pelvic CT.) Folds never split a group — a real volume, a synthetic series — so the
classifier cannot win by recognising a neighbouring slice of an image it was trained on.

Two models:

* ``cnn`` (when torch is importable): three 3×3 convolution layers (16, 32, 64 channels, ReLU,
  2×2 max-pooling after the first two), global average pooling and one logit, trained with Adam
  (15 epochs, batch 32, lr 2e-3, one thread, seeded). Its input has two channels of
  :data:`INPUT_SIDE`² pixels: the whole image area-downsampled (anatomy, layout) and a central crop
  at native resolution (texture; for small images the two coincide), so 512×512 CT costs what
  64×64 does.
* ``logistic`` (no torch): L2 logistic regression on the 64 fixed features of
  :mod:`medsynth.evaluation.features` (on a ≤128-pixel working copy), the 24-bin radial log power
  spectrum at full resolution, and an 8-bin gradient-magnitude histogram of the native-resolution
  crop.

Classes are balanced by subsampling (at most ``max_per_class`` each, seeded). The reported accuracy
is out-of-fold; the per-image correctness is kept for bootstrap confidence intervals.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation.metrics import area_downsample

DiscriminatorKind = Literal["auto", "cnn", "logistic"]
INPUT_SIDE = 32
_GRAD_EDGES = np.array([0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.6, np.inf])


@dataclass(frozen=True)
class DiscriminatorResult:
    """Out-of-fold result: ``accuracy`` (balanced), per-item ``correct`` ``[M]``, the item's class
    ``labels`` ``[M]`` (0 reference, 1 query) and group ``groups`` ``[M]``."""

    accuracy: float
    correct: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int64]
    groups: npt.NDArray[np.int64]
    model: str
    folds: int


def available_kind(kind: DiscriminatorKind) -> Literal["cnn", "logistic"]:
    """``auto`` → ``cnn`` when torch is installed, else ``logistic``; ``cnn`` without torch is an error."""
    has_torch = importlib.util.find_spec("torch") is not None
    if kind == "cnn" and not has_torch:
        raise EvaluationError("the CNN discriminator needs torch (pip install 'medsynth[train]'); "
                              "use the logistic discriminator instead")
    if kind == "auto":
        return "cnn" if has_torch else "logistic"
    return kind


def two_channel(images: npt.ArrayLike, side: int = INPUT_SIDE) -> npt.NDArray[np.float32]:
    """``[N, H, W]`` → ``[N, 2, s, s]`` (s = min(side, H, W)): area-downsampled whole image, central crop."""
    x = np.asarray(images, dtype=np.float32)
    _, h, w = x.shape
    s = min(side, h, w)
    whole = area_downsample(x, (s, s)) if (h, w) != (s, s) else x
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = x[:, y0 : y0 + s, x0 : x0 + s]
    return np.stack([whole, crop], axis=1).astype(np.float32)


def _logistic_inputs(images: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    from medsynth.evaluation.features import _binned_fractions, _gradient_magnitude, image_features
    from medsynth.evaluation.texture import radial_log_spectra, working_copy

    crop = two_channel(images)[:, 1]
    return np.concatenate([image_features(working_copy(images, 128)), radial_log_spectra(images),
                           _binned_fractions(_gradient_magnitude(crop), _GRAD_EDGES)], axis=1)


def _fit_predict_logistic(x_tr: npt.NDArray[np.float64], y_tr: npt.NDArray[np.int64],
                          x_te: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    from medsynth.evaluation.classifier import fit_logistic
    from medsynth.evaluation.features import standardiser

    mu, sd = standardiser(x_tr)
    w, b = fit_logistic((x_tr - mu) / sd, y_tr, 2, l2=1e-1)
    return np.argmax(((x_te - mu) / sd) @ w + b, axis=1).astype(np.int64)


def _fit_predict_cnn(x_tr: npt.NDArray[np.float32], y_tr: npt.NDArray[np.int64], x_te: npt.NDArray[np.float32],
                     seed: int, epochs: int = 15) -> npt.NDArray[np.int64]:
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
        )
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.float32))
        g = torch.Generator().manual_seed(seed)
        loss_fn = nn.BCEWithLogitsLoss()
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=g)
            for s in range(0, len(xt), 32):
                b = order[s : s + 32]
                opt.zero_grad()
                loss = loss_fn(net(xt[b])[:, 0], yt[b])
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            logits = net(torch.from_numpy(x_te))[:, 0].numpy()
    finally:
        torch.set_num_threads(threads)
    return (logits > 0).astype(np.int64)


def discriminate(
    reference: npt.ArrayLike, reference_groups: npt.ArrayLike, query: npt.ArrayLike, query_groups: npt.ArrayLike,
    kind: DiscriminatorKind = "auto", seed: int = 0, folds: int = 5, max_per_class: int = 150,
) -> DiscriminatorResult:
    """Cross-validated accuracy of telling ``reference`` ``[Nr, H, W]`` from ``query`` ``[Nq, H, W]``
    (model space), folds by group (``*_groups`` ``[N]`` ints, e.g. volume or series index)."""
    from medsynth.evaluation.splits import group_folds

    model = available_kind(kind)
    r, q = np.asarray(reference, dtype=np.float32), np.asarray(query, dtype=np.float32)
    gr, gq = np.asarray(reference_groups, dtype=np.int64), np.asarray(query_groups, dtype=np.int64)
    rng = np.random.default_rng(seed)
    m = min(len(r), len(q), max_per_class)
    if m < 4:
        raise EvaluationError(f"the discriminator needs at least 4 images per side, has {min(len(r), len(q))}")
    ir = np.sort(rng.choice(len(r), m, replace=False))
    iq = np.sort(rng.choice(len(q), m, replace=False))
    x = np.concatenate([r[ir], q[iq]])
    y = np.concatenate([np.zeros(m, np.int64), np.ones(m, np.int64)])
    groups = np.concatenate([gr[ir], gq[iq] + (int(gr.max()) + 1)])
    k = int(min(folds, len(np.unique(gr[ir])), len(np.unique(gq[iq]))))
    if k < 2:
        raise EvaluationError("the discriminator needs at least 2 groups (volumes or series) per side")
    fold = group_folds(groups, y, k, seed)
    feats_l = _logistic_inputs(x) if model == "logistic" else None
    feats_c = two_channel(x) if model == "cnn" else None
    pred = np.empty(len(y), dtype=np.int64)
    for f in range(k):
        te, tr = fold == f, fold != f
        if not te.any():
            continue
        if feats_l is not None:
            pred[te] = _fit_predict_logistic(feats_l[tr], y[tr], feats_l[te])
        else:
            assert feats_c is not None
            pred[te] = _fit_predict_cnn(feats_c[tr], y[tr], feats_c[te], seed + f)
    correct = pred == y
    acc = 0.5 * (float(np.mean(correct[y == 0])) + float(np.mean(correct[y == 1])))
    return DiscriminatorResult(acc, correct, y, groups, model, k)
