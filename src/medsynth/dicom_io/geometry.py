"""Volume geometry shared by the readers and the writer (DICOM patient coordinates, LPS, mm).

Arrays are indexed ``[z, y, x]`` = ``[slice, row, column]``, as ``SimpleITK.GetArrayFromImage``
returns them. Spacing and origin are in SimpleITK's (x, y, z) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.errors import GeometryError

if TYPE_CHECKING:
    import SimpleITK as sitk

Vec3 = tuple[float, float, float]
Mat3 = tuple[float, float, float, float, float, float, float, float, float]
IDENTITY: Mat3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a ``[Z, Y, X]`` voxel array sits in the patient (LPS, mm).

    ``origin``: centre of voxel [0, 0, 0], mm. ``spacing``: (column spacing, row spacing, slice
    spacing), mm. ``direction``: 3×3 row-major direction cosines, SimpleITK's convention: column
    ``i`` (``direction[i], direction[3 + i], direction[6 + i]``) is the unit vector along array
    axis x (i=0, columns), y (i=1, rows), z (i=2, slices).
    """

    origin: Vec3
    spacing: Vec3
    direction: Mat3 = IDENTITY

    def __post_init__(self) -> None:
        if len(self.origin) != 3 or len(self.spacing) != 3 or len(self.direction) != 9:
            raise GeometryError("geometry needs a 3-vector origin and spacing and a 3x3 direction")
        if not all(np.isfinite(v) for v in (*self.origin, *self.spacing, *self.direction)):
            raise GeometryError("geometry holds a non-finite value")
        if any(s <= 0 for s in self.spacing):
            raise GeometryError(f"spacing must be positive, got {self.spacing}")
        d = self.matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise GeometryError("direction cosines are not orthonormal (sheared or tilted geometry)")

    @property
    def matrix(self) -> np.ndarray:
        """Direction as a 3×3 array whose columns are the x, y, z axis unit vectors."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def row_cosines(self) -> Vec3:
        """DICOM ImageOrientationPatient[0:3]: direction of increasing column index."""
        m = self.matrix
        return (float(m[0, 0]), float(m[1, 0]), float(m[2, 0]))

    @property
    def column_cosines(self) -> Vec3:
        """DICOM ImageOrientationPatient[3:6]: direction of increasing row index."""
        m = self.matrix
        return (float(m[0, 1]), float(m[1, 1]), float(m[2, 1]))

    @property
    def slice_normal(self) -> Vec3:
        """Unit vector along increasing slice index."""
        m = self.matrix
        return (float(m[0, 2]), float(m[1, 2]), float(m[2, 2]))

    def slice_position(self, k: int) -> Vec3:
        """ImagePositionPatient of slice ``k`` (centre of its first voxel), mm."""
        p = np.asarray(self.origin) + k * self.spacing[2] * np.asarray(self.slice_normal)
        return (float(p[0]), float(p[1]), float(p[2]))

    @classmethod
    def axial(cls, matrix: tuple[int, int], pixel_spacing_mm: tuple[float, float], slice_spacing_mm: float,
              n_slices: int, centre: Vec3 = (0.0, 0.0, 0.0)) -> VolumeGeometry:
        """An axial (identity-direction) geometry centred on ``centre``.

        ``matrix`` is (rows, columns), ``pixel_spacing_mm`` is (row spacing, column spacing).
        """
        rows, cols = matrix
        sy, sx = pixel_spacing_mm
        sz = slice_spacing_mm if slice_spacing_mm > 0 else 1.0
        origin = (
            centre[0] - (cols - 1) * sx / 2.0,
            centre[1] - (rows - 1) * sy / 2.0,
            centre[2] - (n_slices - 1) * sz / 2.0,
        )
        return cls(origin=origin, spacing=(sx, sy, sz))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> VolumeGeometry:
        """Geometry of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),  # type: ignore[arg-type]
        )

    def apply_to(self, image: Any) -> None:
        """Set this geometry on a SimpleITK image (in place)."""
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)


def right_handed(volume: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """Flip the slice axis of a left-handed volume so slices step along row × column.

    DICOM readers reconstruct the slice direction as the cross product of the row and column
    cosines; writing a left-handed volume as-is would make them read it mirrored in z.
    """
    m = geometry.matrix
    if np.dot(np.cross(m[:, 0], m[:, 1]), m[:, 2]) > 0:
        return volume, geometry
    n = volume.shape[0]
    new_origin = geometry.slice_position(n - 1)
    d = m.copy()
    d[:, 2] = -d[:, 2]
    flipped = VolumeGeometry(origin=new_origin, spacing=geometry.spacing,
                             direction=tuple(float(v) for v in d.reshape(-1)))  # type: ignore[arg-type]
    return volume[::-1], flipped
