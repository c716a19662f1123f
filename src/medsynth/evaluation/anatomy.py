"""Anatomy-aware checks for CT slices: where the bone is, not only how much.

Feature metrics on small working copies (Fréchet distance, a discriminator on 128² images) and
first-order statistics (tissue fractions) cannot tell a pelvis from a body-shaped blob with a
bright column in it. These descriptors look at the bone mask of each slice in the body's own
coordinates:

* **body** — the largest connected region above −500 HU (the CT table and air are outside), with
  its holes filled (lungs and bowel gas belong to the body);
* **bone** — body pixels at or above ``bone_hu`` (200 HU: cortical and dense trabecular bone,
  above contrast-filled vessels at typical windows) in connected pieces of at least
  ``min_piece_mm2``;
* per slice: bone fraction of the body area, number of bone pieces, and whether bone lies in both
  lateral thirds of the body (**bilateral bone**: iliac wings, acetabula, femoral heads or ribs —
  what a pelvic ring or a rib cage has and a lone spine does not);
* per set: the mean **bone map**, every slice's bone mask resampled onto its body's bounding box
  (``grid`` × ``grid``, so bodies of different size and position compare), and the Pearson
  correlation of two sets' bone maps (:func:`bone_map_correlation`: 1 = bone in the same places).

Arrays: slices ``[N, H, W]`` in HU with square pixels of ``pixel_mm`` mm. numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError

BONE_HU = 200.0
BODY_HU = -500.0


@dataclass(frozen=True)
class BoneProfile:
    """Bone descriptors of a set of CT slices (see the module docstring).

    ``bone_fraction``, ``pieces`` and ``bilateral`` are per slice ``[N]``; ``bone_map`` is the
    set's mean bone mask on the body's bounding box ``[grid, grid]`` (fraction of slices with bone
    there, 0…1)."""

    bone_fraction: npt.NDArray[np.float64]
    pieces: npt.NDArray[np.int64]
    bilateral: npt.NDArray[np.bool_]
    bone_map: npt.NDArray[np.float64]

    @property
    def n(self) -> int:
        return int(len(self.bone_fraction))

    def summary(self) -> dict[str, float]:
        """Set means: bone fraction of the body, bone pieces per slice, share of slices with bilateral bone."""
        return {"bone_fraction": float(self.bone_fraction.mean()), "bone_pieces": float(self.pieces.mean()),
                "bilateral_bone": float(self.bilateral.mean()), "slices": float(self.n)}


def body_mask(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
    """The body of one slice ``[H, W]`` (HU): the largest 8-connected region above −500 HU, holes filled."""
    from scipy import ndimage

    from medsynth.prepare import largest_component

    return np.asarray(ndimage.binary_fill_holes(largest_component((hu > BODY_HU)[None])[0]), dtype=bool)


def bone_profile(slices_hu: npt.ArrayLike, pixel_mm: float, bone_hu: float = BONE_HU,
                 min_piece_mm2: float = 10.0, grid: int = 48) -> BoneProfile:
    """:class:`BoneProfile` of CT slices ``[N, H, W]`` in HU with ``pixel_mm`` mm square pixels.

    A slice without a body (all air) counts as no bone, not bilateral, and adds nothing to the map.
    """
    from scipy import ndimage

    x = np.asarray(slices_hu, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] == 0:
        raise EvaluationError(f"bone_profile needs slices [N, H, W], got shape {x.shape}")
    if not pixel_mm > 0:
        raise EvaluationError(f"pixel spacing must be > 0 mm, got {pixel_mm}")
    min_px = max(1, int(round(min_piece_mm2 / (pixel_mm * pixel_mm))))
    frac = np.zeros(len(x))
    pieces = np.zeros(len(x), dtype=np.int64)
    bilateral = np.zeros(len(x), dtype=bool)
    acc = np.zeros((grid, grid))
    counted = 0
    for i, s in enumerate(x):
        body = body_mask(s)
        if body.sum() < min_px:
            continue
        lab, n = ndimage.label((s >= bone_hu) & body, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = np.nonzero(sizes[1:] >= min_px)[0] + 1
        bone = np.isin(lab, keep)
        frac[i] = bone.sum() / body.sum()
        pieces[i] = len(keep)
        ys, xs = np.nonzero(body)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        _, bx = np.nonzero(bone)
        third = (x1 - x0) / 3.0
        bilateral[i] = bool(np.any(bx < x0 + third) and np.any(bx >= x1 - third))
        box = bone[y0:y1, x0:x1].astype(np.float64)
        acc += ndimage.zoom(box, (grid / box.shape[0], grid / box.shape[1]), order=1)[:grid, :grid] > 0.5
        counted += 1
    return BoneProfile(frac, pieces, bilateral, acc / max(counted, 1))


def bone_map_correlation(a: BoneProfile, b: BoneProfile) -> float:
    """Pearson correlation of two sets' mean bone maps (1 = bone in the same places of the body;
    0 = unrelated; NaN when either map is constant, e.g. a set without any bone)."""
    u, v = a.bone_map.ravel(), b.bone_map.ravel()
    if u.std() == 0 or v.std() == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])
