"""medsynth.studies on a real chest CT (the same scan reconstructed with a soft B and a lung L kernel):
reformats and the localizer put every pixel where the axial voxels it comes from are, and the sharp
kernel sharpens in the direction a real lung kernel does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.studies import MIN_ROWS, coronal, localizer, sagittal, sharp_kernel


@pytest.fixture(scope="module")
def chest(shared_data: Path) -> tuple[np.ndarray, np.ndarray, VolumeGeometry]:
    """Both kernels, 20 slices, every 8th voxel in-plane (64 x 64 at 6.7 mm, as a pack's matrix)."""
    out = []
    for kernel in ("B", "L"):
        img = sitk.ReadImage(str(shared_data / "ct" / f"chest_lungpetctdx_A0001_kernel_{kernel}.nii.gz"))
        sub = img[::8, ::8, 20:40]
        out.append((sitk.GetArrayFromImage(sub).astype(np.float64), VolumeGeometry.from_sitk(sub)))
    return out[0][0], out[1][0], out[0][1]


def _pixel_position(g: VolumeGeometry, k: int, row: float, col: float) -> np.ndarray:
    m = g.matrix
    return (np.asarray(g.origin) + col * g.spacing[0] * m[:, 0] + row * g.spacing[1] * m[:, 1]
            + k * g.spacing[2] * m[:, 2])


def test_reformats_sit_where_their_voxels_are(chest: tuple[np.ndarray, np.ndarray, VolumeGeometry]) -> None:
    vol, _, geom = chest
    n, rows, cols = vol.shape
    for cut, axis in ((coronal, 1), (sagittal, 2)):
        images, g = cut(vol, geom)
        assert images.shape[1] == max(n, MIN_ROWS)
        assert np.allclose(np.cross(g.row_cosines, g.column_cosines), g.slice_normal)  # right-handed
        step = rows // images.shape[0] if axis == 1 else cols // images.shape[0]
        for k in (0, images.shape[0] // 2, images.shape[0] - 1):
            # the top row of slab k is the top axial slice averaged over the slab's voxels
            if axis == 1:
                idx = range(k * step, (k + 1) * step)
                expected = vol[n - 1, list(idx), :].mean(axis=0)
                voxels = [_pixel_position(geom, n - 1, j, 0) for j in idx]
            else:
                idx = range(cols - 1 - k * step, cols - 1 - (k + 1) * step, -1)
                expected = vol[n - 1, :, list(idx)].mean(axis=0)
                voxels = [_pixel_position(geom, n - 1, 0, i) for i in idx]
            top_row = images[k, 0]
            # interpolated rows: the first row lies within half a slice of the top slice
            assert np.allclose(top_row, expected, atol=np.abs(vol[n - 1] - vol[n - 2]).max() + 1e-6)
            centre = np.mean(voxels, axis=0)
            pos = _pixel_position(g, k, 0, 0)
            assert np.allclose(pos[:2], centre[:2], atol=1e-6)  # x and y: the slab's centre
            assert abs(pos[2] - centre[2]) <= geom.spacing[2] / 2
        # the images span the volume's z extent, head at the top
        bottom = _pixel_position(g, 0, images.shape[1] - 1, 0)[2]
        assert bottom < _pixel_position(g, 0, 0, 0)[2]
        extent = images.shape[1] * g.spacing[1]
        assert extent == pytest.approx(n * geom.spacing[2])


def test_localizer_is_an_ap_projection(chest: tuple[np.ndarray, np.ndarray, VolumeGeometry]) -> None:
    vol, _, geom = chest
    img, g = localizer(vol, geom)
    assert img.shape == (1, max(vol.shape[0], MIN_ROWS), vol.shape[2])
    assert g.slice_normal == pytest.approx((0.0, 1.0, 0.0))  # a coronal plane, viewed from the front
    # a projection keeps the mean attenuation of the volume
    assert img[0].mean() == pytest.approx(vol.mean(), abs=15.0)


def test_sharp_kernel_sharpens_like_a_lung_kernel(chest: tuple[np.ndarray, np.ndarray, VolumeGeometry]) -> None:
    soft, lung, _ = chest

    def hf(v: np.ndarray) -> float:  # high-frequency energy: mean squared in-plane Laplacian
        lap = 4 * v[:, 1:-1, 1:-1] - v[:, :-2, 1:-1] - v[:, 2:, 1:-1] - v[:, 1:-1, :-2] - v[:, 1:-1, 2:]
        return float(np.mean(lap ** 2))

    ours = sharp_kernel(soft)
    assert hf(lung) > hf(soft) and hf(ours) > 1.5 * hf(soft)
    assert abs(ours.mean() - soft.mean()) < 5.0  # the mean HU is kept
