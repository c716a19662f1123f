"""Measure the latent chest X-ray pack (xr-chest-256) on patients it never saw, through `generate`'s own path.

    python packaging/build_latent_pack.py xr-chest-256 --work ~/medsynth-runs/xr-chest-256 --stage prepare
    python benchmarks/eval_latent_xr.py --pack src/medsynth/packs/xr-chest-256 \
        --work ~/medsynth-runs/xr-chest-256 --out /tmp/xr-chest-256-eval --write --seen "what you saw"

``--work`` is the recipe's build folder: ``data-train`` (the NIH ChestX-ray14 images of the training
patients) and ``data-heldout`` (every image of the patients in the recipe's ``held_out_patients``; no
such patient is in training). Reports (JSON, Markdown, PNGs to look at):

1. Autoencoder reconstruction of the held-out images: PSNR over the 8-bit range of the PNGs (model
   space [-1, 1], peak 2) and SSIM; with ``--shared-ae PACK`` also through another pack's autoencoder
   (the CT one: its fixed 512² graph gets the 256² X-ray centred on black), the "shared autoencoder" check.
2. ``synthesize_with_generate`` (what ``medsynth evaluate --pack`` uses: ``generate`` with the pack's
   defaults, files read back) → ``evaluate_sets`` against the held-out patients, the training patients
   as the real-vs-real baseline and for memorisation: Fréchet distance, nearest-real SSIM, the
   real-vs-synthetic discriminator, nearest-training SSIM and the rest of `medsynth evaluate`.
3. The same at 32² against the 32² pixel pack ``xr-chest`` (``--compare-pack``): this pack's images
   and the real ones area-downsampled to 32², so both packs are judged at one resolution on the same
   held-out adults — the measurement that decides which pack the preset defaults to.
4. Generation time per image through ``generate`` and a contact sheet (``contact_sheet.png``).

With ``--write`` the pack's ``pack.json`` gets ``quality`` (the table, each metric beside its baseline
and issue 10's target, every shortfall spelled out), ``training.held_out`` (a count: the patient ids stay in the recipe, never in the pack), the
hardware, the attribution and the limitations (with ``--seen``), plus the contact sheet, and
MODEL_CARD.md is rendered again from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "packaging"))

from medsynth.evaluation.evaluate import EvaluationConfig, evaluate_sets  # noqa: E402
from medsynth.evaluation.inputs import ImageSet, load_real_dataset  # noqa: E402
from medsynth.evaluation.metrics import area_downsample, ssim_pairs  # noqa: E402
from medsynth.evaluation.packs import synthesize_with_generate  # noqa: E402
from medsynth.evaluation.report import summary_rows  # noqa: E402
from medsynth.pack import load_pack  # noqa: E402

PACK_ID = "xr-chest-256"
ATTRIBUTION = ("NIH ChestX-ray14: images courtesy of the NIH Clinical Center (\"The usage of the data set is "
               "unrestricted\"); Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest "
               "X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax "
               "Diseases. CVPR 2017. 256² subset (400 \"No Finding\", 400 pneumonia) via muhammedtalo/COVID-19.")
def reconstruction(pack_dir: Path, real: np.ndarray) -> dict[str, float]:
    """Encode → decode ``real`` [N, 256, 256] (model space) through ``pack_dir``'s ONNX autoencoder;
    a graph of a larger fixed matrix gets the image centred on black (-1) and cropped back."""
    from medsynth.sampling.runtime import open_image_model

    pack = load_pack(pack_dir)
    enc, dec = (open_image_model(pack, which, device="cpu", threads=1) for which in ("encoder", "decoder"))
    side = enc.session.get_inputs()[0].shape[2]
    h = real.shape[1]
    pad = (int(side) - h) // 2 if isinstance(side, int) and side > h else 0
    out = []
    for i in range(0, len(real), 4):
        x = real[i : i + 4, None].astype(np.float32)
        if pad:
            x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)
        y = dec(enc(x))[:, 0]
        out.append(y[:, pad : pad + h, pad : pad + h] if pad else y)
    rec = np.clip(np.concatenate(out), -1.0, 1.0)
    mse = float(np.mean((rec.astype(np.float64) - real) ** 2))
    return {"psnr_db_8bit": float(10 * np.log10(4.0 / max(mse, 1e-12))), "ssim": float(np.mean(ssim_pairs(real, rec))),
            "images": len(real), "padded_to": int(side) if pad else h}


def downsampled(s: ImageSet, side: int) -> ImageSet:
    return dataclasses.replace(s, images=area_downsample(s.images, (side, side)).astype(np.float32))


def rows_of(report_data: dict) -> dict[str, tuple[str, str]]:
    return {label: (syn, base) for label, syn, base in summary_rows(report_data)}


def value(report_data: dict, path: tuple[str, ...], key: str = "synthetic") -> float:
    node = report_data["metrics"]
    for p in path:
        node = node[p]
    return float(node[key])


PATHS = {"frechet": ("frechet",), "ssim": ("ssim_nearest",), "disc": ("discriminator",),
         "memo": ("memorisation", "nearest_train_ssim"), "copies": ("memorisation", "fraction_copies")}


def headline(report_data: dict) -> dict[str, dict[str, float]]:
    out = {}
    for k, path in PATHS.items():
        try:
            out[k] = {"synthetic": value(report_data, path), "baseline": value(report_data, path, "baseline")}
        except (KeyError, TypeError):  # not computed (e.g. no discriminator for too few images)
            continue
    return out


def evaluate_pack_on(pack_dir: Path, real: ImageSet, train: ImageSet, n: int, seed: int, work: Path,
                     cfg: EvaluationConfig) -> tuple[dict, ImageSet, float]:
    t0 = time.perf_counter()
    syn = synthesize_with_generate(pack_dir, real, work, n_images=n, seed=seed, threads=1)
    secs = time.perf_counter() - t0
    return evaluate_sets(real, syn, train, cfg, baseline=train).data, syn, secs


def sheet(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...], cols: int = 4, per: int = 4) -> np.ndarray:
    """``per`` images of each label side by side (rows: labels), 8-bit."""
    tiles = []
    for c in range(len(names)):
        pick = images[labels == c][:per]
        tiles.append(np.concatenate(list(pick), axis=1) if len(pick) else None)
    rows = [t for t in tiles if t is not None]
    grid = np.concatenate(rows, axis=0)
    return np.clip((grid + 1) * 127.5, 0, 255).astype(np.uint8)


def quality_table(rep: dict) -> tuple[str, list[str]]:
    short: list[str] = []
    rec = rep["reconstruction"]
    lines = ["| metric | measured | real-vs-real baseline | target (issue 10) |", "|---|---|---|---|",
             f"| autoencoder PSNR over the 8-bit range ({rec['images']} held-out images) | {rec['psnr_db_8bit']:.2f} dB | – | ≥ 35 dB |",
             f"| autoencoder SSIM | {rec['ssim']:.4f} | – | ≥ 0.95 |"]
    if rec["psnr_db_8bit"] < 35:
        short.append(f"autoencoder PSNR {rec['psnr_db_8bit']:.2f} dB is {35 - rec['psnr_db_8bit']:.2f} dB below 35 dB")
    if rec["ssim"] < 0.95:
        short.append(f"autoencoder SSIM {rec['ssim']:.4f} is {0.95 - rec['ssim']:.4f} below 0.95")
    if "shared_autoencoder" in rep:
        sh = rep["shared_autoencoder"]
        lines.append(f"| the same through `{sh['pack']}`'s CT autoencoder (shared?) | {sh['psnr_db_8bit']:.2f} dB / SSIM "
                     f"{sh['ssim']:.4f} | – | ≥ 35 dB / ≥ 0.95 to share |")
    h = rep["headline"]
    n = rep["evaluated"]
    if "frechet" in h:
        fd, fb = h["frechet"]["synthetic"], h["frechet"]["baseline"]
        lines.append(f"| Fréchet distance ({n['synthetic']} synthetic vs {n['real']} held-out) | {fd:.2f} "
                     f"({fd / max(fb, 1e-9):.1f}× baseline) | {fb:.2f} | ≤ 10× baseline |")
        if fd > 10 * fb:
            short.append(f"Fréchet distance {fd:.2f} is {fd / max(fb, 1e-9):.1f}× its baseline {fb:.2f} (target ≤ 10×)")
    if "ssim" in h:
        ns, nb = h["ssim"]["synthetic"], h["ssim"]["baseline"]
        lines.append(f"| nearest-real SSIM | {ns:.3f} | {nb:.3f} | within 0.15 of baseline |")
        if nb - ns > 0.15:
            short.append(f"nearest-real SSIM {ns:.3f} is {nb - ns:.3f} below its baseline {nb:.3f} (target ≤ 0.15)")
    if "disc" in h:
        da, db = h["disc"]["synthetic"], h["disc"]["baseline"]
        lines.append(f"| real-vs-synthetic discriminator accuracy (0.5 = indistinguishable) | {da:.3f} | {db:.3f} | ≤ 0.85 |")
        if da > 0.85:
            short.append(f"discriminator accuracy {da:.3f} is above 0.85 (real-vs-real {db:.3f})")
    if "memo" in h:
        lines.append(f"| memorisation: mean nearest-training SSIM (held-out real: baseline) | {h['memo']['synthetic']:.3f} | "
                     f"{h['memo']['baseline']:.3f} | not above baseline |")
    if "copies" in h:
        c = h["copies"]["synthetic"]
        lines.append(f"| memorisation: share of images ≥ 0.99 SSIM to a training image (copies) | {c:.3f} | "
                     f"{h['copies']['baseline']:.3f} | no copies |")
        if c > 0:
            short.append(f"{c:.1%} of the images copy a training image (SSIM ≥ 0.99)")
    g = rep["generate"]
    lines.append(f"| generation through `generate` ({g['images']} images, {g['steps']} steps {g['sampler']}, 1 thread) | "
                 f"{g['seconds_per_image']:.2f} s/image | – | – |")
    cmp_ = rep.get("comparison_32")
    if cmp_:
        lines += ["", f"At 32² (both packs' images and the held-out adults area-downsampled to 32², the same "
                      f"evaluation), `{PACK_ID}` against the 32² pixel pack `{cmp_['other']}`:", "",
                  f"| metric at 32² | {PACK_ID} | {cmp_['other']} | real-vs-real baseline |", "|---|---|---|---|"]
        for k, label in (("frechet", "Fréchet distance"), ("ssim", "nearest-real SSIM"),
                         ("disc", "discriminator accuracy"), ("memo", "mean nearest-training SSIM")):
            a, b = cmp_["this"].get(k), cmp_["other_headline"].get(k)
            if a and b:
                lines.append(f"| {label} | {a['synthetic']:.3f} | {b['synthetic']:.3f} | {a['baseline']:.3f} |")
        lines.append(f"\nVerdict: {cmp_['verdict']}")
    lines.append("\nFull `medsynth evaluate` summary at 256² (synthetic vs held-out | training vs held-out):\n")
    lines += ["| metric | synthetic | baseline |", "|---|---|---|"]
    lines += [f"| {k} | {s} | {b} |" for k, (s, b) in rep["summary_256"].items()]
    return "\n".join(lines), short


def better_than(this: dict, other: dict) -> tuple[bool, str]:
    """This pack measures better than the other at 32² when it is closer to the baseline on Fréchet
    distance, nearest-real SSIM and the discriminator (each: |synthetic − baseline| smaller)."""
    wins = []
    for k in ("frechet", "ssim", "disc"):
        if k in this and k in other:
            wins.append((k, abs(this[k]["synthetic"] - this[k]["baseline"]) < abs(other[k]["synthetic"] - other[k]["baseline"])))
    ok = bool(wins) and all(w for _, w in wins)
    text = ", ".join(f"{k} {'closer' if w else 'not closer'}" for k, w in wins)
    return ok, text


def write_into_pack(pack_dir: Path, rep: dict, sheet_png: Path, seen: str, hardware: str) -> None:
    import shutil

    from build_packs import licence_of

    from medsynth.latent.export import latent_model_card
    from medsynth.pack import save_pack_metadata

    meta = load_pack(pack_dir).metadata
    table, short = quality_table(rep)
    shutil.copyfile(sheet_png, pack_dir / "contact_sheet.png")
    training = dict(meta.training)
    training["held_out"] = rep["held_out"]
    training["hardware"] = hardware
    training["attribution"] = ATTRIBUTION
    training["recipe"] = f"packaging/packs.toml [{PACK_ID}] (python packaging/build_latent_pack.py {PACK_ID})"
    shortfalls = ("Where this pack falls short of issue 10's targets: " + "; ".join(short) + ".") if short else \
        "Meets every target of issue 10 that is measured here."
    looked = f" Looked at (contact sheet below: top row normal, bottom row pneumonia): {seen}" if seen else ""
    hours = float(training.get("train_seconds", 0.0)) / 3600
    training["limitations"] = (shortfalls + looked + f" Trained on {training.get('dataset_slices')} images of "
                               f"{len(set(rep['train_patients']))} adult patients for {hours:.1f} h on {hardware}: "
                               "look at the samples before relying on them.")
    licence = licence_of("nih_cxr14_256")
    sources = tuple({**s, "licence": s.get("licence") or licence} for s in meta.data_sources)
    note = (f"\n\nMeasured by `benchmarks/eval_latent_xr.py` through `generate` (sampler {rep['generate']['sampler']}, "
            f"{rep['generate']['steps']} steps, guidance {rep['generate']['guidance']}, seed {rep['seed']}). Held out: "
            f"{rep['held_out']}.")
    quality = {"table": table + note, "shortfalls": short, "reconstruction": rep["reconstruction"],
               "metrics": rep["headline"], "summary": rep["summary_256"], "generate": rep["generate"],
               **({"shared_autoencoder": rep["shared_autoencoder"]} if "shared_autoencoder" in rep else {}),
               **({"comparison_32": rep["comparison_32"]} if "comparison_32" in rep else {})}
    new = dataclasses.replace(meta, quality=quality, training=training, data_sources=sources)
    save_pack_metadata(pack_dir, new)
    (pack_dir / "MODEL_CARD.md").write_text(latent_model_card(new, images=("contact_sheet.png",)), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=REPO / "src" / "medsynth" / "packs" / PACK_ID)
    ap.add_argument("--work", type=Path, required=True, help="build folder with data-train and data-heldout")
    ap.add_argument("--images", type=int, default=64, help="synthetic images in all (half per label)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--recon-every", type=int, default=1, help="reconstruct every k-th held-out image (1 = all)")
    ap.add_argument("--shared-ae", type=Path, help="also reconstruct through this pack's autoencoder (e.g. ct-body-512)")
    ap.add_argument("--compare-pack", type=Path, default=REPO / "src" / "medsynth" / "packs" / "xr-chest")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--hardware", default="1 torch thread of a 2-core AMD EPYC CPU shared with another training job")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seen", default="", help="what you saw in the contact sheet (goes into the card)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--from-report", action="store_true",
                    help="reuse --out's report.json and contact sheet of an earlier run of the same pack (write only)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    if args.from_report:  # e.g. after looking at the contact sheet: add --seen without measuring again
        rep = json.loads((args.out / "report.json").read_text(encoding="utf-8"))
        if rep["weights"] != load_pack(args.pack).metadata.files:  # --write changes only pack.json
            sys.exit(f"error: {args.out / 'report.json'} measured another pack; run without --from-report")
        if args.write:
            write_into_pack(args.pack, rep, args.out / "contact_sheet.png", args.seen, args.hardware)
        return
    t0 = time.time()
    real = load_real_dataset(args.work / "data-heldout", "real")
    train = load_real_dataset(args.work / "data-train", "train")
    recipe = tomllib.loads((REPO / "packaging" / "packs.toml").read_text(encoding="utf-8"))[PACK_ID]
    labels_csv = (args.work / "labels.csv").read_text(encoding="utf-8").splitlines()
    train_patients = [row.split("_")[0] for row in labels_csv if row.strip()]
    leaked = set(train_patients) & set(recipe["held_out_patients"])
    if leaked:
        sys.exit(f"error: held-out patients in the training labels: {sorted(leaked)[:5]}")
    pack = load_pack(args.pack)
    rep: dict = {"pack": str(args.pack), "pack_identity": pack.identity, "weights": pack.metadata.files, "seed": args.seed,
                 "held_out": f"{len(real)} NIH ChestX-ray14 images of {len(recipe['held_out_patients'])} patients "
                             f"({', '.join(f'{int(np.sum(real.labels == i))} {n}' for i, n in enumerate(real.class_names))}); "
                             f"patient ids in packaging/packs.toml [{PACK_ID}] held_out_patients",
                 "train_patients": sorted(set(train_patients))}
    rep["reconstruction"] = reconstruction(args.pack, np.asarray(real.images[:: args.recon_every]))
    if args.shared_ae:
        rep["shared_autoencoder"] = {"pack": load_pack(args.shared_ae).metadata.model_id,
                                     **reconstruction(args.shared_ae, np.asarray(real.images[::4]))}
    cfg = EvaluationConfig(seed=0, bootstrap=args.bootstrap)
    with tempfile.TemporaryDirectory(prefix="xr256-eval-") as tmp:
        data, syn, secs = evaluate_pack_on(args.pack, real, train, args.images, args.seed, Path(tmp) / "g256", cfg)
        rep["evaluated"] = {"synthetic": len(syn), "real": len(real), "train": len(train)}
        rep["generate"] = {"images": len(syn), "seconds": round(secs, 1), "seconds_per_image": secs / max(1, len(syn)),
                           "sampler": pack.metadata.default_sampler, "steps": pack.metadata.default_steps,
                           "guidance": pack.metadata.default_guidance}
        rep["headline"] = headline(data)
        rep["summary_256"] = rows_of(data)
        Image.fromarray(sheet(syn.images, syn.labels, syn.class_names)).save(args.out / "contact_sheet.png")
        Image.fromarray(sheet(real.images, real.labels, real.class_names)).save(args.out / "real_heldout_sheet.png")
        if not args.no_compare:
            r32, t32 = downsampled(real, 32), downsampled(train, 32)
            this32 = evaluate_sets(r32, downsampled(syn, 32), t32, cfg, baseline=t32).data
            other, syn32, _ = evaluate_pack_on(args.compare_pack, r32, t32, args.images, args.seed, Path(tmp) / "g32", cfg)
            ok, why = better_than(headline(this32), headline(other))
            rep["comparison_32"] = {
                "other": load_pack(args.compare_pack).metadata.model_id, "this": headline(this32),
                "other_headline": headline(other), "this_better": ok,
                "verdict": (f"{PACK_ID} measures better at 32² ({why})" if ok else
                            f"{PACK_ID} does not measure better on every count at 32² ({why}); the preset keeps its default")}
            Image.fromarray(sheet(syn32.images, syn32.labels, syn32.class_names)).resize((512, 256), Image.NEAREST).save(
                args.out / "contact_sheet_xr-chest_32.png")
    rep["seconds"] = round(time.time() - t0, 1)
    (args.out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    table, short = quality_table(rep)
    (args.out / "report.md").write_text(table + "\n\nShortfalls: " + "; ".join(short) + "\n", encoding="utf-8")
    print(table)
    if args.write:
        write_into_pack(args.pack, rep, args.out / "contact_sheet.png", args.seen, args.hardware)


if __name__ == "__main__":
    main()
