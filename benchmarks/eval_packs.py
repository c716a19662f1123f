"""Evaluate model packs the way users get them, on patients held out of training; record the numbers.

    python benchmarks/eval_packs.py                                  # every bundled pack
    python benchmarks/eval_packs.py PACK_DIR [-n 32] [--report DIR] [--shared ../shared/data]
    python benchmarks/eval_packs.py --record benchmarks/pack_quality.json    # what the regression test checks
    python benchmarks/eval_packs.py --write --record benchmarks/pack_quality.json   # + cards, pack.json, QUALITY.md
    python benchmarks/eval_packs.py --check benchmarks/pack_quality.json --seed 1   # reproduced within the CIs?

For each pack (medsynth.evaluation.packs.evaluate_pack): ``-n`` images are made by
``medsynth.generate.generate`` (the pack's default sampler, steps and guidance; one condition per
label of the held-out set; series as long as the real volumes; NIfTI, read back), and measured
against real patients the pack was not trained on (pack.json ``training.held_out``, else
medsynth.evaluation.packs.HELD_OUT; without any, against the training set, and the block says
so), with the training set for memorisation. It prints a markdown block for the model card and
QUALITY.md with the acceptance gate's verdict (medsynth.evaluation.gate). ``--record FILE`` writes
the numbers the bundled-pack test compares against (tests/test_evaluation.py); ``--check FILE``
compares with them instead. With ``--report DIR`` the full report of each pack goes to
DIR/<model_id>/. ``--write`` puts each block into the pack's MODEL_CARD.md and pack.json ``quality``
(what `medsynth generate`'s "below the acceptance thresholds" note reads) and, when every bundled
pack was evaluated, the per-pack section of QUALITY.md. ``--check`` also prints, per recorded
metric, whether the new value lies inside the recorded 95 % interval, and a "PACK: k/k within CI"
line; it exits 1 when any metric lies outside (or regressed). ``--seed`` is the *generation* seed;
the evaluation's own randomness (the real A/B split, subsets, bootstrap, discriminator folds) uses
``--eval-seed``, with --check the recorded one: a re-run with another generation seed is then
measured against the same real reference as the card (for a pack judged on its single training
volume, another split would be another reference; see QUALITY.md). ``--images-for ID=N`` gives
one pack another image count and ``--series-for ID=N`` N generated series per label instead of
series as long as the real volumes (both recorded; the regression test uses them). Exit status 1 when a pack
fails the gate (or, with --check, regressed).
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
    REGRESSION_METRICS,
    bundled_packs,
    check_thresholds,
    evaluate_pack,
    markdown_block,
    quality_record,
    recipe_names,
    regressions,
    write_pack_quality,
)
from medsynth.evaluation.report import write_report

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="*", type=Path, help="pack folders (default: every bundled pack)")
    ap.add_argument("-n", "--images", type=int, default=32, help="images generated per pack (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    ap.add_argument("--eval-seed", type=int, default=None,
                    help="evaluation seed: split, subsets, bootstrap (default: --check's record, else 0)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: each pack's)")
    ap.add_argument("--discriminator", choices=("auto", "cnn", "logistic"), default="logistic")
    ap.add_argument("--report", type=Path, default=None, help="write each full report to REPORT/<model_id>/")
    ap.add_argument("--record", type=Path, default=None, help="write the regression record (JSON) here")
    ap.add_argument("--check", type=Path, default=None, help="compare with a regression record instead")
    ap.add_argument("--write", action="store_true",
                    help="write the blocks into each pack's MODEL_CARD.md and pack.json, and into QUALITY.md")
    ap.add_argument("--images-for", action="append", default=[], metavar="ID=N",
                    help="images for one pack (e.g. xr-chest=128: enough for train-on-synthetic)")
    ap.add_argument("--series-for", action="append", default=[], metavar="ID=N",
                    help="generated series per label for one pack (e.g. mr-cardiac=16: its one real volume "
                         "would otherwise give 3 long series, too few for honest intervals)")
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data")),
                    help="the shared data folder (for training.prepare / held-out recipes)")
    args = ap.parse_args(argv)
    packs = args.packs or bundled_packs()
    if not packs:
        print("no packs to evaluate (none bundled in src/medsynth/packs/)", file=sys.stderr)
        return 1
    records = json.loads(args.check.read_text(encoding="utf-8")) if args.check else {}
    per_pack = dict(item.split("=", 1) for item in args.images_for)
    series_for = {k: int(v) for k, v in (item.split("=", 1) for item in args.series_for)}
    out_records: dict[str, object] = {}
    sections: list[tuple[str, str, list[str], str]] = []
    failed = False
    for pack_dir in packs:
        t0 = time.perf_counter()
        rec = records.get(pack_dir.name, {})
        eval_seed = args.eval_seed if args.eval_seed is not None else int(rec.get("eval_seed", rec.get("seed", 0)))
        cfg = EvaluationConfig(seed=eval_seed, discriminator=args.discriminator)
        n_images = int(per_pack.get(pack_dir.name, args.images))
        series = series_for.get(pack_dir.name, rec.get("series") if args.check else None)
        try:
            report, pack = evaluate_pack(pack_dir, args.shared, n_images=n_images, seed=args.seed, config=cfg,
                                         steps=args.steps, series=series)
        except MedsynthError as exc:
            print(f"{pack_dir}: {exc}", file=sys.stderr)
            failed = True
            continue
        mid = pack.metadata.model_id
        if args.report is not None:
            write_report(report, args.report / mid, force=True)
        block = markdown_block(report, pack)
        print(block)
        print(f"<!-- evaluated in {time.perf_counter() - t0:.0f} s -->\n")
        out_records[mid] = {**quality_record(report, n_images, args.seed, args.steps, series),
                           "eval_seed": eval_seed}
        fails = check_thresholds(report)
        if args.write:
            write_pack_quality(pack.root, report, pack, n_images, _command(args))
        held = report.data["inputs"].get("real_is_training_data") is False
        real = (recipe_names(report.data["inputs"].get("held_out_recipe")) if held else
                "**training set** " + recipe_names(pack.metadata.training.get("prepare")))
        sections.append((mid, real, fails, block))
        if args.check is not None:
            regs = regressions(report, records[mid]) if mid in records else [f"no record for {mid}"]
            for r in regs:
                print(f"REGRESSION {mid}: {r}", file=sys.stderr)
            lines = _within_ci(report.data["metrics"], records[mid]) if mid in records else []
            for line in lines:
                print(f"{mid}: {line}")
            inside = sum(line.endswith(": inside") for line in lines)
            with_ci = sum(line.endswith((": inside", ": OUTSIDE")) for line in lines)
            print(f"{mid}: {inside}/{with_ci} within CI (generation seed {args.seed}, evaluation seed {eval_seed})")
            failed |= bool(regs) or inside < with_ci
        else:
            failed |= bool(fails)
    if args.record is not None:
        # packs named on the command line replace their own records only
        kept = json.loads(args.record.read_text(encoding="utf-8")) if args.packs and args.record.is_file() else {}
        args.record.write_text(json.dumps({**kept, **out_records}, indent=2) + "\n", encoding="utf-8")
    if args.write and not args.packs and sections:
        _write_quality_md(sections, _command(args))
    return 1 if failed else 0


def _command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/eval_packs.py", "--write"]
    parts += [f"-n {args.images}"] + [f"--images-for {i}" for i in args.images_for]
    parts += [f"--series-for {i}" for i in args.series_for]
    parts += [f"--seed {args.seed}"] + ([f"--eval-seed {args.eval_seed}"] if args.eval_seed is not None else [])
    parts += [f"--steps {args.steps}"] if args.steps else []
    return " ".join(parts)


def _within_ci(metrics: dict[str, object], record: dict[str, object]) -> list[str]:
    """Per recorded metric: the new value and whether it lies inside the recorded 95 % interval."""
    from medsynth.evaluation.packs import _node

    out = []
    rec_metrics = record.get("metrics", {})
    assert isinstance(rec_metrics, dict)
    for path, _ in REGRESSION_METRICS:
        key = ".".join(path)
        old, node = rec_metrics.get(key), _node(metrics, path)  # type: ignore[arg-type]
        if not old or node is None:
            continue
        ci = old.get("ci")
        if ci:
            inside = ci[0] - 1e-9 <= node["synthetic"] <= ci[1] + 1e-9
            out.append(f"{key} {node['synthetic']:.4g} vs recorded {old['synthetic']:.4g} "
                       f"[{ci[0]:.4g}, {ci[1]:.4g}]: {'inside' if inside else 'OUTSIDE'}")
        else:
            out.append(f"{key} {node['synthetic']:.4g} vs recorded {old['synthetic']:.4g} (no interval)")
    return out


def _write_quality_md(sections: list[tuple[str, str, list[str], str]], command: str) -> None:
    """Replace QUALITY.md's per-pack section (between the packs markers) with these results."""
    q = REPO / "QUALITY.md"
    text = q.read_text(encoding="utf-8")
    begin, end = "<!-- packs:begin -->", "<!-- packs:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"QUALITY.md has no {begin} … {end} section")
    passing = [m for m, _, f, _ in sections if not f]
    verdict = ("**Verdict: no bundled pack passes the gate.**" if not passing else
               f"**Verdict: {', '.join(passing)} pass{'es' if len(passing) == 1 else ''} the gate.**")
    lines = [verdict + " Every number below comes from images made by `medsynth generate` (the pack's "
             "defaults, NIfTI read back) measured against real patients held out of the pack's training "
             "where such patients exist; `tests/test_evaluation.py::test_bundled_pack_does_not_regress` "
             "checks every pack, experimental or not, against `benchmarks/pack_quality.json`.", "",
             "| pack | real set | gate |", "|---|---|---|"]
    lines += [f"| {m} | {r} | {'passes' if not f else 'fails: ' + '; '.join(f)} |" for m, r, f, _ in sections]
    lines += ["", f"Written by `{command} --record benchmarks/pack_quality.json` (logistic discriminator), "
              "which also writes each pack's MODEL_CARD.md and pack.json. Intervals are wide: few patients.", ""]
    lines += [b for *_, b in sections]
    pre, _, post = text.partition(begin)
    _, _, post = post.partition(end)
    q.write_text(pre + begin + "\n" + "\n".join(lines) + "\n" + end + post, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
