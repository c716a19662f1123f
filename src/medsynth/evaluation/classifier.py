"""The malaria-DDPM classifier test, torch-free: a small classifier trained on real images only.

The classifier is multinomial logistic regression (L2-regularised, fitted with scipy's L-BFGS) on
128 numbers per image: the 64 fixed features of :mod:`medsynth.evaluation.features` plus the image
area-averaged to 8×8 pixels, standardised on the training images. It is deliberately small and
deterministic: what matters is how its accuracy on synthetic images compares with its accuracy on
held-out real images, not its absolute accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation.features import image_features, standardiser
from medsynth.evaluation.metrics import area_downsample


def classifier_inputs(images: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Classifier inputs ``[N, 128]`` of images ``[N, H, W]`` in model space."""
    x = np.asarray(images, dtype=np.float32)
    pix = area_downsample(x, (8, 8)).reshape(x.shape[0], 64).astype(np.float64)
    return np.concatenate([image_features(x), pix], axis=1)


@dataclass(frozen=True)
class LogisticClassifier:
    """A fitted multinomial logistic regression: weights ``[D, C]``, bias ``[C]``, input standardisation."""

    weights: npt.NDArray[np.float64]
    bias: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    def predict(self, images: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Predicted class index ``[N]`` for images ``[N, H, W]``."""
        z = (classifier_inputs(images) - self.mean) / self.scale
        return np.argmax(z @ self.weights + self.bias, axis=1).astype(np.int64)


def fit_classifier(
    images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int, l2: float = 1e-2
) -> LogisticClassifier:
    """Fit on images ``[N, H, W]`` with integer labels ``[N]`` in ``0..n_classes-1``."""
    y = np.asarray(labels, dtype=np.int64)
    feats = classifier_inputs(images)
    if feats.shape[0] != y.shape[0]:
        raise EvaluationError(f"{feats.shape[0]} images but {y.shape[0]} labels")
    if len(np.unique(y)) < 2:
        raise EvaluationError("the classifier test needs real images of at least two classes")
    mean, scale = standardiser(feats)
    w, bias = fit_logistic((feats - mean) / scale, y, n_classes, l2)
    return LogisticClassifier(w, bias, mean, scale)


def fit_logistic(
    z: npt.NDArray[np.float64], y: npt.NDArray[np.int64], n_classes: int, l2: float = 1e-2
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Multinomial logistic regression (L2, L-BFGS) on standardised inputs ``z`` ``[N, D]`` and labels
    ``[N]`` → weights ``[D, C]`` and bias ``[C]``."""
    from scipy.optimize import minimize

    n, d = z.shape
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        w = theta[: d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes :]
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.sum(onehot * np.log(p + 1e-12)) / n + 0.5 * l2 * np.sum(w * w)
        g = (p - onehot) / n
        gw = z.T @ g + l2 * w
        return float(loss), np.concatenate([gw.ravel(), g.sum(axis=0)])

    res = minimize(loss_grad, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500})
    return res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes :]


def per_class_accuracy(
    predicted: npt.ArrayLike, truth: npt.ArrayLike, class_names: tuple[str, ...]
) -> dict[str, dict[str, float | int | None]]:
    """``{class: {"accuracy": fraction correct or None when absent, "n": count}}`` plus ``"all"``."""
    p, t = np.asarray(predicted), np.asarray(truth)
    out: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(class_names):
        m = t == i
        out[name] = {"accuracy": float(np.mean(p[m] == i)) if m.any() else None, "n": int(m.sum())}
    out["all"] = {"accuracy": float(np.mean(p == t)) if t.size else None, "n": int(t.size)}
    return out


def balanced_accuracy(predicted: npt.ArrayLike, truth: npt.ArrayLike, n_classes: int) -> float:
    """Mean per-class recall over the classes present in ``truth`` (0.5 = chance for two balanced classes)."""
    p, t = np.asarray(predicted), np.asarray(truth)
    recalls = [float(np.mean(p[t == c] == c)) for c in range(n_classes) if np.any(t == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def _matched_subset(labels: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64],
                    rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Indices into ``labels`` with as many images of each class as ``wanted`` has (fewer when short)."""
    out = []
    for c in np.unique(wanted):
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(len(idx), int(np.sum(wanted == c))), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def train_on_synthetic(
    real_train: npt.ArrayLike, real_train_labels: npt.ArrayLike,
    synthetic: npt.ArrayLike, synthetic_labels: npt.ArrayLike,
    test: npt.ArrayLike, test_labels: npt.ArrayLike, test_groups: npt.ArrayLike,
    n_classes: int, seed: int = 0, n_boot: int = 100,
) -> dict[str, object] | None:
    """Train-on-synthetic / test-on-real (TSTR) and augmentation, with the classifier of this module.

    Four classifiers, all tested on the same real ``test`` images (patients none of them saw):
    ``real`` — trained on real images, as many per class as the synthetic set has (a class-balanced
    subsample of ``real_train``); ``synthetic`` — trained on the synthetic images only (TSTR);
    ``real+synthetic`` — the same real images plus the synthetic ones (does augmentation help?);
    ``real_all`` — every real training image (the ceiling). Scores are balanced accuracies (mean
    per-class recall); 95 % intervals resample whole test volumes (``test_groups``), paired across
    the classifiers, so ``augmentation_gain`` (real+synthetic − real) and ``tstr_gap`` (synthetic −
    real) have intervals of their own. Only the classes with ≥ 2 images on every side are used
    (``classes``); None when fewer than two are.
    """
    xr, yr = np.asarray(real_train, np.float32), np.asarray(real_train_labels, np.int64)
    xs, ys = np.asarray(synthetic, np.float32), np.asarray(synthetic_labels, np.int64)
    xt, yt, gt = np.asarray(test, np.float32), np.asarray(test_labels, np.int64), np.asarray(test_groups)
    known = ys >= 0
    xs, ys = xs[known], ys[known]

    # only classes every side has (≥ 2 images each): a class missing from the real training side
    # would make synthetic images look useful merely for covering it
    def has(y: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return np.bincount(y, minlength=n_classes)[:n_classes] >= 2

    common = np.flatnonzero(has(yr) & has(ys) & has(yt))
    if len(common) < 2:
        return None
    keep_r, keep_s, keep_t = np.isin(yr, common), np.isin(ys, common), np.isin(yt, common)
    xr, yr, xs, ys = xr[keep_r], yr[keep_r], xs[keep_s], ys[keep_s]
    xt, yt, gt = xt[keep_t], yt[keep_t], gt[keep_t]
    rng = np.random.default_rng(seed)
    im = _matched_subset(yr, ys, rng)
    train_sets = {
        "real": (xr[im], yr[im]),
        "synthetic": (xs, ys),
        "real+synthetic": (np.concatenate([xr[im], xs]), np.concatenate([yr[im], ys])),
        "real_all": (xr, yr),
    }
    correct: dict[str, npt.NDArray[np.bool_]] = {}
    n_train: dict[str, int] = {}
    for name, (x, y) in train_sets.items():
        correct[name] = fit_classifier(x, y, n_classes).predict(xt) == yt
        n_train[name] = int(len(y))

    def score(ok: npt.NDArray[np.bool_], idx: npt.NDArray[np.int64]) -> float:
        return balanced_accuracy(np.where(ok[idx], yt[idx], -1), yt[idx], n_classes)

    uniq = np.unique(gt)
    members = [np.flatnonzero(gt == g) for g in uniq]
    boots: dict[str, list[float]] = {k: [] for k in (*correct, "augmentation_gain", "tstr_gap")}
    brng = np.random.default_rng(seed + 1)
    for _ in range(n_boot if len(uniq) > 1 else 0):
        idx = np.concatenate([members[i] for i in brng.integers(0, len(uniq), len(uniq))])
        vals = {k: score(v, idx) for k, v in correct.items()}
        for k, v in vals.items():
            boots[k].append(v)
        boots["augmentation_gain"].append(vals["real+synthetic"] - vals["real"])
        boots["tstr_gap"].append(vals["synthetic"] - vals["real"])
    everything = np.arange(len(yt))
    est = {k: score(v, everything) for k, v in correct.items()}
    est["augmentation_gain"] = est["real+synthetic"] - est["real"]
    est["tstr_gap"] = est["synthetic"] - est["real"]

    def interval(k: str) -> list[float] | None:
        b = np.asarray(boots[k])
        if b.size == 0:
            return None
        lo, hi = np.nanpercentile(b, [2.5, 97.5])
        return [float(min(lo, est[k])), float(max(hi, est[k]))]

    return {
        "model": "multinomial logistic regression (L2) on 64 fixed features + 8x8 pixels",
        "score": "balanced accuracy on the real test images (mean per-class recall)",
        "n_train": n_train,
        "classes": [int(c) for c in common],
        "n_test": int(len(yt)), "test_volumes": int(len(uniq)),
        "balanced_accuracy": {k: {"value": est[k], "ci": interval(k)} for k in correct},
        "augmentation_gain": {"value": est["augmentation_gain"], "ci": interval("augmentation_gain")},
        "tstr_gap": {"value": est["tstr_gap"], "ci": interval("tstr_gap")},
    }
