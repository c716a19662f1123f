"""Replay the recipes in packaging/packs.toml: prepare → train → export → evaluate each bundled pack.

    python packaging/build_packs.py ct-body                    # every stage
    python packaging/build_packs.py ct-body --stage export     # one stage (uses work/ from earlier ones)
    python packaging/build_packs.py --all --stage evaluate

Stages write under ``--work`` (default ``work/``, ignored by git): ``ds-<id>`` (the prepared dataset),
``run-<id>`` (the training run; an existing run is resumed exactly), ``eval-<id>`` (the evaluation
report). ``export`` writes ``src/medsynth/packs/<id>/`` and records the recipe, the licences of the
training data and the hardware in its pack.json; ``evaluate`` makes images with `medsynth generate`,
measures them against patients held out of training (medsynth.evaluation.packs.evaluate_pack, as
``benchmarks/eval_packs.py`` does) and writes the numbers into pack.json and MODEL_CARD.md.
Only the standard library and medsynth are used; every medsynth step runs through its CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "packaging" / "packs.toml"
PACKS = REPO / "src" / "medsynth" / "packs"
STAGES = ("prepare", "train", "export", "evaluate")

# Licence and attribution of every shared input (from ../shared/data/README.md), keyed by file name prefix.
# An entry that contains one of RESTRICTED is never used to train a bundled pack (see check_licences).
LICENCES: dict[str, str] = {
    "abdomen_pelvis_totalseg": "Apache-2.0; TotalSegmentator tests/reference_files/example_ct.nii.gz",
    "upper_abdomen_dicom": "Apache-2.0; TotalSegmentator tests/reference_files/example_ct_dicom",
    "cardiac_cta_totalseg": "Apache-2.0; TotalSegmentator reports' test files",
    "abdomen_mr_totalseg": "Apache-2.0; TotalSegmentator tests/reference_files/example_mr_sm.nii.gz",
    "chest_pyradiomics": "BSD-3-Clause; pyradiomics 3.1.0 sdist data/",
    "chest_lungpetctdx": "CC BY 4.0; TCIA Lung-PET-CT-Dx, patient Lung_Dx-A0001 (via huyenbui117/lung_CT)",
    "abdomen_pancreasctcbct": "CC BY 4.0; TCIA Pancreatic-CT-CBCT-SEG, patient Pancreas-CT-CB_001 (via pyvista/vtk-data)",
    "covid_nysbu_axial_dicom": "CC BY 4.0; TCIA COVID-19-NY-SBU (via SaltyJoke/Image-Registration)",
    "head_gantry_tilt_dicom": "BSD-2-Clause, but not for training (a reader stress case); neurolabusc/dcm_qa_ct In/GE",
    "brain_t1c_pyradiomics": "BSD-3-Clause; pyradiomics 3.1.0 sdist data/ (TCGA-GBM)",
    "brain_t1_chris": (
        "licence unclear (the subject's own scans are distributed under CC BY-NC 4.0, non-commercial); "
        "neurolabusc/MRIcron; reader tests only, not for training"
    ),
    "brain_t1_colin27": "BSD; neurolabusc/MRIcron Resources/templates/ch2.nii.gz (Colin27)",
    "brain_stroke": "MIT; neurolabusc/VolumeRenderingData stroke/",
    "cardiac_lge_dicom": "MIT; CIBC-Internal/Seg3DData example_dicom (SCI Institute, University of Utah)",
    "cardiac_cine_sunnybrook_dicom": "CC0 1.0; Sunnybrook Cardiac Data (Radau et al., MIDAS Journal 2009)",
    "pneumoniamnist": "CC BY 4.0; MedMNIST v2 PneumoniaMNIST (Yang et al. 2023), derived from Kermany et al. 2018",
    "nih_cxr14_256": "unrestricted use; NIH Clinical Center ChestX-ray14 (Wang et al., CVPR 2017)",
    "covid_hannover_256": "CC BY 3.0; Hannover Medical School covid-19-image-repository (Winther et al. 2020)",
    "malaria_nih_cells": "public domain (NLM-produced, not copyrighted); NLM LHNCBC malaria cells (Rajaraman et al. 2018)",
}
RESTRICTED = ("unclear", "non-commercial", "not for training")


def licence_of(name: str) -> str:
    for prefix, text in LICENCES.items():
        if name.startswith(prefix):
            return text
    return ""


def check_licences(pid: str, recipe: dict[str, Any]) -> None:
    """Stop (one line, exit status 1) when a recipe trains on an input without a known, redistributable licence."""
    for part in recipe.get("prepare", []):
        for item in part.get("inputs", []):
            text = licence_of(Path(item).name)
            if not text:
                sys.exit(f"build_packs: [{pid}] input {item}: no licence recorded in LICENCES; refusing to train a bundled pack on it")
            bad = [w for w in RESTRICTED if w in text.lower()]
            if bad:
                sys.exit(f"build_packs: [{pid}] input {item} is marked '{bad[0]}' ({text}); refusing to train a bundled pack on it")


def medsynth(*args: str) -> None:
    cmd = [sys.executable, "-m", "medsynth.cli.main", *args]
    print("+ medsynth " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def stage_prepare(pid: str, recipe: dict[str, Any], work: Path, shared: Path) -> None:
    import shutil
    import tempfile

    from medsynth.evaluation.packs import rebuild_dataset

    out = work / f"ds-{pid}"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        built = rebuild_dataset(recipe["prepare"], shared, Path(tmp), recipe["preset"], RECIPES)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(built, out)
    print(f"prepared {out}")


def stage_train(pid: str, recipe: dict[str, Any], work: Path) -> None:
    """``train`` (a fresh run), then every ``resume`` entry in order (``train --resume`` with those flags).

    The steps reached depend on the machine's speed, since the recipes give time budgets
    (``--max-minutes``); each pack's model card records the steps and hours it actually got.
    """
    run = work / f"run-{pid}"
    ds = str(work / f"ds-{pid}")
    if not (run / "config.json").is_file():
        medsynth("train", ds, "-o", str(run), *recipe["train"], "--quiet", "--json")
    for extra in recipe.get("resume", []):
        medsynth("train", ds, "-o", str(run), "--resume", *extra, "--quiet", "--json")


def stage_export(pid: str, recipe: dict[str, Any], work: Path) -> None:
    from medsynth.export.pack_writer import write_model_card

    pack = PACKS / pid
    medsynth("export", str(work / f"run-{pid}"), "-o", str(pack), *recipe.get("export", []), "--force", "--json")
    meta_path = pack / "pack.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["training"]["prepare"] = recipe["prepare"]
    meta["training"]["recipe"] = f"packaging/packs.toml [{pid}] (python packaging/build_packs.py {pid})"
    meta["training"].pop("dataset_path", None)  # a path on the build machine means nothing elsewhere
    for src in meta["data_sources"]:
        src["licence"] = src.get("licence") or licence_of(str(src.get("name", "")))
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_model_card(pack)


def stage_evaluate(pid: str, recipe: dict[str, Any], work: Path, shared: Path, n_images: int) -> None:
    """Measure the pack as ``benchmarks/eval_packs.py --write`` does (``generate``'s own path, held-out
    patients) and write pack.json ``quality`` and MODEL_CARD.md; QUALITY.md's per-pack section is
    written by ``python benchmarks/eval_packs.py --write`` over all bundled packs."""
    from medsynth.evaluation.packs import evaluate_pack, write_pack_quality
    from medsynth.evaluation.report import write_report

    pack_dir = PACKS / pid
    if recipe.get("evaluation") == "micro":  # RGB cells: CNN per class, colour histograms, memorisation
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_micro.py"), "--pack", str(pack_dir), "--write"],
                       check=True)
        describe_card(pack_dir, recipe.get("seen", ""))
        return
    os.environ.setdefault("MEDSYNTH_PACK_DATASETS", str(work / "_datasets"))
    ds_link = work / "_datasets" / pid
    ds_link.parent.mkdir(parents=True, exist_ok=True)
    if not ds_link.exists():
        import shutil

        shutil.copytree(work / f"ds-{pid}", ds_link)
    report, pack = evaluate_pack(pack_dir, shared, n_images=n_images, seed=0)
    write_report(report, work / f"eval-{pid}", force=True)
    write_pack_quality(pack_dir, report, pack, n_images,
                       f"python packaging/build_packs.py {pid} --stage evaluate -n {n_images}")
    describe_card(pack_dir, recipe.get("seen", ""))
    print((pack_dir / "MODEL_CARD.md").read_text(encoding="utf-8"))


def describe_card(pack_dir: Path, seen: str) -> None:
    """Add what a person saw in the samples (the recipe's ``seen``) to the card's Limitations."""
    card = pack_dir / "MODEL_CARD.md"
    text = card.read_text(encoding="utf-8")
    if seen and "Seen in the samples" not in text:
        text = text.replace("## Limitations\n\n", f"## Limitations\n\nSeen in the samples: {seen}\n\n", 1)
        card.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="*", help="model ids from packaging/packs.toml")
    ap.add_argument("--all", action="store_true", help="every pack in the recipe file")
    ap.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    ap.add_argument("--work", type=Path, default=REPO / "work")
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("-n", "--images", type=int, default=32, help="images for the evaluation (eval_packs.py's default)")
    args = ap.parse_args(argv)
    # latent-diffusion recipes (kind = "latent") are replayed by packaging/build_latent_pack.py
    recipes = {k: v for k, v in tomllib.loads(RECIPES.read_text(encoding="utf-8")).items() if v.get("kind") != "latent"}
    ids = list(recipes) if args.all else args.packs
    unknown = [i for i in ids if i not in recipes]
    if not ids or unknown:
        ap.error(f"choose packs from: {', '.join(recipes)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    args.work.mkdir(parents=True, exist_ok=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for pid in ids:
        r = recipes[pid]
        check_licences(pid, r)
        for st in stages:
            if st == "prepare":
                stage_prepare(pid, r, args.work, args.shared)
            elif st == "train":
                stage_train(pid, r, args.work)
            elif st == "export":
                stage_export(pid, r, args.work)
            else:
                stage_evaluate(pid, r, args.work, args.shared, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
