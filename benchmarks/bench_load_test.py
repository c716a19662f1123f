"""Load-test mode: what fewer denoising steps buy (speed) and cost (pixels), per bundled pack.

    python benchmarks/bench_load_test.py [--presets ct-chest,mr-brain,xr-chest] [--slices 8] [--steps 1,2,4,8,25]

For each preset, the same seed is sampled at every step count (same starting noise, the pack's own
deterministic sampler); reported: wall and process-CPU seconds per slice, the speed-up against the
pack's default step count, and the SSIM (images scaled to [0, 1] over the pack's physical range) of
each fast image to the default-steps image of the same seed and slice — how far a load-test image
departs from what ``generate`` makes by default. The bundled packs have one matrix each (64² CT/MR,
32² X-ray), so steps are the only knob here. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def sample(preset: str, steps: int, slices: int, folder: Path, threads: int) -> tuple[np.ndarray, float, float, int]:
    import SimpleITK as sitk

    from medsynth.generate import GenerateConfig, generate

    cpu0 = time.process_time()
    res = generate(GenerateConfig(modality=preset, out_dir=folder, slices=slices, seed=11, steps=steps,
                                  threads=threads, format="nifti", reproducible_uids=True))
    cpu = time.process_time() - cpu0
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(next(folder.rglob("*.nii.gz"))))).astype(np.float64)
    return vol, res.seconds, cpu, res.slices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="ct-chest,mr-brain,xr-chest")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--steps", default="1,2,4,8,25")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from medsynth.evaluation.metrics import ssim_pairs
    from medsynth.generate import resolve_pack
    from medsynth.presets import get_preset

    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        for name in args.presets.split(","):
            preset = get_preset(name)
            meta = resolve_pack(preset, None).metadata
            default = meta.default_steps
            lo, hi = meta.physical_range
            runs = {}
            for s in sorted(set([*steps, default])):
                runs[s] = sample(name, s, args.slices, Path(tmp) / f"{name}-{s}", args.threads)
            ref = np.clip((runs[default][0] - lo) / (hi - lo), 0, 1)
            for s in sorted(runs):
                vol, wall, cpu, n = runs[s]
                img = np.clip((vol - lo) / (hi - lo), 0, 1)
                sim = float(np.mean(ssim_pairs(img, ref))) if img.shape[-1] >= 7 else float("nan")
                rows.append((name, s, s == default, wall / n, cpu / n, runs[default][1] / wall, sim))
    print(f"\nseed 11, {args.slices} slices per volume preset, --threads {args.threads}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| preset | steps | s/slice (wall) | CPU s/slice | speed-up vs default | SSIM to default-steps image |")
    print("|---|---|---|---|---|---|")
    for name, s, is_default, wall, cpu, speed, sim in rows:
        label = f"{s} (default)" if is_default else str(s)
        print(f"| {name} | {label} | {wall:.3f} | {cpu:.3f} | {speed:.1f}x | {sim:.3f} |")


if __name__ == "__main__":
    main()
