"""Evaluate a micro-malaria pack as the malaria DDPM paper does, plus ours (see medsynth.evaluation.micro).

Prepares the NIH cells from ../shared/data (train patients and held-out patients, split by patient
id), generates ``--per-class`` cells of each condition through ``medsynth generate``'s own path
(DICOM, read back from the files), then prints and writes the table: CNN per-class accuracy on
held-out real vs synthetic cells, colour-histogram KL and chi-square beside a real-vs-real
baseline, nearest-training-cell SSIM (memorisation).

    python benchmarks/eval_micro.py                               # bundled pack, 200 cells per class
    python benchmarks/eval_micro.py --pack packs/my-micro --per-class 50 --json out.json --sheet sheet.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medsynth.dataset import load_dataset
from medsynth.evaluation.micro import (
    CnnConfig,
    evaluate_micro,
    markdown_table,
    read_dicom_cells,
    to_uint8,
    write_micro_quality,
)
from medsynth.generate import GenerateConfig, generate
from medsynth.microscopy import SPLIT_SALT, is_held_out, patient_id
from medsynth.pack import bundled_packs_dir
from medsynth.prepare import PrepareConfig, prepare_dataset

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CELLS = "micro/malaria_nih_cells"


def contact_sheet(path: Path, rows: list[tuple[str, np.ndarray]], per_row: int = 12, scale: int = 2) -> None:
    """A PNG: one row of ``per_row`` cells per (name, images [N, 3, H, W]) entry."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[-2:]
    label_w = 110
    sheet = Image.new("RGB", (label_w + per_row * w * scale, len(rows) * h * scale), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (name, imgs) in enumerate(rows):
        draw.text((4, r * h * scale + h * scale // 2 - 6), name, fill=(0, 0, 0))
        for c, img in enumerate(imgs[:per_row]):
            tile = Image.fromarray(np.moveaxis(to_uint8(img), 0, -1), mode="RGB").resize((w * scale, h * scale),
                                                                                       Image.Resampling.NEAREST)
            sheet.paste(tile, (label_w + c * w * scale, r * h * scale))
    sheet.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=bundled_packs_dir() / "micro-malaria")
    ap.add_argument("--per-class", type=int, default=200, help="synthetic cells per condition")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pack's)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=12, help="CNN epochs")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--sheet", type=Path, default=None, help="write a contact sheet (real and synthetic rows)")
    ap.add_argument("--write", action="store_true",
                    help="record the result in the pack (pack.json quality, MODEL_CARD.md) and benchmarks/micro_quality.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        sets = {}
        for split in ("train", "test"):
            prepare_dataset([DATA / CELLS], tmp / split, PrepareConfig("micro-malaria", label_from_folder=True,
                                                                       split=split))  # type: ignore[arg-type]
            sets[split] = load_dataset(tmp / split)
        classes = sets["train"].manifest.labels
        synthetic = {}
        gen_s = 0.0
        for cls in classes:
            t = time.perf_counter()
            generate(GenerateConfig("micro-malaria", tmp / f"gen-{cls}", patients=args.per_class, condition=cls,
                                    seed=args.seed, steps=args.steps, model=args.pack, threads=args.threads,
                                    batch_size=16, reproducible_uids=True))
            gen_s += time.perf_counter() - t
            synthetic[cls] = read_dicom_cells(tmp / f"gen-{cls}")
        tr, te = sets["train"], sets["test"]
        result = evaluate_micro(np.asarray(tr.slices), np.asarray(tr.labels), np.asarray(te.slices),
                                np.asarray(te.labels), synthetic, classes,
                                CnnConfig(epochs=args.epochs, threads=args.threads), seed=args.seed)
        if args.sheet is not None:
            rows = []
            for ci, cls in enumerate(classes):
                rows.append((f"real {cls}", np.asarray(te.slices)[np.asarray(te.labels) == ci][:12]))
                rows.append((f"synthetic {cls}", synthetic[cls][:12]))
            contact_sheet(args.sheet, rows)
    result.update({"pack": str(args.pack), "synthetic_per_class": args.per_class, "seed": args.seed,
                   "split": f"by patient: sha256({SPLIT_SALT}:patient) mod 5 == 0 held out",
                   "generate_seconds": round(gen_s, 1), "total_seconds": round(time.perf_counter() - t0, 1)})
    names = [p.name for p in (DATA / CELLS).rglob("*.png")]
    result["held_out_patients"] = sorted({patient_id(n) for n in names if is_held_out(patient_id(n))},
                                         key=lambda p: (p[0], int("".join(c for c in p if c.isdigit()) or 0), p))
    print(markdown_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.write:
        command = "python benchmarks/eval_micro.py --write" + (
            f" --per-class {args.per_class}" if args.per_class != 200 else "")
        write_micro_quality(args.pack, result, command)
        (Path(__file__).parent / "micro_quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
