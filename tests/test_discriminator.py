"""The real-vs-synthetic discriminator on real X-rays: other patients look real, degraded images do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.errors import EvaluationError
from medsynth.evaluation.discriminator import discriminate, two_channel


@pytest.fixture(scope="module")
def xr(shared_data: Path) -> np.ndarray:
    """300 random PneumoniaMNIST validation+test images, model space (each image a different patient's film)."""
    d = np.load(shared_data / "xr" / "pneumoniamnist_28.npz")
    x = np.concatenate([d["val_images"], d["test_images"]]).astype(np.float32)
    x = x[np.random.default_rng(0).permutation(len(x))[:300]]  # the files are ordered by class
    return (np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="edge") / 255.0 * 2 - 1).astype(np.float32)


def _shuffled(x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(im.ravel()).reshape(im.shape) for im in x])


def test_logistic_discriminator(xr: np.ndarray) -> None:
    a, b = xr[:150], xr[150:]
    ga, gb = np.arange(150), np.arange(150)
    real = discriminate(b, gb, a, ga, kind="logistic", max_per_class=100)
    assert real.model == "logistic" and real.folds == 5
    assert real.accuracy < 0.65  # other patients' images: close to chance
    bad = discriminate(b, gb, _shuffled(a), ga, kind="logistic", max_per_class=100)
    assert bad.accuracy > 0.95
    assert bad.correct.shape == bad.labels.shape == (200,)
    assert discriminate(b, gb, a, ga, kind="logistic", max_per_class=100).accuracy == real.accuracy  # seeded


def test_cnn_discriminator(xr: np.ndarray) -> None:
    pytest.importorskip("torch")
    a, b = xr[:80], xr[80:160]
    bad = discriminate(b, np.arange(80), _shuffled(a), np.arange(80), kind="cnn", folds=3, max_per_class=60)
    assert bad.model == "cnn" and bad.accuracy > 0.9


def test_folds_need_groups_and_inputs_are_two_channel(xr: np.ndarray) -> None:
    with pytest.raises(EvaluationError, match="2 groups"):
        discriminate(xr[:20], np.zeros(20), xr[20:40], np.zeros(20), kind="logistic")
    big = np.zeros((2, 512, 512), np.float32)
    big[:, 240:272, 240:272] = 1.0
    t = two_channel(big)
    assert t.shape == (2, 2, 32, 32)
    assert t[0, 1].min() == 1.0 and t[0, 0].mean() < 0.01  # crop at native resolution vs whole image
