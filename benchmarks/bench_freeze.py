"""Benchmark the standalone medsynth (packaging/freeze): size, build time, start-up, generate, vs the venv.

Builds the archive with ``packaging/freeze/build.py`` (or takes ``--archive``), unpacks it and measures:
archive and unpacked size; build, archive and unpack seconds; ``medsynth --help`` and ``--version``
wall time (first run after unpacking, then the median of ``--repeat`` runs) for the frozen executable
(with no Python on PATH) and for the Python package's ``medsynth`` console script in this venv (the
obvious alternative), with the ratio; and the README's main command ``medsynth generate --modality
ct-pelvis`` (32 slices, bundled pack, same seed and threads) both ways. The venv's footprint is the
installed size of the distributions ``pip install '.[cpu,eval]'`` brings (from their RECORD files).

``--folder DIR`` measures another one-folder build instead (e.g. a Nuitka ``launch.dist``; its
executable is ``DIR/medsynth``), archived here the same way for its size.

    python benchmarks/bench_freeze.py [--archive medsynth-*.tar.gz] [--repeat 10] [--no-generate] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "packaging" / "freeze" / "build.py"


def _timed(cmd: list[str], env: dict[str, str] | None, cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}")
    return dt


def _startup(cmd: list[str], env: dict[str, str] | None, cwd: Path, repeat: int) -> dict[str, float]:
    first = _timed(cmd, env, cwd)
    runs = [_timed(cmd, env, cwd) for _ in range(repeat)]
    return {"first_s": round(first, 3), "median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}


def _folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def _requirement_names(reqs: list[str] | None, extras: set[str]) -> list[str]:
    names = []
    for req in reqs or []:
        spec, _, marker = req.partition(";")
        m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if m and m.group(1) not in extras:
            continue
        if marker.strip() and not m:
            continue  # platform markers: the dependencies this platform installs are the unmarked ones here
        names.append(re.split(r"[\s\[<>=!~(;]", spec.strip(), maxsplit=1)[0])
    return names


def venv_footprint(extras: tuple[str, ...] = ("cpu", "eval")) -> dict[str, Any]:
    """Installed bytes of medsynth[extras] and its dependency closure (from the distributions' RECORDs)."""
    seen: dict[str, int] = {}
    todo = [("medsynth", set(extras))]
    while todo:
        name, ex = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                size += p.stat().st_size
        seen[key] = size
        todo += [(n, set()) for n in _requirement_names(dist.requires, ex)]
    return {"bytes": sum(seen.values()), "distributions": len(seen)}


def _unpack(archive: Path, dest: Path) -> Path:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="tar")
            else:
                tar.extractall(dest)
    (top,) = [p for p in dest.iterdir() if p.is_dir()]
    return top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, help="an archive from packaging/freeze/build.py (default: build one)")
    ap.add_argument("--folder", type=Path, help="measure this unpacked one-folder build instead")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-generate", action="store_true", help="skip the generate comparison")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-freeze-") as tmp_s:
        tmp = Path(tmp_s)
        if args.folder is not None:
            top = args.folder.resolve()
            archive = tmp / "folder.tar.gz"
            t0 = time.perf_counter()
            with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
                tar.add(top, arcname=top.name)
            out["archive_seconds"] = round(time.perf_counter() - t0, 1)
            out["kind"] = f"folder {top}"
        else:
            if args.archive is None:
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, str(BUILD), "--dist", str(tmp / "dist"), "--json"],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-2000:])
                build = json.loads(proc.stdout)
                out.update(build_total_seconds=round(time.perf_counter() - t0, 1),
                           pyinstaller_seconds=build["build_seconds"], archive_seconds=build["archive_seconds"],
                           versions=build["versions"])
                archive = Path(build["archive"])
            else:
                archive = args.archive.resolve()
            out["kind"] = f"archive {archive.name}"
            t0 = time.perf_counter()
            top = _unpack(archive, tmp / "unpacked")
            out["unpack_seconds"] = round(time.perf_counter() - t0, 1)
        out["archive_mb"] = round(archive.stat().st_size / 1e6, 1)
        folder_bytes, files = _folder_bytes(top)
        out.update(unpacked_mb=round(folder_bytes / 1e6, 1), files=files)
        venv = venv_footprint()
        out["venv_product_mb"] = round(venv["bytes"] / 1e6, 1)
        out["venv_distributions"] = venv["distributions"]

        exe = top / ("medsynth.exe" if sys.platform == "win32" else "medsynth")
        (tmp / "empty").mkdir()
        frozen_env = {"PATH": str(tmp / "empty"), "HOME": str(tmp), "LANG": "C.UTF-8"}
        if sys.platform == "win32":
            frozen_env.update({k: os.environ[k] for k in ("SYSTEMROOT", "TEMP", "TMP") if k in os.environ})
        venv_exe = shutil.which("medsynth", path=str(Path(sys.executable).parent)) or "medsynth"
        for label, argv in (("help", ["--help"]), ("version", ["--version"])):
            fr = _startup([str(exe), *argv], frozen_env, tmp, args.repeat)
            py = _startup([venv_exe, *argv], None, tmp, args.repeat)
            out[f"{label}_frozen"] = fr
            out[f"{label}_venv"] = py
            out[f"{label}_ratio_frozen_over_venv"] = round(fr["median_s"] / py["median_s"], 2)
        if not args.no_generate:
            gen = ["generate", "--modality", "ct-pelvis", "--seed", "1", "--threads", "2"]
            fr_s = _timed([str(exe), *gen, "-o", "g_frozen"], frozen_env, tmp)
            py_s = _timed([venv_exe, *gen, "-o", "g_venv"], None, tmp)
            out["generate_frozen_s"] = round(fr_s, 1)
            out["generate_venv_s"] = round(py_s, 1)
            out["generate_ratio_frozen_over_venv"] = round(fr_s / py_s, 2)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
