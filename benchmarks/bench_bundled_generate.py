"""The default `medsynth generate` run on a bundled pack, as a user types it (benchmarks/RESULTS.md,
"Generate with the bundled packs").

    python benchmarks/bench_bundled_generate.py [--modality ct-pelvis] [--threads 2]

Runs ``medsynth generate --modality M --seed 0 -o TMP --json`` as a subprocess with the default
settings (DPM-Solver++(2M), 25 steps, guidance 2, 32 slices) and with 10 and 50 steps and guidance 1,
and prints wall seconds, seconds per slice and the largest max RSS of the runs so far, with the
load average beside: measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", default="ct-pelvis")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    runs = [("default: DPM-Solver++(2M), 25 steps, guidance 2", []), ("10 steps, guidance 2", ["--steps", "10"]),
            ("50 steps, guidance 2", ["--steps", "50"]), ("25 steps, guidance 1 (no CFG)", ["--guidance", "1"])]
    print(f"load average {os.getloadavg()[0]:.1f} at start\n")
    print("| run (32 slices) | wall s | s/slice | max RSS of the run, MB |")
    print("|---|---:|---:|---:|")
    for name, extra in runs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "medsynth.cli.main", "generate", "--modality", args.modality, "--seed", "0",
                   "-o", str(Path(tmp) / "out"), "--json", *extra]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
            print(f"| {name} | {wall:.1f} | {wall / 32:.2f} | {rss:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
