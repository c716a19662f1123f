"""Radial power spectra, working copies and adjacent-slice SSIM on real CT slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.evaluation.texture import (
    adjacent_pairs,
    adjacent_ssim,
    radial_log_spectra,
    spectrum_distance,
    working_copy,
)


@pytest.fixture(scope="module")
def ct512(shared_data: Path) -> np.ndarray:
    """20 real 512x512 slices of the chest CT (lung kernel B), model space [-1, 1]."""
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct" / "chest_lungpetctdx_A0001_kernel_B.nii.gz")))
    x = hu[20:40].astype(np.float32)
    return np.clip((x + 1024.0) / 3071.0 * 2 - 1, -1, 1).astype(np.float32)


def test_spectrum_sees_blur_noise_and_shuffling_but_not_identity(ct512: np.ndarray) -> None:
    from scipy.ndimage import gaussian_filter

    real = radial_log_spectra(ct512)
    assert real.shape == (20, 24) and np.all(np.isfinite(real))
    assert spectrum_distance(real, real) == 0.0
    blurred = radial_log_spectra(np.stack([gaussian_filter(im, 1.0) for im in ct512]))
    assert np.all(blurred[:, -6:].mean(axis=0) < real[:, -6:].mean(axis=0) - 0.5)  # high frequencies lost
    rng = np.random.default_rng(0)
    shuffled = radial_log_spectra(np.stack([rng.permutation(im.ravel()).reshape(im.shape) for im in ct512]))
    assert np.ptp(shuffled.mean(axis=0)) < 0.3 * np.ptp(real.mean(axis=0))  # white: a flat spectrum
    # other real slices of the same scan are far closer than any degradation
    other = radial_log_spectra(ct512[::-1].copy()[:10])
    d_real = spectrum_distance(other, real)
    assert d_real < 0.2 * spectrum_distance(blurred, real) and d_real < 0.2 * spectrum_distance(shuffled, real)


def test_working_copy_keeps_512_ct_cheap(ct512: np.ndarray) -> None:
    w = working_copy(ct512, 128)
    assert w.shape == (20, 128, 128)
    np.testing.assert_allclose(w.mean(axis=(1, 2)), ct512.mean(axis=(1, 2)), atol=1e-5)  # area averaging
    assert working_copy(w, 128) is w or np.shares_memory(working_copy(w, 128), w)


def test_adjacent_slices_are_coherent_shuffled_order_is_not(ct512: np.ndarray) -> None:
    w = working_copy(ct512, 128)
    vols = np.array([0] * 10 + [1] * 10)
    pos = np.tile(np.arange(10, dtype=np.float32), 2)
    pairs = adjacent_pairs(vols, pos)
    assert pairs.shape == (18, 2) and np.all(vols[pairs[:, 0]] == vols[pairs[:, 1]])
    coherent = adjacent_ssim(w, pairs).mean()
    shuffled_pos = pos.copy()
    rng = np.random.default_rng(3)
    shuffled_pos[:10], shuffled_pos[10:] = rng.permutation(pos[:10]), rng.permutation(pos[10:])
    incoherent = adjacent_ssim(w, adjacent_pairs(vols, shuffled_pos)).mean()
    assert coherent > 0.8 and incoherent < coherent - 0.05
