"""Benchmark sharded `medsynth generate`: studies per hour, one process vs 2 shards in parallel.

Three ways to make the same run (bundled ct-body pack, preset ct-pelvis, seeded, reproducible UIDs),
each a fresh process of the real CLI, wall-clock from start to the last file:

- ``1 process, 1 thread``: the baseline;
- ``1 process, 2 threads``: the obvious alternative to sharding on one machine (``--threads 2``);
- ``2 shards × 1 thread``: ``--shard 0/2`` and ``--shard 1/2`` at the same time (what a Slurm array
  or the Ray example runs), then ``medsynth merge-shards`` (its time is included).

The merged folder is checked to equal the one-process run file for file (manifest aside).

    python benchmarks/bench_shard.py [--patients 4] [--slices 16] [--steps 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MEDSYNTH = [sys.executable, "-m", "medsynth.cli.main"]


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*MEDSYNTH, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"medsynth failed: {err.decode()[-1000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    run = ["generate", "-m", "ct-pelvis", "--patients", str(args.patients), "--slices", str(args.slices),
           "--steps", str(args.steps), "--seed", "1", "--reproducible-uids", "--json"]
    studies = args.patients
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        _wait(_cli(*run, "--threads", "1", "-o", str(base / "one")))
        rows.append({"way": "1 process, 1 thread", "seconds": time.perf_counter() - t})
        t = time.perf_counter()
        _wait(_cli(*run, "--threads", "2", "-o", str(base / "threads")))
        rows.append({"way": "1 process, 2 threads", "seconds": time.perf_counter() - t})
        t = time.perf_counter()
        _wait(*[_cli(*run, "--threads", "1", "--shard", f"{i}/2", "-o", str(base / f"s{i}")) for i in range(2)])
        _wait(_cli("merge-shards", str(base / "s0"), str(base / "s1"), "-o", str(base / "merged"), "--json"))
        rows.append({"way": "2 shards × 1 thread (+ merge)", "seconds": time.perf_counter() - t})
        same = _digests(base / "one") == _digests(base / "merged")
    for r in rows:
        r["studies_per_hour"] = round(studies * 3600 / r["seconds"], 1)
        r["speed_up"] = round(rows[0]["seconds"] / r["seconds"], 2)
        r["seconds"] = round(r["seconds"], 2)
    result = {"patients": args.patients, "studies": studies, "slices_per_study": args.slices, "steps": args.steps,
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "merged_equals_one_run": same, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
