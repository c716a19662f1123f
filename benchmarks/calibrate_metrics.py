"""Calibrate every `medsynth evaluate` metric on known degradations of real, held-out patients.

    python benchmarks/calibrate_metrics.py                       # CT and X-ray, validation split
    python benchmarks/calibrate_metrics.py --split test --out calibration_test.md
    python benchmarks/calibrate_metrics.py --only xr --discriminator logistic

For each data set the real images are split by volume (patient) into halves A and B exactly as
`medsynth evaluate` does. Half B is the reference and the training set; the "synthetic" set is
half A (other patients) unchanged, or degraded:

* blur: Gaussian, sigma 1 pixel;  * noise: Gaussian, 50 HU (CT) / 2 % of the range (X-ray);
* +50 HU shift (CT) / +2 % brightness (X-ray);  * shuffled: each image's pixels permuted
  (the histogram is exactly real);  * slice order shuffled within each volume (CT: every slice
  real, the series incoherent);  * copies: images of the training set (half B) itself.

It prints (and with ``--out`` writes) one markdown table per data set: every metric, the value
for each variant with its 95 % bootstrap interval, and the acceptance gate's verdict
(:func:`medsynth.evaluation.gate.check_gate`). The thresholds in medsynth.evaluation.gate were
chosen from the ``validation`` split's table; ``--split test`` shows they hold on other patients.

Data (../shared/data, or $MEDSYNTH_SHARED_DATA), prepared with `medsynth prepare` at the bundled
presets' 64x64 (CT, ct-pelvis preset, native slice spacing) and 32x32 (X-ray):
validation = CT volumes abdomen_pelvis_totalseg, chest_pyradiomics_lung1/2, upper_abdomen_dicom and
the PneumoniaMNIST val split; test = chest_lungpetctdx_A0001_kernel_B, cardiac_cta_totalseg_1/2,
abdomen_pancreasctcbct_001 and the PneumoniaMNIST test split.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.evaluation import EvaluationConfig, ImageSet, evaluate_sets
from medsynth.evaluation.gate import check_gate
from medsynth.evaluation.inputs import load_real_dataset
from medsynth.evaluation.splits import volume_halves
from medsynth.prepare import PrepareConfig, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
CT = {
    "validation": ["ct/abdomen_pelvis_totalseg.nii.gz", "ct/chest_pyradiomics_lung1.nrrd",
                   "ct/chest_pyradiomics_lung2.nrrd", "ct/upper_abdomen_dicom"],
    "test": ["ct/chest_lungpetctdx_A0001_kernel_B.nii.gz", "ct/cardiac_cta_totalseg_1.nii.gz",
             "ct/cardiac_cta_totalseg_2.nii.gz", "ct/abdomen_pancreasctcbct_001.nii.gz"],
}
XR_SPLIT = {"validation": "val", "test": "test"}

# (JSON path in report.data["metrics"], label, format)
ROWS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("intensity", "kl"), "intensity KL", ".3f"),
    (("tissue_fractions", "total_variation"), "tissue TV", ".3f"),
    (("frechet",), "Fréchet distance", ".1f"),
    (("power_spectrum",), "power spectrum, dB", ".2f"),
    (("adjacent_slices",), "adjacent-slice SSIM", ".3f"),
    (("discriminator",), "discriminator accuracy", ".2f"),
    (("ssim_nearest",), "SSIM nearest", ".3f"),
    (("diversity", "kl"), "diversity KL", ".2f"),
    (("memorisation", "fraction_copies"), "copies (SSIM ≥ 0.99)", ".2f"),
    (("classifier", "accuracy"), "classifier accuracy", ".2f"),
)


def prepare_sets(shared: Path, split: str, work: Path, only: str | None) -> dict[str, Path]:
    """The calibration data sets of ``split`` prepared under ``work``: {name: dataset folder}."""
    out: dict[str, Path] = {}
    if only in (None, "ct"):
        # label each volume by its anatomy, so the halves are balanced per body region
        labels = work / "labels.csv"
        labels.write_text("".join(f"{Path(f).name.split('.')[0]},{'chest' if 'chest' in f or 'cardiac' in f else 'abdomen'}\n"
                                  for f in CT[split]), encoding="utf-8")
        prepare_dataset([shared / f for f in CT[split]], work / "ct",
                        PrepareConfig(preset="ct-pelvis", labels_file=labels, slice_spacing_mm=0))
        out["ct"] = work / "ct"
    if only in (None, "xr"):
        prepare_dataset([shared / "xr" / "pneumoniamnist_28.npz"], work / "xr",
                        PrepareConfig(preset="xr-chest", split=XR_SPLIT[split]))
        out["xr"] = work / "xr"
    return out


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(im, sigma, mode="nearest") for im in x]).astype(np.float32)


def variants(real: ImageSet, seed: int) -> tuple[ImageSet, dict[str, ImageSet]]:
    """(training set = half B, {variant name: "synthetic" set}) for one real set."""
    split = volume_halves(real.groups, real.positions, seed, real.labels)
    rng = np.random.default_rng(seed + 1)
    lo, hi = real.physical_range
    to_model = 2.0 / (hi - lo)  # physical units → model units
    ct = real.unit == "HU"

    def take(idx: np.ndarray, images: np.ndarray | None = None, order: np.ndarray | None = None) -> ImageSet:
        imgs = np.asarray(real.images[idx]) if images is None else images
        return replace(real, images=np.clip(imgs, -1, 1).astype(np.float32), labels=real.labels[idx],
                       volumes=real.groups[idx], positions=real.order[idx] if order is None else order)

    a = np.asarray(real.images[split.a])
    train = take(split.b)
    step = 50.0 if ct else 0.02 * (hi - lo)
    out = {
        "real A (other patients)": take(split.a),
        "blur σ=1 px": take(split.a, gaussian_blur(a, 1.0)),
        f"noise {step:g} {real.unit}": take(split.a, a + rng.normal(0, step * to_model, a.shape).astype(np.float32)),
        f"+{step:g} {real.unit}": take(split.a, a + step * to_model),
        "pixels shuffled": take(split.a, np.stack([rng.permutation(im.ravel()).reshape(im.shape) for im in a])),
    }
    if ct:
        order = real.order[split.a].copy()
        for v in np.unique(real.groups[split.a]):
            m = real.groups[split.a] == v
            order[m] = rng.permutation(order[m])
        out["slice order shuffled"] = take(split.a, order=order)
    pick = rng.choice(len(split.b), size=min(len(split.a), len(split.b)), replace=False)
    out["copies of training images"] = take(split.b[np.sort(pick)])
    return train, out


def _cell(node: dict[str, Any] | None, fmt: str) -> str:
    if not node or node.get("synthetic") is None:
        return "–"
    ci = node.get("ci")
    text = format(node["synthetic"], fmt)
    return f"{text} [{format(ci[0], fmt)}–{format(ci[1], fmt)}]" if ci else text


def _node(metrics: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = metrics
    for k in path:
        node = node.get(k) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def table(name: str, reports: dict[str, Any]) -> str:
    cols = list(reports)
    lines = [f"#### {name}", "", "| metric | real-vs-real baseline | " + " | ".join(cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    first = next(iter(reports.values())).data["metrics"]
    for path, label, fmt in ROWS:
        base = _node(first, path)
        if base is None or base.get("baseline") is None:
            continue
        bci = base.get("baseline_ci")
        btxt = format(base["baseline"], fmt) + (f" [{format(bci[0], fmt)}–{format(bci[1], fmt)}]" if bci else "")
        lines.append(f"| {label} | {btxt} | " + " | ".join(_cell(_node(r.data["metrics"], path), fmt)
                                                        for r in reports.values()) + " |")
    lines.append("| **gate** | | " + " | ".join("pass" if not check_gate(r) else
                                                 "FAIL: " + "; ".join(f.split(" (")[0] for f in check_gate(r))
                                                 for r in reports.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--only", choices=("ct", "xr"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--discriminator", choices=("auto", "cnn", "logistic"), default="auto")
    ap.add_argument("--max-images", type=int, default=200, help="query images per variant (default 200)")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables (markdown) here")
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    cfg = EvaluationConfig(seed=args.seed, max_query=args.max_images, max_reference=300,
                           discriminator=args.discriminator)
    text = [f"Calibration on the **{args.split}** split (`python benchmarks/calibrate_metrics.py --split "
            f"{args.split}`, seed {args.seed}, discriminator {args.discriminator}); cells: value [95 % bootstrap "
            "interval].\n"]
    with tempfile.TemporaryDirectory(prefix="medsynth-calibrate-") as tmp:
        for name, path in prepare_sets(args.shared, args.split, Path(tmp), args.only).items():
            real = load_real_dataset(path)
            train, sets = variants(real, args.seed)
            reports = {}
            for label, syn in sets.items():
                t0 = time.perf_counter()
                reports[label] = evaluate_sets(real, syn, train, cfg)
                print(f"  {name}: {label} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            desc = (f"{name}: {len(real)} images, {len(np.unique(real.groups))} volumes, "
                    f"{real.matrix[0]}x{real.matrix[1]}; split {reports[next(iter(reports))].data['protocol']['split']}")
            text.append(table(desc, reports))
    out = "\n".join(text)
    print(out)
    if args.out is not None:
        args.out.write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
