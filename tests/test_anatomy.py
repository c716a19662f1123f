"""Bone descriptors on a real pelvic CT (shared data), and on copies with the pelvic ring removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.errors import EvaluationError
from medsynth.evaluation.anatomy import body_mask, bone_map_correlation, bone_profile


@pytest.fixture(scope="module")
def pelvis(shared_data: Path) -> np.ndarray:
    """Axial slices [40, 101, 122] (HU, 3 mm pixels) from the femoral heads up through the iliac wings."""
    import SimpleITK as sitk

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz")))
    return vol[:40].astype(np.float32)


def _spine_only(slices: np.ndarray) -> np.ndarray:
    """Bone in the lateral thirds of each body replaced by muscle (40 HU): a spine with no pelvic ring."""
    out = slices.copy()
    for s in out:
        xs = np.nonzero(body_mask(s))[1]
        third = (xs.max() + 1 - xs.min()) / 3
        cols = np.arange(s.shape[1])
        lateral = (cols < xs.min() + third) | (cols >= xs.max() + 1 - third)
        s[:, lateral] = np.where(s[:, lateral] >= 200, 40.0, s[:, lateral])
    return out


def test_real_pelvis_has_bilateral_bone_in_several_pieces(pelvis: np.ndarray) -> None:
    p = bone_profile(pelvis, pixel_mm=3.0)
    s = p.summary()
    assert s["slices"] == 40
    assert s["bilateral_bone"] >= 0.9  # iliac wings / acetabula / femoral heads on both sides
    assert s["bone_pieces"] >= 2
    assert 0.02 < s["bone_fraction"] < 0.3
    assert p.bone_map.shape == (48, 48) and p.bone_map.min() >= 0 and p.bone_map.max() <= 1


def test_removing_the_pelvic_ring_is_seen_by_laterality_and_the_bone_map(pelvis: np.ndarray) -> None:
    ref, other = bone_profile(pelvis[0::2], 3.0), bone_profile(pelvis[1::2], 3.0)
    spine = bone_profile(_spine_only(pelvis[1::2]), 3.0)
    assert spine.summary()["bilateral_bone"] == 0.0
    real_vs_real = bone_map_correlation(other, ref)
    assert real_vs_real > 0.8
    assert bone_map_correlation(spine, ref) < real_vs_real - 0.2
    # the same tissue fractions would not show this: spine-only keeps every pixel's class but bone's
    shuffled = pelvis[1::2].copy()
    rng = np.random.default_rng(0)
    for s in shuffled:
        m = body_mask(s)
        s[m] = rng.permutation(s[m])
    assert bone_map_correlation(bone_profile(shuffled, 3.0), ref) < real_vs_real - 0.2


def test_a_slice_without_body_counts_as_no_bone_and_bad_input_is_refused() -> None:
    air = np.full((2, 32, 32), -1000.0, dtype=np.float32)
    p = bone_profile(air, 1.0)
    assert p.summary() == {"bone_fraction": 0.0, "bone_pieces": 0.0, "bilateral_bone": 0.0, "slices": 2.0}
    assert np.isnan(bone_map_correlation(p, p))
    with pytest.raises(EvaluationError, match="slices"):
        bone_profile(np.zeros((32, 32)), 1.0)
    with pytest.raises(EvaluationError, match="spacing"):
        bone_profile(air, 0.0)
