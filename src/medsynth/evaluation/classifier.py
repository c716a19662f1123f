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
