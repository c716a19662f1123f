"""Reconstruction of a trained CT autoencoder run on slices of patients it never saw (PyTorch weights).

    python benchmarks/eval_autoencoder.py --ae-run ~/medsynth-runs/ct-body-v2/ae \
        --holdout-series ~/medsynth-runs/ct-body-v2/data-holdout-lung2 --out benchmarks/results/ct-ae

Use it while training (before export); `eval_latent.py` measures the exported pack's ONNX encoder and
decoder on the same slices. Held out: ``ct/chest_pyradiomics_lung2.nrrd`` (prepared as the training
data: 512², 0.8 mm) and the 20 ``ct/covid_nysbu_axial_dicom`` slices (10 patients).
Reports PSNR over the pack's range (-1024..2047 HU) and over -1024..3071 HU (the issue's range; same
error, larger peak), SSIM (on the 512² slices, model space), mean absolute error in HU inside the body
(> -500 HU), and a side-by-side PNG (real | reconstruction | |error|: black 0, white ≥ 100 HU), soft-tissue window.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from eval_latent import HI, LO, covid_slices, grid, psnr, to_hu, to_model  # noqa: E402
from medsynth.dataset import load_dataset  # noqa: E402
from medsynth.evaluation.metrics import ssim_pairs  # noqa: E402
from medsynth.evaluation.texture import working_copy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ae-run", type=Path, required=True)
    ap.add_argument("--holdout-series", type=Path, required=True, help="prepared lung2 dataset (512², 0.8 mm)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch
    from PIL import Image

    from medsynth.latent.autoencoder import decode, encode, load_autoencoder

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    covid, _ = covid_slices(args.shared)
    lung2 = np.asarray(load_dataset(args.holdout_series).slices, dtype=np.float32)
    real = np.concatenate([lung2, covid])
    cfg, ae = load_autoencoder(args.ae_run)
    rec = decode(ae, encode(ae, real))
    rec = np.clip(rec, -1, 1)
    body = to_hu(real) > -500
    err_hu = np.abs(to_hu(real) - to_hu(rec))
    ssim = ssim_pairs(working_copy(real, 512), working_copy(rec, 512))
    ck = json.loads((args.ae_run / "checkpoint.json").read_text())
    report = {
        "ae_run": str(args.ae_run), "steps": ck.get("step"), "train_minutes": round(float(ck.get("train_seconds", 0)) / 60, 1),
        "channels": list(cfg.channels), "latent_channels": cfg.latent_channels,
        "slices": len(real), "held_out": f"chest_pyradiomics_lung2 ({len(lung2)}) + covid_nysbu ({len(covid)})",
        f"psnr_db_{int(LO)}_{int(HI)}": round(psnr(real, rec, HI - LO), 2),
        "psnr_db_-1024_3071": round(psnr(real, rec, 3071 + 1024), 2),
        "psnr_db_lung2": round(psnr(lung2, rec[: len(lung2)], 3071 + 1024), 2),
        "psnr_db_covid": round(psnr(covid, rec[len(lung2):], 3071 + 1024), 2),
        "ssim": round(float(np.mean(ssim)), 4),
        "mae_hu_body": round(float(err_hu[body].mean()), 1),
    }
    pick = np.linspace(0, len(real) - 1, 6).round().astype(int)
    diff = to_model(-160.0 + 4.0 * err_hu[pick])  # shown in the same window: 0 HU error black, 100 HU white
    rows = np.stack([real[pick], rec[pick], diff], 1).reshape(-1, *real.shape[1:])
    Image.fromarray(grid(rows, cols=3)).save(args.out / "reconstruction.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
