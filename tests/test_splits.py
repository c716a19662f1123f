"""Volume-level splits, grouped folds and group bootstrap, on a real multi-volume CT dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.dataset import load_dataset, slice_volumes
from medsynth.evaluation.splits import GAP_SLICES, GroupBootstrap, cv_groups, group_folds, volume_halves
from medsynth.prepare import PrepareConfig, prepare_dataset

CT_FILES = ["ct/abdomen_pelvis_totalseg.nii.gz", "ct/chest_pyradiomics_lung1.nrrd", "ct/chest_pyradiomics_lung2.nrrd",
            "ct/upper_abdomen_dicom"]


@pytest.fixture(scope="module")
def ct_dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("splits") / "ct"
    prepare_dataset([shared_data / f for f in CT_FILES], out, PrepareConfig(preset="ct-pelvis", slice_spacing_mm=0))
    return out


def test_prepare_records_one_volume_per_scan(ct_dataset: Path, shared_data: Path, tmp_path: Path) -> None:
    ds = load_dataset(ct_dataset)
    vols = slice_volumes(ds)
    assert (ct_dataset / "volumes.npy").is_file() and ds.volumes is not None
    assert sorted(np.unique(vols).tolist()) == [0, 1, 2, 3]
    # within a volume the slices are contiguous and ordered inferior → superior
    for v in range(4):
        pos = np.asarray(ds.positions)[vols == v]
        assert np.all(np.diff(pos) > 0)
    # one scan split into two labels (pelvis / abdomen z ranges) stays ONE volume
    labels = tmp_path / "labels.csv"
    labels.write_text("abdomen_pelvis_totalseg,pelvis,0:0.45\nabdomen_pelvis_totalseg,abdomen,0.45:1\n")
    prepare_dataset([shared_data / CT_FILES[0]], tmp_path / "two", PrepareConfig(preset="ct-pelvis",
                                                                                   labels_file=labels))
    two = load_dataset(tmp_path / "two")
    assert len(np.unique(np.asarray(two.labels))) == 2 and np.all(slice_volumes(two) == 0)
    # 2D images: one volume each
    prepare_dataset([shared_data / "xr" / "pneumoniamnist_28.npz"], tmp_path / "xr",
                    PrepareConfig(preset="xr-chest", split="val"))
    xr = load_dataset(tmp_path / "xr")
    assert np.array_equal(slice_volumes(xr), np.arange(len(xr)))


def test_old_dataset_without_volumes_still_loads(ct_dataset: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ct_dataset, old)
    (old / "volumes.npy").unlink()
    ds = load_dataset(old)
    assert ds.volumes is None
    assert np.array_equal(slice_volumes(ds), np.asarray(ds.manifest.slice_sources))  # one per source record


def test_halves_never_split_a_volume(ct_dataset: Path) -> None:
    ds = load_dataset(ct_dataset)
    vols = slice_volumes(ds)
    for seed in range(5):
        sp = volume_halves(vols, ds.positions, seed)
        assert sp.kind == "volumes" and sp.volumes_a == 2 and sp.volumes_b == 2
        assert not set(vols[sp.a].tolist()) & set(vols[sp.b].tolist())
        assert len(sp.a) + len(sp.b) == len(vols)


def test_single_volume_is_cut_into_blocks_with_gaps() -> None:
    n = 60
    sp = volume_halves(np.zeros(n, np.int64), np.linspace(0, 1, n), 0)
    assert sp.kind == "blocks within one volume"
    assert not set(sp.a.tolist()) & set(sp.b.tolist())
    # no slice of A has a direct neighbour in B: the gap separates them
    assert np.min(np.abs(sp.a[:, None] - sp.b[None, :])) > GAP_SLICES


def test_folds_keep_groups_whole_and_hold_both_classes() -> None:
    groups = np.repeat(np.arange(12), 5)
    labels = (groups >= 6).astype(np.int64)
    fold = group_folds(groups, labels, 3, seed=1)
    for g in range(12):
        assert len(set(fold[groups == g].tolist())) == 1
    for f in range(3):
        assert set(labels[fold == f].tolist()) == {0, 1}
    cg, kind = cv_groups(np.zeros(40, np.int64), np.arange(40), 5)
    assert kind.startswith("slice blocks") and len(np.unique(cg)) == 5
    assert np.all(np.diff(cg) >= 0)  # contiguous blocks along the volume


def test_group_bootstrap_draws_whole_groups() -> None:
    groups = np.array([0] * 3 + [1] * 7 + [2] * 5)
    b = GroupBootstrap(groups, np.random.default_rng(0))
    sizes = set()
    for _ in range(20):
        idx = b.draw()
        counts = np.bincount(groups[idx], minlength=3)
        assert all(c % s == 0 for c, s in zip(counts, (3, 7, 5), strict=True))
        sizes.add(len(idx))
    assert len(sizes) > 1
