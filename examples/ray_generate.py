"""Sharded ``medsynth generate`` on Ray: one task per shard, then one merged folder.

    pip install "ray>=2.9"
    python examples/ray_generate.py -m ct-chest --patients 40 --seed 7 --workers 2 -o run/
    # writes run/shard-0 ... run/shard-<n-1> and run/merged (one manifest.json, one DICOMDIR)

With ``--address auto`` it joins a running Ray cluster (``ray start --head`` / ``ray up``) instead
of starting a local one with ``--workers`` CPUs. Every task calls the library's
:func:`medsynth.generate.generate` with ``GenerateConfig(shard=Shard(i, n))``; the shards are
deterministic by seed and global patient index, so ``run/merged`` equals an unsharded run file for
file. Ray does the scheduling; medsynth has no scheduler of its own.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from the workstation

import ray  # noqa: E402

from medsynth.generate import GenerateConfig, generate  # noqa: E402
from medsynth.shard import Shard, merge_shards  # noqa: E402


@ray.remote(num_cpus=1)
def run_shard(options: dict[str, Any], index: int, count: int, out_dir: str) -> dict[str, Any]:
    """One shard: the patients p with p % count == index."""
    cfg = GenerateConfig(out_dir=Path(out_dir), shard=Shard(index, count), **options)
    return generate(cfg).to_json()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--modality", required=True)
    ap.add_argument("-o", "--output", required=True, help="run folder: shard-<i>/ and merged/ go in it")
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--studies", type=int, default=1)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--shards", type=int, default=None, help="number of shards (default: --workers)")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (one thread per task)")
    ap.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local one")
    ap.add_argument("--transfer-syntax", default="explicit")
    args = ap.parse_args(argv)

    shards = args.shards or args.workers
    run = Path(args.output)
    options = {"modality": args.modality, "patients": args.patients, "studies": args.studies,
               "slices": args.slices, "steps": args.steps, "seed": args.seed, "reproducible_uids": True,
               "threads": 1, "transfer_syntax": args.transfer_syntax}
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        results = ray.get([run_shard.remote(options, i, shards, str(run / f"shard-{i}")) for i in range(shards)])
    finally:
        ray.shutdown()
    merged = merge_shards([run / f"shard-{i}" for i in range(shards)], run / "merged")
    print(json.dumps({"shards": [{"files": r["files"], "seconds": r["seconds"]} for r in results],
                      "merged": merged.to_json()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
