"""Benchmark `medsynth prepare` against the naive path (pydicom/nibabel read + scipy.ndimage.zoom).

Inputs: the 20-slice 512x512 JPEG 2000 CT series and the 112-slice 3 mm NIfTI from ../shared/data.
Each measurement runs in a fresh subprocess so peak memory (max RSS) belongs to that path alone.
Prints a Markdown table: seconds (median of --repeat runs), input slices/s, peak RSS MiB.

    python benchmarks/bench_prepare.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CASES = {
    "jpeg2000 dicom (20 x 512^2)": (DATA / "ct/upper_abdomen_dicom", 20),
    "nifti (112 x 122x101)": (DATA / "ct/abdomen_pelvis_totalseg.nii.gz", 112),
}


def _peak_mib() -> float:
    try:
        import resource  # POSIX only; the benchmark reports 0 elsewhere

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:
        return 0.0


def run_medsynth(src: Path) -> dict[str, float]:
    from medsynth.prepare import PrepareConfig, prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = prepare_dataset([src], Path(tmp) / "ds", PrepareConfig(preset="ct-abdomen", label="abdomen"))
        dt = time.perf_counter() - t0
    return {"seconds": dt, "kept": rep.slices_kept, "peak_mib": _peak_mib()}


def run_naive(src: Path) -> dict[str, float]:
    """What a first script does: read every file, stack by InstanceNumber, rescale, zoom, centre-crop."""
    import numpy as np
    from scipy import ndimage

    t0 = time.perf_counter()
    if src.is_dir():
        import pydicom

        dss = sorted((pydicom.dcmread(f) for f in src.iterdir()), key=lambda d: int(d.InstanceNumber))
        vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
        sy, sx = (float(v) for v in dss[0].PixelSpacing)
        pos = [float(d.ImagePositionPatient[2]) for d in dss]
        sz = abs(pos[1] - pos[0])
    else:
        import nibabel as nib

        img = nib.load(str(src))
        vol = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)
        sx, sy, sz = (float(v) for v in img.header.get_zooms()[:3])
    vol = np.clip(vol.astype(np.float32), -1024, 2047)
    zoomed = ndimage.zoom(vol, (sz / 5.0, sy / 6.0, sx / 6.0), order=1)
    z, h, w = zoomed.shape
    out = np.full((z, 64, 64), -1024, np.float32)
    top, left = (h - 64) // 2, (w - 64) // 2
    ys, xs = max(top, 0), max(left, 0)
    crop = zoomed[:, ys:ys + 64, xs:xs + 64]
    out[:, max(-top, 0):max(-top, 0) + crop.shape[1], max(-left, 0):max(-left, 0) + crop.shape[2]] = crop
    dt = time.perf_counter() - t0
    return {"seconds": dt, "kept": int(out.shape[0]), "peak_mib": _peak_mib()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "MODE"))
    args = ap.parse_args()
    if args.child:
        src, mode = Path(args.child[0]), args.child[1]
        print(json.dumps(run_medsynth(src) if mode == "medsynth" else run_naive(src)))
        return
    print("| input | path | s (median) | input slices/s | slices kept | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for label, (src, n_in) in CASES.items():
        for mode in ("medsynth", "naive"):
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(src), mode], check=True,
                                              capture_output=True, text=True).stdout) for _ in range(args.repeat)]
            sec = statistics.median(r["seconds"] for r in runs)
            peak = max(r["peak_mib"] for r in runs)
            name = "medsynth prepare" if mode == "medsynth" else "pydicom/nibabel + scipy zoom"
            print(f"| {label} | {name} | {sec:.2f} | {n_in / sec:.0f} | {int(runs[0]['kept'])} | {peak:.0f} |")


if __name__ == "__main__":
    main()
