"""Evaluate model packs against their training data and print the markdown block for each model card.

    python benchmarks/eval_packs.py                      # every bundled pack
    python benchmarks/eval_packs.py PACK_DIR [-n 256] [--report DIR] [--shared ../shared/data]

For each pack: sample ``-n`` images at the pack's defaults (conditions and slice positions drawn
like the training set's), measure them with `medsynth evaluate`'s metrics against the training
set (real = train; see medsynth.evaluation.packs for where the training set comes from), check
the acceptance thresholds of QUALITY.md, and print a markdown block to paste into the pack's
MODEL_CARD.md and into QUALITY.md. With ``--report DIR`` the full report (JSON, HTML, PNGs) of
each pack is written to DIR/<model_id>/. Exit status 1 when any pack breaks a threshold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from medsynth.errors import MedsynthError
from medsynth.evaluation.packs import bundled_packs, check_thresholds, evaluate_pack, markdown_block
from medsynth.evaluation.report import write_report

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="*", type=Path, help="pack folders (default: every bundled pack)")
    ap.add_argument("-n", "--images", type=int, default=256, help="samples per pack (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", type=Path, default=None, help="write each full report to REPORT/<model_id>/")
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")),
                    help="the shared data folder (for training.prepare recipes)")
    args = ap.parse_args(argv)
    packs = args.packs or bundled_packs()
    if not packs:
        print("no packs to evaluate (none bundled in src/medsynth/packs/)", file=sys.stderr)
        return 1
    failed = False
    for pack_dir in packs:
        t0 = time.perf_counter()
        try:
            report, pack = evaluate_pack(pack_dir, args.shared, n_images=args.images, seed=args.seed)
        except MedsynthError as exc:
            print(f"{pack_dir}: {exc}", file=sys.stderr)
            failed = True
            continue
        if args.report is not None:
            write_report(report, args.report / pack.metadata.model_id, force=True)
        print(markdown_block(report, pack))
        print(f"<!-- evaluated in {time.perf_counter() - t0:.0f} s -->\n")
        failed |= bool(check_thresholds(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
