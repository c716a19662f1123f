"""Evaluate model packs the way users get them, on patients held out of training; record the numbers.

    python benchmarks/eval_packs.py                                  # every bundled pack
    python benchmarks/eval_packs.py PACK_DIR [-n 32] [--report DIR] [--shared ../shared/data]
    python benchmarks/eval_packs.py --record benchmarks/pack_quality.json    # what the regression test checks

For each pack (medsynth.evaluation.packs.evaluate_pack): ``-n`` images are made by
``medsynth.generate.generate`` (the pack's default sampler, steps and guidance; one condition per
label of the held-out set; series as long as the real volumes; NIfTI, read back), and measured
against real patients the pack was not trained on (pack.json ``training.held_out``, else
medsynth.evaluation.packs.HELD_OUT; without any, against the training set, and the block says
so), with the training set for memorisation. It prints a markdown block for the model card and
QUALITY.md with the acceptance gate's verdict (medsynth.evaluation.gate). ``--record FILE`` writes
the numbers the bundled-pack test compares against (tests/test_evaluation.py); ``--check FILE``
compares with them instead. With ``--report DIR`` the full report of each pack goes to
DIR/<model_id>/. Exit status 1 when a pack fails the gate (or, with --check, regressed).
The discriminator is the logistic one by default (fast, torch-free, the same in CI everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from medsynth.errors import MedsynthError
from medsynth.evaluation import EvaluationConfig
from medsynth.evaluation.packs import (
    bundled_packs,
    check_thresholds,
    evaluate_pack,
    markdown_block,
    quality_record,
    regressions,
)
from medsynth.evaluation.report import write_report

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="*", type=Path, help="pack folders (default: every bundled pack)")
    ap.add_argument("-n", "--images", type=int, default=32, help="images generated per pack (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: each pack's)")
    ap.add_argument("--discriminator", choices=("auto", "cnn", "logistic"), default="logistic")
    ap.add_argument("--report", type=Path, default=None, help="write each full report to REPORT/<model_id>/")
    ap.add_argument("--record", type=Path, default=None, help="write the regression record (JSON) here")
    ap.add_argument("--check", type=Path, default=None, help="compare with a regression record instead")
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")),
                    help="the shared data folder (for training.prepare / held-out recipes)")
    args = ap.parse_args(argv)
    packs = args.packs or bundled_packs()
    if not packs:
        print("no packs to evaluate (none bundled in src/medsynth/packs/)", file=sys.stderr)
        return 1
    records = json.loads(args.check.read_text(encoding="utf-8")) if args.check else {}
    out_records: dict[str, object] = {}
    failed = False
    for pack_dir in packs:
        t0 = time.perf_counter()
        cfg = EvaluationConfig(seed=args.seed, discriminator=args.discriminator)
        try:
            report, pack = evaluate_pack(pack_dir, args.shared, n_images=args.images, seed=args.seed, config=cfg,
                                         steps=args.steps)
        except MedsynthError as exc:
            print(f"{pack_dir}: {exc}", file=sys.stderr)
            failed = True
            continue
        mid = pack.metadata.model_id
        if args.report is not None:
            write_report(report, args.report / mid, force=True)
        print(markdown_block(report, pack))
        print(f"<!-- evaluated in {time.perf_counter() - t0:.0f} s -->\n")
        out_records[mid] = quality_record(report, args.images, args.seed, args.steps)
        if args.check is not None:
            regs = regressions(report, records[mid]) if mid in records else [f"no record for {mid}"]
            for r in regs:
                print(f"REGRESSION {mid}: {r}", file=sys.stderr)
            failed |= bool(regs)
        else:
            failed |= bool(check_thresholds(report))
    if args.record is not None:
        args.record.write_text(json.dumps(out_records, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
