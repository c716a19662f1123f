"""Evaluate a micro-malaria pack as the malaria DDPM paper does, plus ours (see medsynth.evaluation.micro).

Prepares the NIH cells from ../shared/data (train patients and held-out patients, split by patient
id), generates ``--per-class`` cells of each condition through ``medsynth generate``'s own path
(DICOM, read back from the files), then prints and writes the table: CNN per-class accuracy on
held-out real vs synthetic cells, colour-histogram KL and chi-square beside a real-vs-real
baseline, nearest-training-cell SSIM (memorisation).

Splits (all by patient, never by cell):

* training patients: sha256(``medsynth-micro-0``:patient) mod 5 != 0. The pack was trained on
  them; the CNN is trained on their real cells only.
* the held-out patients (mod 5 == 0) are split again into **validation** and **test** patients:
  sha256(``medsynth-micro-val-0``:patient) mod 2 == 0 → validation (19 patients, 200 cells:
  99 parasitized, 101 uninfected), else test (21 patients, 263 cells: 139 and 124).
* ``--validate`` judges sampling settings (sampler, steps, guidance) on the validation patients'
  real cells and on synthetic cells of seed ``--val-seed`` (1017); the reported run (the default,
  and ``--write``) uses only the test patients' real cells and seed ``--seed`` (17). A setting is
  chosen on validation numbers only; the numbers the card reports never took part in choosing.

    python benchmarks/eval_micro.py --validate dpmpp-2m/25/1 dpmpp-2m/25/2 dpmpp-2m/25/4 --per-class 64
    python benchmarks/eval_micro.py                               # bundled pack, 200 cells per class
    python benchmarks/eval_micro.py --pack packs/my-micro --per-class 50 --json out.json --sheet sheet.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.dataset import load_dataset
from medsynth.evaluation.micro import (
    CnnConfig,
    evaluate_micro,
    fit_cnn,
    markdown_table,
    read_dicom_cells,
    to_uint8,
    write_micro_quality,
)
from medsynth.generate import GenerateConfig, generate
from medsynth.microscopy import SPLIT_SALT
from medsynth.pack import bundled_packs_dir
from medsynth.prepare import PrepareConfig, prepare_dataset

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CELLS = "micro/malaria_nih_cells"
VALIDATION_SALT = "medsynth-micro-val-0"
VALIDATION_SEED = 1017  # synthetic cells of --validate; the reported run uses --seed (17)


VALIDATION_SPLIT = (f"held-out patients split again by sha256({VALIDATION_SALT}:patient) mod 2 == 0 → validation "
                    "(chooses sampling settings), else test")


def is_validation(patient: str) -> bool:
    """True for the held-out patients whose cells choose sampling settings (the rest are the test patients)."""
    return int(hashlib.sha256(f"{VALIDATION_SALT}:{patient}".encode()).hexdigest()[:8], 16) % 2 == 0


def _patient_key(p: str) -> tuple[str, int, str]:
    return (p[0], int("".join(c for c in p if c.isdigit()) or 0), p)


@dataclass(frozen=True)
class RealCells:
    """Real cells, model space [N, 3, 64, 64] with labels [N]: training patients, and the held-out
    patients split into validation and test (see the module docstring)."""

    classes: tuple[str, ...]
    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    val_patients: tuple[str, ...]
    test_patients: tuple[str, ...]


def load_real(tmp: Path) -> RealCells:
    """Prepare the NIH cells into ``tmp`` (both splits) and split the held-out patients."""
    reports, sets = {}, {}
    for split in ("train", "test"):
        reports[split] = prepare_dataset([DATA / CELLS], tmp / split, PrepareConfig(
            "micro-malaria", label_from_folder=True, split=split))  # type: ignore[arg-type]
        sets[split] = load_dataset(tmp / split)
    held = sets["test"]
    patients = [s.display for s in reports["test"].sources]  # volume index → patient id (prepare's order)
    cell_patient = [patients[int(v)] for v in np.asarray(held.volumes)]
    is_val = np.array([is_validation(p) for p in cell_patient])
    x, y = np.asarray(held.slices), np.asarray(held.labels)
    return RealCells(tuple(sets["train"].manifest.labels), np.asarray(sets["train"].slices),
                     np.asarray(sets["train"].labels), x[is_val], y[is_val], x[~is_val], y[~is_val],
                     tuple(sorted({p for p in patients if is_validation(p)}, key=_patient_key)),
                     tuple(sorted({p for p in patients if not is_validation(p)}, key=_patient_key)))


def synthesize(pack: Path, classes: tuple[str, ...], per_class: int, seed: int, out: Path, threads: int,
               sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None) -> tuple[dict[str, np.ndarray], float]:
    """``per_class`` cells of each condition through ``generate`` (DICOM, read back) → ({class: [N, 3, H, W]}, seconds)."""
    synthetic, t0 = {}, time.perf_counter()
    for cls in classes:
        generate(GenerateConfig("micro-malaria", out / f"gen-{cls}", patients=per_class, condition=cls, seed=seed,
                                sampler=sampler, steps=steps, guidance=guidance, model=pack, threads=threads,
                                batch_size=16, reproducible_uids=True))
        synthetic[cls] = read_dicom_cells(out / f"gen-{cls}")
        shutil.rmtree(out / f"gen-{cls}")
    return synthetic, time.perf_counter() - t0


def parse_setting(text: str) -> tuple[str, int, float]:
    """``sampler/steps/guidance`` (e.g. ``dpmpp-2m/25/2``) → (sampler, steps, guidance)."""
    try:
        sampler, steps, guidance = text.split("/")
        return sampler, int(steps), float(guidance)
    except ValueError:
        raise SystemExit(f"--validate wants sampler/steps/guidance such as dpmpp-2m/25/2, got {text!r}") from None


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
    ap.add_argument("--sampler", default=None, help="sampler (default: the pack's)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pack's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pack's)")
    ap.add_argument("--seed", type=int, default=17, help="seed of the reported synthetic cells")
    ap.add_argument("--val-seed", type=int, default=VALIDATION_SEED, help="seed of --validate's synthetic cells")
    ap.add_argument("--validate", nargs="+", metavar="SAMPLER/STEPS/GUIDANCE", default=None,
                    help="judge these sampling settings on the validation patients (nothing is written to the pack)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=12, help="CNN epochs")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="write a contact sheet (real and synthetic rows); with --validate a folder, one per setting")
    ap.add_argument("--write", action="store_true",
                    help="record the result in the pack (pack.json quality, MODEL_CARD.md) and benchmarks/micro_quality.json")
    args = ap.parse_args()
    if args.validate and args.write:
        raise SystemExit("--validate chooses settings; it never writes the pack's record (run without it)")

    t0 = time.perf_counter()
    cnn = CnnConfig(epochs=args.epochs, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        real = load_real(tmp)
        classes = real.classes
        if args.validate:
            clf = fit_cnn(real.train, real.train_labels, len(classes), cnn)
            rows_out = []
            for text in args.validate:
                sampler, steps, guidance = parse_setting(text)
                synthetic, gen_s = synthesize(args.pack, classes, args.per_class, args.val_seed, tmp, args.threads,
                                              sampler, steps, guidance)
                r = evaluate_micro(real.train, real.train_labels, real.val, real.val_labels, synthetic, classes,
                                   cnn, seed=args.val_seed, classifier=clf)
                row = {"setting": text, "generate_seconds": round(gen_s, 1), "per_class": {
                    k: {"synthetic": v["synthetic"]["accuracy"], "real": v["held_out_real"]["accuracy"],
                        "gap": v["accuracy_gap"], "kl": v["colour_synthetic_vs_held_out"]["kl"],
                        "kl_baseline": v["colour_baseline_train_vs_held_out"]["kl"]}
                    for k, v in r["per_class"].items()},
                    "nearest_train_ssim_max": r["memorisation"]["synthetic"]["max"], "copies": r["memorisation"]["copies"]}
                rows_out.append(row)
                print(" | ".join([text] + [f"{k} {100 * v['synthetic']:.1f} % (real {100 * v['real']:.1f}, KL "
                                           f"{v['kl']:.3f})" for k, v in row["per_class"].items()]
                                 + [f"SSIM max {row['nearest_train_ssim_max']:.3f}", f"{gen_s:.0f} s"]), flush=True)
                if args.sheet is not None:
                    args.sheet.mkdir(parents=True, exist_ok=True)
                    sheet_rows = []
                    for ci, cls in enumerate(classes):
                        sheet_rows.append((f"real {cls}", real.val[real.val_labels == ci][:12]))
                        sheet_rows.append((f"{text} {cls}"[:18], synthetic[cls][:12]))
                    contact_sheet(args.sheet / f"{text.replace('/', '_')}.png", sheet_rows)
            summary = {"validation_patients": list(real.val_patients), "val_seed": args.val_seed,
                       "synthetic_per_class": args.per_class, "n_val": int(len(real.val)),
                       "n_val_per_class": {c: int(np.sum(real.val_labels == i)) for i, c in enumerate(classes)},
                       "split": VALIDATION_SPLIT, "settings": rows_out}
            if args.json is not None:
                args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            return 0
        synthetic, gen_s = synthesize(args.pack, classes, args.per_class, args.seed, tmp, args.threads,
                                      args.sampler, args.steps, args.guidance)
        result = evaluate_micro(real.train, real.train_labels, real.test, real.test_labels, synthetic, classes,
                                cnn, seed=args.seed)
        if args.sheet is not None:
            rows = []
            for ci, cls in enumerate(classes):
                rows.append((f"real {cls}", real.test[real.test_labels == ci][:12]))
                rows.append((f"synthetic {cls}", synthetic[cls][:12]))
            contact_sheet(args.sheet, rows)
    result.update({"pack": str(args.pack), "synthetic_per_class": args.per_class, "seed": args.seed,
                   "split": f"by patient: sha256({SPLIT_SALT}:patient) mod 5 == 0 held out; " + VALIDATION_SPLIT
                   + "; reported: the test patients",
                   "generate_seconds": round(gen_s, 1), "total_seconds": round(time.perf_counter() - t0, 1)})
    result["held_out_patients"] = list(real.test_patients)
    result["validation_patients"] = list(real.val_patients)
    print(markdown_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.write:
        command = "python benchmarks/eval_micro.py --write" + (
            f" --per-class {args.per_class}" if args.per_class != 200 else "") + "".join(
            f" --{k} {v}" for k, v in (("sampler", args.sampler), ("steps", args.steps), ("guidance", args.guidance))
            if v is not None)
        write_micro_quality(args.pack, result, command)
        (Path(__file__).parent / "micro_quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
