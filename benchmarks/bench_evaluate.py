"""How fast is `medsynth evaluate`? Nearest-neighbour SSIM search (the memorisation check) and a whole
evaluation, on real data, against the obvious alternative (MONAI's SSIMMetric, one batch per query).

    python benchmarks/bench_evaluate.py [--shared ../shared/data]

Sizes: 512 query images against 3,000 pool images at 64² (CT slices of the shared abdomen/pelvis
volume, with random flips and shifts to reach the counts) and at 32² (PneumoniaMNIST). The MONAI
baseline is timed on a subset and extrapolated (it is linear in the number of pairs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medsynth.evaluation import metrics as M

REPO = Path(__file__).resolve().parents[1]


def ct_stack(shared: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(shared / "ct" / "abdomen_pelvis_totalseg.nii.gz"))).astype(np.float32)
    z, y, x = hu.shape
    s = max(y, x)
    sq = np.full((z, s, s), -1024.0, np.float32)
    sq[:, (s - y) // 2 : (s - y) // 2 + y, (s - x) // 2 : (s - x) // 2 + x] = hu
    base = np.clip((M.area_downsample(sq, (64, 64)) + 1024) / 3071 * 2 - 1, -1, 1)
    idx = rng.integers(0, z, n)
    out = base[idx]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip][:, :, ::-1]
    for k in range(n):
        out[k] = np.roll(out[k], tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
    return out.astype(np.float32)


def xr_stack(shared: Path, n: int) -> np.ndarray:
    d = np.load(shared / "xr" / "pneumoniamnist_28.npz")
    x = np.concatenate([d["train_images"], d["val_images"], d["test_images"]])[:n].astype(np.float32)
    return (np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="edge") / 255 * 2 - 1).astype(np.float32)


def monai_nearest_s_per_pair(q: np.ndarray, pool: np.ndarray, n_q: int = 4) -> float:
    import torch
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=2.0, kernel_type="gaussian", win_size=7, kernel_sigma=1.5)
    p = torch.from_numpy(pool[:, None])
    t0 = time.perf_counter()
    for i in range(n_q):
        metric(torch.from_numpy(np.repeat(q[i : i + 1, None], len(pool), axis=0)), p)
    return (time.perf_counter() - t0) / (n_q * len(pool))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| case | pairs | medsynth (s) | search | MONAI SSIMMetric loop, extrapolated (s) | speed-up |")
    print("|---|---:|---:|---|---:|---:|")
    for name, q, pool in (
        ("64² CT, 512 × 3000", ct_stack(args.shared, 512, rng), ct_stack(args.shared, 3000, rng)),
        ("32² X-ray, 512 × 3000", xr_stack(args.shared, 3512)[:512], xr_stack(args.shared, 3512)[512:]),
    ):
        t0 = time.perf_counter()
        res = M.nearest_ssim(q, pool)
        ours = time.perf_counter() - t0
        monai = monai_nearest_s_per_pair(q, pool) * len(q) * len(pool)
        print(f"| {name} | {len(q) * len(pool):,} | {ours:.1f} | {'exact' if res.exact else 'coarse 2x + rescoring'} "
              f"| {monai:.0f} | {monai / ours:.0f}x |")
    # a whole evaluation (xr-chest-like dataset: 3,166 images, 500 synthetic, memorisation on)
    from medsynth.dataset import DatasetManifest, SourceRecord, save_dataset
    from medsynth.evaluation import evaluate

    x = xr_stack(args.shared, 3166)
    with tempfile.TemporaryDirectory() as tmp:
        man = DatasetManifest("xr-chest", (32, 32), (10.0, 10.0), (0.0, 4095.0), "US", ("normal", "pneumonia"),
                              (SourceRecord("pneumoniamnist_28.npz", "", len(x), "normal"),), tuple([0] * len(x)))
        labels = (rng.random(len(x)) < 0.5).astype(np.int64)
        save_dataset(Path(tmp) / "real", man, x, labels, np.full(len(x), 0.5, np.float32))
        save_dataset(Path(tmp) / "syn", man, x[:500], labels[:500], np.full(500, 0.5, np.float32))
        t0 = time.perf_counter()
        evaluate(Path(tmp) / "real", Path(tmp) / "syn", Path(tmp) / "rep", train=Path(tmp) / "real")
        print(f"\nwhole evaluation, 32² X-ray, real/train 3,166, synthetic 500: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
