"""Splitting real data by volume (patient/series), never by slice, and resampling by group.

Adjacent slices of one volume are nearly identical (SSIM up to 0.995 for overlapping 3 mm slices
2 mm apart), so any split that puts slices of one volume on both sides measures how well a volume
matches *itself*. Every split here keeps each volume whole:

* :func:`volume_halves` — the A/B halves of the real-vs-real baseline;
* :func:`group_folds` — cross-validation folds (the discriminator), stratified by class;
* :class:`GroupBootstrap` — bootstrap resampling of whole groups for confidence intervals.

Datasets with a single volume cannot be split by volume: :func:`volume_halves` then falls back to
contiguous blocks of slices separated by a gap (:data:`BLOCK_SLICES`, :data:`GAP_SLICES`) and says
so in its ``kind`` ("blocks within one volume"), which the report prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError

IntArray = npt.NDArray[np.int64]
BLOCK_SLICES = 8
GAP_SLICES = 2


@dataclass(frozen=True)
class Split:
    """Two disjoint index sets and how they were made (``kind``: "volumes" or "blocks within one volume")."""

    a: IntArray
    b: IntArray
    kind: str
    volumes_a: int
    volumes_b: int


def volume_halves(volumes: npt.ArrayLike, positions: npt.ArrayLike | None, seed: int,
                  labels: npt.ArrayLike | None = None) -> Split:
    """Split indices ``0..N-1`` into halves A and B with no volume on both sides.

    Volumes are grouped by their (most common) label, shuffled (seeded), ordered largest first
    within each label, and each goes to the half with fewer volumes of its label (ties: fewer slices
    so far), so the halves are balanced in volumes (patients) per condition and roughly in slices: a chest-only half
    against an abdomen-only half would make the real-vs-real baseline measure anatomy, not realism.
    With one volume only, the slices (ordered by ``positions``) are cut into blocks of
    :data:`BLOCK_SLICES` dealt alternately to A and B, dropping :data:`GAP_SLICES` slices at each
    boundary so no two neighbours straddle the split.
    """
    vol = np.asarray(volumes, dtype=np.int64)
    n = len(vol)
    if n < 4:
        raise EvaluationError(f"the real set needs at least 4 images to split into two halves, has {n}")
    rng = np.random.default_rng(seed)
    ids = np.unique(vol)
    if len(ids) >= 2:
        lab = np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        sizes = {int(v): int(np.sum(vol == v)) for v in ids}
        label_of = {int(v): int(np.bincount(lab[vol == v] - lab.min()).argmax()) for v in ids}
        order = sorted(rng.permutation(ids).tolist(), key=lambda v: (label_of[v], -sizes[v]))
        side: dict[int, int] = {}
        per_label: dict[tuple[int, int], int] = {}
        slices = [0, 0]
        for v in order:  # to the side with fewer volumes of this label; ties: fewer slices; then A
            k = min((0, 1), key=lambda h: (per_label.get((label_of[v], h), 0), slices[h], h))
            side[v] = k
            per_label[(label_of[v], k)] = per_label.get((label_of[v], k), 0) + 1
            slices[k] += sizes[v]
        in_a = np.array([side[int(v)] == 0 for v in vol])
        return Split(np.flatnonzero(in_a).astype(np.int64), np.flatnonzero(~in_a).astype(np.int64), "volumes",
                     sum(1 for s in side.values() if s == 0), sum(1 for s in side.values() if s == 1))
    pos = np.arange(n, dtype=np.float64) if positions is None else np.asarray(positions, dtype=np.float64)
    order_idx = np.argsort(pos, kind="stable")
    block = max(2, min(BLOCK_SLICES, n // 4))
    gap = GAP_SLICES if n >= 4 * (block + GAP_SLICES) else 0
    a: list[int] = []
    b: list[int] = []
    start = int(rng.integers(0, 2))
    for k, s in enumerate(range(0, n, block + gap)):
        (a if (k + start) % 2 == 0 else b).extend(order_idx[s : s + block].tolist())
    if not a or not b:
        raise EvaluationError("the real set's single volume is too short to split into blocks")
    return Split(np.sort(np.array(a, np.int64)), np.sort(np.array(b, np.int64)), "blocks within one volume", 1, 1)


def cv_groups(volumes: npt.ArrayLike, positions: npt.ArrayLike | None, min_groups: int) -> tuple[IntArray, str]:
    """Groups for cross-validation: the volumes when there are at least ``min_groups``, else each
    volume cut into contiguous blocks of slices (by ``positions``) so that there are enough."""
    vol = np.asarray(volumes, dtype=np.int64)
    ids = np.unique(vol)
    if len(ids) >= min_groups:
        return np.searchsorted(ids, vol).astype(np.int64), "volumes"
    pos = np.zeros(len(vol)) if positions is None else np.asarray(positions, dtype=np.float64)
    groups = np.empty(len(vol), dtype=np.int64)
    per = int(np.ceil(min_groups / len(ids)))
    nxt = 0
    for v in ids:
        idx = np.flatnonzero(vol == v)
        idx = idx[np.argsort(pos[idx], kind="stable")]
        for chunk in np.array_split(idx, min(per, len(idx))):
            groups[chunk] = nxt
            nxt += 1
    return groups, "slice blocks (fewer volumes than folds)"


def group_folds(groups: npt.ArrayLike, labels: npt.ArrayLike, k: int, seed: int) -> IntArray:
    """Fold number ``[N]`` in ``0..k-1`` per item; every group lies in one fold, and each class's
    groups are dealt round-robin (shuffled, seeded) so every fold holds both classes when it can."""
    g = np.asarray(groups, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.full(len(g), -1, dtype=np.int64)
    for c in np.unique(y):
        gs = rng.permutation(np.unique(g[y == c]))
        for i, grp in enumerate(gs.tolist()):
            fold[(g == grp) & (y == c)] = i % k
    return fold


class GroupBootstrap:
    """Bootstrap resampling of whole groups: :meth:`draw` returns item indices of ``len(groups)``
    groups drawn with replacement (each drawn group contributes all its items)."""

    def __init__(self, groups: npt.ArrayLike, rng: np.random.Generator) -> None:
        g = np.asarray(groups, dtype=np.int64)
        order = np.argsort(g, kind="stable")
        ids, starts = np.unique(g[order], return_index=True)
        self._members = np.split(order, starts[1:])
        self._rng = rng
        self.n_groups = len(ids)

    def draw(self) -> IntArray:
        pick = self._rng.integers(0, self.n_groups, size=self.n_groups)
        return np.concatenate([self._members[i] for i in pick]).astype(np.int64)
