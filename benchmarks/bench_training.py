"""Training throughput (images/s) of the default UNet, bf16 vs fp32, and ONNX export time.

Runs ``medsynth.training.trainer.train`` on a synthetic 64×64 ct-pelvis-shaped dataset (the
bundled presets' matrix) with the default configuration (channels (32, 64, 64), attention at the
last level, batch 16, v-prediction, EMA), then exports the run with both exporters.

    python benchmarks/bench_training.py [--steps 25] [--batch-size 16] [--json out.json]

Throughput is the median of the log windows after the first (which holds one-off kernel set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medsynth.dataset import DatasetManifest, SourceRecord, save_dataset
from medsynth.export.pack_writer import export_run
from medsynth.training.trainer import iter_log, train


def make_dataset(root: Path, n: int = 128, hw: tuple[int, int] = (64, 64)) -> Path:
    rng = np.random.default_rng(0)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    slices = np.stack([np.where(body, -0.3, -1.0) + rng.normal(0, 0.05, hw) for _ in range(n)]).clip(-1, 1)
    labels = ("pelvis", "abdomen", "chest")
    m = DatasetManifest(preset="ct-pelvis", matrix=hw, pixel_spacing_mm=(6.0, 6.0), physical_range=(-1024.0, 2047.0),
                        unit="HU", labels=labels,
                        sources=(SourceRecord(name="synthetic", sha256="0" * 64, slices=n, label="pelvis"),))
    save_dataset(root, m, slices.astype(np.float32), (np.arange(n) % 3).astype(np.int64),
                 rng.random(n).astype(np.float32))
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "batch_size": args.batch_size, "matrix": [64, 64]}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ds = make_dataset(tmp / "ds")
        last_run = None
        for prec in args.precisions.split(","):
            run = tmp / f"run-{prec}"
            s = train(ds, run, overrides={"optim.steps": args.steps, "optim.batch_size": args.batch_size,
                                          "optim.precision": prec, "optim.sample_every": 0, "optim.log_every": 5,
                                          "optim.threads": args.threads, "optim.checkpoint_every": 0},
                      progress=False)
            windows = [e["img_per_s"] for e in iter_log(run)][1:]
            results[prec] = {"img_per_s_median": round(statistics.median(windows), 2) if windows else None,
                             "img_per_s_windows": windows, "device": s.device, "hardware": s.hardware,
                             "sec_per_step": round(args.batch_size / statistics.median(windows), 3) if windows else None}
            print(prec, results[prec], flush=True)
            last_run = run
        assert last_run is not None
        for exporter in ("legacy", "dynamo"):
            t0 = time.perf_counter()
            summary = export_run(last_run, tmp / f"pack-{exporter}", exporter=exporter, fp16=True)
            results[f"export_{exporter}"] = {
                "total_seconds": round(time.perf_counter() - t0, 2),
                "onnx_export_seconds": summary.parity["export_seconds"],
                "max_abs_error": summary.parity["max_abs_error"],
                "fp16_max_abs_error": summary.parity.get("fp16", {}).get("max_abs_error"),
                "attention_op": summary.parity["attention_op"],
            }
            print(exporter, results[f"export_{exporter}"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
