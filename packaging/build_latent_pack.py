"""Replay a latent-diffusion recipe of packaging/packs.toml (``kind = "latent"``):
prepare (autoencoder data at native slice spacing, denoiser data at the preset's 5 mm) →
train-autoencoder → train-latent → export into src/medsynth/packs/<id>/.

    python packaging/build_latent_pack.py ct-body-512 --work ~/medsynth-runs/ct-body-v2

A recipe with a ``[<id>.restart]`` table trains in two phases: the first phase's denoiser is exported,
rebuilt into fresh runs by ``medsynth runs-from-pack`` (EMA weights, new optimizer) and trained on with
the restart's flags; that is how a bundled pack continues when only its pack (not its run folder) is
left. ``--ld-steps`` then overrides the second phase's budget. A restart's ``autoencoder`` flags then
continue the rebuilt autoencoder too (``--decoder-only-steps``: the encoder, so the latents the
denoiser learned, stay as they were).

The recipe's step budgets are fixed (``--steps`` in its flags), so a replay from scratch on the same
software gives the same weights; ``history`` in the recipe says how the bundled weights were actually
reached when that differs.

A 2D recipe (X-ray) names its images' labels file instead of ``labels``: ``labels_csv`` (a
``file,label,…`` CSV beside the images, relative to ``--shared``) and ``held_out_patients`` (patient
ids = the file name's part before the first ``_``); every image of a held-out patient is left out of
both trainings and prepared into ``data-heldout`` for the evaluation (benchmarks/eval_latent_xr.py).

Runs are resumed when ``--work`` already holds them (checkpoints every 100 steps), so the build can
span several sessions; every medsynth step runs through its CLI. Only the standard library and
medsynth are used.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "packaging" / "packs.toml"


def medsynth(*args: str) -> None:
    print("+ medsynth " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "medsynth.cli.main", *args], check=True)


def split_labels(recipe: dict, shared: Path) -> tuple[str, str]:
    """A 2D recipe's (training, held-out) labels files as CSV text (``name,label`` rows, names = file
    stems), split by patient: no held-out patient's image is in the training file."""
    held = set(recipe["held_out_patients"])
    rows = list(csv.DictReader((shared / recipe["labels_csv"]).read_text(encoding="utf-8").splitlines()))
    train, test = [], []
    for row in rows:
        stem = Path(row["file"]).stem
        (test if stem.split("_")[0] in held else train).append(f"{stem},{row['label']}\n")
    missing = held - {Path(r["file"]).stem.split("_")[0] for r in rows}
    if missing:
        sys.exit(f"error: held-out patients {sorted(missing)} are not in {recipe['labels_csv']}")
    return "".join(train), "".join(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pack_id")
    ap.add_argument("--work", type=Path, required=True, help="run folder outside the repository")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--ae-steps", type=int, help="override the recipe's autoencoder step budget (not the bundled weights)")
    ap.add_argument("--ld-steps", type=int, help="override the recipe's denoiser step budget (not the bundled weights)")
    ap.add_argument("--stage", choices=["prepare", "autoencoder", "denoiser", "export", "all"], default="all")
    args = ap.parse_args()
    recipe = tomllib.loads(RECIPES.read_text(encoding="utf-8"))[args.pack_id]
    if recipe.get("kind") != "latent":
        sys.exit(f"error: [{args.pack_id}] in {RECIPES} is not a latent recipe")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_packs import check_licences  # the same licence gate as the pixel packs

    check_licences(args.pack_id, {"prepare": [{"inputs": recipe["autoencoder_inputs"] + recipe["denoiser_inputs"]}]})
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    labels = w / "labels.csv"
    grid = ["--matrix", str(recipe["matrix"]), "--pixel-spacing", str(recipe["pixel_spacing_mm"])]
    if args.stage in ("prepare", "all"):
        ae_in = [str(args.shared / p) for p in recipe["autoencoder_inputs"]]
        ld_in = [str(args.shared / p) for p in recipe["denoiser_inputs"]]
        if "labels_csv" in recipe:  # 2D: labels from the images' own CSV, held-out patients split off
            train_rows, held_rows = split_labels(recipe, args.shared)
            labels.write_text(train_rows, encoding="utf-8")
            (w / "labels-heldout.csv").write_text(held_rows, encoding="utf-8")
            medsynth("prepare", *ld_in, "-m", recipe["preset"], "--labels-file", str(w / "labels-heldout.csv"), *grid,
                     "-o", str(w / "data-heldout"), "--force", "--json")
        else:
            labels.write_text("".join(f"{n},{lab}{',' + z if z else ''}\n" for n, lab, z in recipe["labels"]),
                              encoding="utf-8")
        medsynth("prepare", *ae_in, "-m", recipe["preset"], "--labels-file", str(labels), *grid, "--slice-spacing", "0",
                 "-o", str(w / "data-ae"), "--force", "--json")
        medsynth("prepare", *ld_in, "-m", recipe["preset"], "--labels-file", str(labels), *grid,
                 "-o", str(w / "data-train"), "--force", "--json")
    def budget(flags: list[str], override: int | None) -> list[str]:
        """The recipe's flags, with ``--steps`` replaced when an override is given."""
        out = list(flags)
        if override is not None:
            out[out.index("--steps") + 1] = str(override)
        return out

    if args.stage in ("autoencoder", "all"):
        medsynth("train-autoencoder", str(w / "data-ae"), "-o", str(w / "ae"),
                 *budget(recipe["autoencoder"], args.ae_steps), "--json")
    restart = recipe.get("restart")  # a second phase that starts from the first phase's exported pack
    ae_run, ld_run = (w / "restart-ae", w / "restart-ldm") if restart else (w / "ae", w / "ldm")
    if args.stage in ("denoiser", "all"):
        medsynth("train-latent", str(w / "data-train"), "--autoencoder", str(w / "ae"), "-o", str(w / "ldm"),
                 *(recipe["denoiser"] if restart else budget(recipe["denoiser"], args.ld_steps)), "--json")
        if restart:
            if not (ld_run / "checkpoint.json").is_file():
                medsynth("export", str(w / "ldm"), "--autoencoder", str(w / "ae"), "-o", str(w / "phase1-pack"),
                         *recipe["export"], "--force", "--json")
                medsynth("runs-from-pack", str(w / "phase1-pack"), "--autoencoder-out", str(ae_run), "-o", str(ld_run),
                         "--json")
            medsynth("train-latent", str(w / "data-train"), "--autoencoder", str(ae_run), "-o", str(ld_run),
                     *budget(restart["denoiser"], args.ld_steps), "--json")
            if "autoencoder" in restart:  # e.g. --decoder-only-steps: a sharper decoder, the same latents
                medsynth("train-autoencoder", str(w / "data-ae"), "-o", str(ae_run), *restart["autoencoder"], "--json")
    if args.stage in ("export", "all"):
        medsynth("export", str(ld_run), "--autoencoder", str(ae_run), "-o",
                 str(REPO / "src" / "medsynth" / "packs" / args.pack_id), *recipe["export"], "--force", "--json")


if __name__ == "__main__":
    main()
