"""How close do neighbouring slices of one real CT scan come to each other? (QUALITY.md, memorisation)

    python benchmarks/adjacent_ssim.py [--shared ../shared/data]

Each shared CT scan is prepared as the bundled ct-body pack's data are (`medsynth prepare`, preset
ct-pelvis, 64², native slice spacing: ``slice_spacing_mm = 0``) and the SSIM of every adjacent slice
pair is computed with the evaluation's own SSIM (Gaussian 7×7, σ 1.5, data range 2). It prints, per
scan, the pairs, min / median / max SSIM and the fraction of pairs at ≥ 0.99 — the copy threshold of
the memorisation check: a threshold that neighbouring slices of one patient reach cannot tell a copy
from a neighbour, which is why the gate compares with held-out patients instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from medsynth.dataset import load_dataset, slice_volumes
from medsynth.evaluation.metrics import ssim_pairs
from medsynth.prepare import PrepareConfig, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
SCANS = ("abdomen_pelvis_totalseg.nii.gz", "upper_abdomen_dicom", "chest_pyradiomics_lung1.nrrd",
         "chest_pyradiomics_lung2.nrrd", "chest_lungpetctdx_A0001_kernel_B.nii.gz", "abdomen_pancreasctcbct_001.nii.gz",
         "cardiac_cta_totalseg_1.nii.gz", "cardiac_cta_totalseg_2.nii.gz")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    print("| scan | adjacent pairs | SSIM min | median | max | fraction ≥ 0.99 |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for k, name in enumerate(SCANS):
            out = Path(tmp) / f"s{k}"
            prepare_dataset([args.shared / "ct" / name], out, PrepareConfig(preset="ct-pelvis", slice_spacing_mm=0))
            ds = load_dataset(out)
            vols, pos = slice_volumes(ds), np.asarray(ds.positions)
            s: list[float] = []
            for v in np.unique(vols):
                idx = np.flatnonzero(vols == v)
                idx = idx[np.argsort(pos[idx])]
                x = np.asarray(ds.slices[idx], dtype=np.float32)
                s += ssim_pairs(x[:-1], x[1:]).tolist()
            a = np.asarray(s)
            print(f"| {name} | {a.size} | {a.min():.3f} | {np.median(a):.3f} | {a.max():.3f} | {np.mean(a >= 0.99):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
