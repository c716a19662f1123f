"""Nearest-source SSIM of `generate --variants-of` against strength, beside its real-vs-real baseline.

    python benchmarks/bench_variants.py                       # ct-body-512 if bundled, else a tiny pack
    python benchmarks/bench_variants.py --pack PACK --source ../shared/data/ct/covid_nysbu_axial_dicom \
        --strengths 0.2 0.5 0.8 --out benchmarks/results/variants.json

For each strength, every source series goes through :func:`medsynth.variants.make_variants` (the
function the CLI calls; pack defaults unless ``--steps``), and the table reports, over all variant
slices: the mean (min–max) SSIM to the nearest source slice (model space, pack grid), the source's
own encode→decode SSIM (the ceiling a variant can reach), and the mean |variant − reconstruction|.
Baseline: the nearest *other* real slice of the same sources (what a different real slice scores).

Without a bundled latent pack (``src/medsynth/packs/ct-body-512``) the script trains the tiny
architecture of tests/test_variants.py for ``--train-steps AE LD`` steps (default 4 4: untrained, its
SSIMs show the mechanics only; 1500 1500 takes a few CPU-minutes) on the abdomen of
ct/abdomen_pelvis_totalseg and uses ``ct/upper_abdomen_dicom`` (another patient, not in its training data). ct-body-512 was trained on
upper_abdomen_dicom, so with it the default source is the held-out ``ct/covid_nysbu_axial_dicom``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from medsynth.dicom_io.reader import read_images  # noqa: E402
from medsynth.evaluation.metrics import nearest_ssim  # noqa: E402
from medsynth.like import resample_inplane  # noqa: E402
from medsynth.pack import bundled_packs_dir, load_pack  # noqa: E402
from medsynth.variants import VariantsConfig, make_variants, to_model_space  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def tiny_pack(root: Path, ae_steps: int, ld_steps: int) -> Path:
    """The tiny latent architecture of tests/test_variants.py trained for ``ae_steps``/``ld_steps``
    steps (1 thread) on the abdomen part of ct/abdomen_pelvis_totalseg (z 0.3–1; needs torch)."""
    import dataclasses

    from medsynth.latent.autoencoder import train_autoencoder
    from medsynth.latent.denoiser import train_latent
    from medsynth.latent.export import export_latent_pack
    from medsynth.prepare import PrepareConfig, ZRange, prepare_dataset
    from test_variants import TINY_AE, TINY_LD

    ds = root / "data"
    prepare_dataset([DATA / "ct" / "abdomen_pelvis_totalseg.nii.gz"], ds,
                    PrepareConfig(preset="ct-pelvis", label="abdomen", z_range=ZRange.parse("0.3:1")))
    ae = dataclasses.replace(TINY_AE, steps=ae_steps, checkpoint_every=max(2, ae_steps // 10),
                             whole_slice_steps=max(1, ae_steps // 75))
    ld = dataclasses.replace(TINY_LD, steps=ld_steps, checkpoint_every=max(2, ld_steps // 10),
                             warmup_steps=max(2, ld_steps // 150))
    train_autoencoder(ds, root / "ae", ae, threads=1, show_progress=False)
    train_latent(ds, root / "ae", root / "ld", ld, threads=1, show_progress=False)
    export_latent_pack(root / "ae", root / "ld", root / "pack" / "ct-body", steps=10, guidance=1.5)
    return root / "pack" / "ct-body"


def sources_of(paths: list[Path]) -> list[Path]:
    """One entry per series: a folder holding one series, else each of its files (single-slice series)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir() and len(read_images([p]).series) > 1:
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        else:
            out.append(p)
    return out


def baseline(sources: list[Path], pack: Path) -> float:
    """Mean SSIM of each real slice to its nearest other real slice (model space, pack grid)."""
    meta = load_pack(pack).metadata
    slices = []
    for s in read_images(sources).series:
        grid = resample_inplane(s.voxels, (s.geometry.spacing[1], s.geometry.spacing[0]), meta.matrix,
                                meta.pixel_spacing_mm, float(meta.physical_range[0]))
        slices.append(to_model_space(grid, "ct-abdomen", meta.physical_range))
    x = np.concatenate(slices)
    return float(np.mean(nearest_ssim(x, x, exclude_self=True).ssim))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path)
    ap.add_argument("--source", type=Path, nargs="+")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    ap.add_argument("--steps", type=int, help="full-schedule steps (default: the pack's; 10 for the tiny pack)")
    ap.add_argument("--modality", default="ct-abdomen")
    ap.add_argument("--condition")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--train-steps", type=int, nargs=2, default=[4, 4], metavar=("AE", "LD"),
                    help="without a bundled/given pack: autoencoder and denoiser steps of the tiny pack")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        bundled = bundled_packs_dir() / "ct-body-512"
        if args.pack is not None:
            pack, kind = args.pack, str(args.pack)
        elif (bundled / "pack.json").is_file():
            pack, kind = bundled, "ct-body-512 (bundled)"
        else:
            ae_steps, ld_steps = args.train_steps
            pack = tiny_pack(Path(tmp), ae_steps, ld_steps)
            kind = f"tiny pack (tests/test_variants.py architecture, {ae_steps} AE + {ld_steps} denoiser steps)"
            args.steps = args.steps or 10
        default_src = DATA / "ct" / ("covid_nysbu_axial_dicom" if "512" in kind else "upper_abdomen_dicom")
        sources = sources_of(args.source or [default_src])
        rows = []
        for s in args.strengths:
            near: list[float] = []
            recon: list[float] = []
            moved: list[float] = []
            t0 = time.perf_counter()
            for i, src in enumerate(sources):
                r = make_variants(VariantsConfig(src, Path(tmp) / f"s{s}-{i}", strength=s, modality=args.modality,
                                                 condition=args.condition, seed=args.seed, steps=args.steps,
                                                 model=pack, threads=args.threads))
                near += list(r.nearest_ssim)
                recon += list(r.reconstruction_ssim)
                moved += list(r.from_reconstruction)
                start, steps = r.start_timestep, r.steps
            rows.append({"strength": s, "start_timestep": start, "steps": steps, "slices": len(near),
                         "nearest_source_ssim_mean": float(np.mean(near)), "nearest_source_ssim_min": float(np.min(near)),
                         "nearest_source_ssim_max": float(np.max(near)), "reconstruction_ssim_mean": float(np.mean(recon)),
                         "from_reconstruction_mean": float(np.mean(moved)),
                         "seconds_per_slice": (time.perf_counter() - t0) / max(len(near), 1)})
        base = baseline(sources, pack)
    result = {"pack": kind, "sources": len(sources), "seed": args.seed, "real_vs_real_nearest_ssim": base, "rows": rows}
    print(f"pack: {kind}; {len(sources)} source series; seed {args.seed}; real-vs-real nearest SSIM {base:.3f}\n")
    print("| strength | start t | steps | nearest-source SSIM mean (min–max) | reconstruction SSIM | "
          "mean abs from reconstruction | s/slice |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strength']:g} | {r['start_timestep']} | {r['steps']} | {r['nearest_source_ssim_mean']:.3f} "
              f"({r['nearest_source_ssim_min']:.3f}–{r['nearest_source_ssim_max']:.3f}) | "
              f"{r['reconstruction_ssim_mean']:.3f} | {r['from_reconstruction_mean']:.3f} | {r['seconds_per_slice']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
