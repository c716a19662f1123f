"""Instances/s pushed to a local Orthanc: medsynth C-STORE, medsynth STOW-RS, dcmtk storescu.

    python benchmarks/bench_push.py [--n 200] [--repeats 3] [--batch-size 50]
    python benchmarks/bench_push.py --associations 1,2,4 [--batch-size 20]   # parallel associations only

Files: pydicom's CT_small.dcm (128×128 16-bit CT, ~39 KB) copied N times with new UIDs. Orthanc runs on
loopback with a temporary storage (started and stopped here, by PID); it is emptied before every
run so each run stores N new instances. Prints a Markdown table (median of the repeats).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _orthanc import Orthanc, start_orthanc  # noqa: E402


def make_files(folder: Path, n: int) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    for k in range(n):
        src.StudyInstanceUID, src.SeriesInstanceUID = study, series
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        src.InstanceNumber = k + 1
        src.save_as(folder / f"ct{k:05d}.dcm")


def run_medsynth(o: Orthanc, folder: Path, state: Path, stow: bool, batch: int, associations: int = 1) -> float:
    from medsynth.push import DimseTarget, PushConfig, StowAuth, StowTarget, push_folder

    target = (StowTarget(f"{o.url}/dicom-web/studies", StowAuth("basic", "bench", "bench", "benchmark"))
              if stow else DimseTarget("127.0.0.1", o.dicom_port, o.aet))
    cfg = PushConfig(target, batch_size=batch, resume=False, state_path=state, timeout_s=60, associations=associations)
    t0 = time.perf_counter()
    report = push_folder(folder, cfg, progress=False)
    dt = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"push failed: {report.to_json()['counts']} {report.errors}")
    return dt


def find_storescu() -> str:
    """dcmtk's storescu (pynetdicom installs a Python script of the same name into venvs)."""
    for cand in ("/usr/bin/storescu", shutil.which("storescu")):
        if cand and Path(cand).is_file():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in out.lower():
                return cand
    raise SystemExit("dcmtk storescu not found (apt-get install dcmtk)")


def run_storescu(o: Orthanc, folder: Path, nodelay: bool = False) -> float:
    """dcmtk storescu; like Orthanc's DCMTK it disables Nagle only with TCP_NODELAY=1 in its environment."""
    exe = find_storescu()
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    t0 = time.perf_counter()
    subprocess.run([exe, "-aet", "STORESCU", "-aec", o.aet, "+sd", "127.0.0.1", str(o.dicom_port), str(folder)],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--associations", help="only compare C-STORE with these numbers of parallel associations, e.g. 1,2,4")
    args = ap.parse_args()
    if args.associations:
        compare_associations(args, [int(a) for a in args.associations.split(",")])
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-push-"))
    files = tmp / "files"
    files.mkdir()
    make_files(files, args.n)
    results: list[tuple[str, str, list[float]]] = []
    # Orthanc's DICOM server (DCMTK) leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment.
    for label, env in (("Orthanc default", {}), ("Orthanc with TCP_NODELAY=1", {"TCP_NODELAY": "1"})):
        o = start_orthanc(tmp / f"orthanc{len(env)}", dicomweb=True, users={"bench": "bench"},
                          env={"TCP_NODELAY": "0", **env})
        try:
            methods = {
                f"medsynth push C-STORE (batch {args.batch_size})":
                    lambda o=o: run_medsynth(o, files, tmp / "s.json", False, args.batch_size),
                f"medsynth push C-STORE (batch {args.n}, one association)":
                    lambda o=o: run_medsynth(o, files, tmp / "s.json", False, args.n),
                f"medsynth push STOW-RS (batch {args.batch_size})":
                    lambda o=o: run_medsynth(o, files, tmp / "s.json", True, args.batch_size),
                "dcmtk storescu +sd (one association)": lambda o=o: run_storescu(o, files),
                "dcmtk storescu +sd, TCP_NODELAY=1": lambda o=o: run_storescu(o, files, nodelay=True),
            }
            for name, fn in methods.items():
                times = []
                for _ in range(args.repeats):
                    o.clear()
                    times.append(fn())
                    stored = len(o.get_json("/instances"))
                    if stored != args.n:
                        raise SystemExit(f"{name}: Orthanc holds {stored} instances, expected {args.n}")
                results.append((label, name, times))
                print(f"{label} | {name}: {[round(t, 2) for t in times]}", file=sys.stderr)
        finally:
            o.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.n} × CT_small.dcm (128×128, 39 KB), Orthanc 1.10.1 on loopback, median of {args.repeats}\n")
    print("| Orthanc | method | seconds | instances/s |")
    print("|---|---|---|---|")
    for label, name, times in results:
        med = statistics.median(times)
        print(f"| {label} | {name} | {med:.2f} | {args.n / med:.0f} |")


def compare_associations(args: argparse.Namespace, counts: list[int]) -> None:
    """C-STORE of the same files with 1..N parallel associations (Orthanc with TCP_NODELAY=1)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-push-"))
    files = tmp / "files"
    files.mkdir()
    make_files(files, args.n)
    o = start_orthanc(tmp / "orthanc", env={"TCP_NODELAY": "1"})
    medians: dict[int, float] = {}
    try:
        for a in counts:
            times = []
            for _ in range(args.repeats):
                o.clear()
                times.append(run_medsynth(o, files, tmp / "s.json", False, args.batch_size, a))
                if len(o.get_json("/instances")) != args.n:
                    raise SystemExit(f"{a} associations: Orthanc does not hold {args.n} instances")
            medians[a] = statistics.median(times)
            print(f"{a} associations: {[round(t, 2) for t in times]}", file=sys.stderr)
    finally:
        o.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    base = medians[counts[0]]
    print(f"\n{args.n} × CT_small.dcm, batch {args.batch_size}, Orthanc on loopback (TCP_NODELAY=1), "
          f"median of {args.repeats}, {os.cpu_count()} CPUs\n")
    print("| associations | seconds | instances/s | speed-up vs 1 |")
    print("|---|---|---|---|")
    for a, med in medians.items():
        print(f"| {a} | {med:.2f} | {args.n / med:.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
