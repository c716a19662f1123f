"""Samplers against 1000-step DDPM on the same weights, measured as users get them (benchmarks/RESULTS.md).

    python benchmarks/bench_samplers.py [--pack src/medsynth/packs/xr-chest] [-n 48] [--ddpm-steps 1000]

For each sampler (DDPM ancestral at ``--ddpm-steps``, DPM-Solver++(2M) and DDIM at 25 steps; the
pack's guidance), ``-n`` images are made by ``medsynth.generate.generate`` and measured against real
patients held out of the pack's training (medsynth.evaluation.packs.evaluate_pack: PneumoniaMNIST's
test split for xr-chest; baseline = the training patients against the held-out ones), seed 0,
logistic discriminator. Prints a markdown table: wall seconds of generation + evaluation (machine
load printed beside), intensity KL, Fréchet distance, power-spectrum distance, discriminator accuracy,
train-on-synthetic balanced accuracy, each with its 95 % interval where it has one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from medsynth.evaluation import EvaluationConfig
from medsynth.evaluation.packs import evaluate_pack

REPO = Path(__file__).resolve().parents[1]


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = metrics
    for k in path:
        node = node.get(k) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _cell(node: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not node or node.get(key) is None:
        return "–"
    ci = node.get("ci" if key == "synthetic" else "baseline_ci")
    return format(node[key], fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=REPO / "src" / "medsynth" / "packs" / "xr-chest")
    ap.add_argument("-n", "--images", type=int, default=48)
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    runs = [("DDPM ancestral", "ddpm", args.ddpm_steps), ("DPM-Solver++(2M)", "dpmpp_2m", 25), ("DDIM (η = 0)", "ddim", 25)]
    cols = (("intensity", "kl"), ".4f"), (("frechet",), ".1f"), (("power_spectrum",), ".2f"), \
        (("discriminator",), ".3f"), (("train_on_synthetic", "tstr"), ".3f")
    print(f"{args.pack.name}, {args.images} images per sampler, seed 0, held-out real patients; load average "
          f"{os.getloadavg()[0]:.1f} at start\n")
    print("| sampler | steps | generate + evaluate s | intensity KL ↓ | Fréchet distance ↓ | power spectrum, dB ↓ "
          "| discriminator ↓ | train on synthetic, balanced accuracy ↑ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    m: dict[str, Any] = {}
    for name, sampler, steps in runs:
        t0 = time.perf_counter()
        report, _ = evaluate_pack(args.pack, args.shared, n_images=args.images, seed=0, steps=steps, sampler=sampler,
                                  config=EvaluationConfig(seed=0, discriminator="logistic"))
        m = report.data["metrics"]
        cells = [_cell(_get(m, p), "synthetic", f) for p, f in cols]
        print(f"| {name} | {steps} | {time.perf_counter() - t0:.0f} | " + " | ".join(cells) + " |", flush=True)

    print("| real vs real baseline | | | " + " | ".join(_cell(_get(m, p), "baseline", f) for p, f in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
