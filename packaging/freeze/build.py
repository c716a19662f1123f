"""Build the standalone medsynth: one folder (PyInstaller), archived, with a sha256 file.

    python packaging/freeze/build.py                       # -> dist/medsynth-<version>-<platform>.tar.gz (.zip on Windows)
    python packaging/freeze/build.py --dist out/ --json    # summary (paths, sizes, seconds, build key) as JSON
    python packaging/freeze/build.py --cache ~/.cache/medsynth/freeze   # reuse an archive built from the same inputs

Needs the product's extras in the build environment: ``pip install -e '.[cpu,eval,freeze]'`` (torch may be
installed too; the spec leaves it out). Steps: check the environment (PyInstaller, onnxruntime — the CPU
package, not onnxruntime-gpu —, scipy, SimpleITK, pydicom and the pylibjpeg plugins), run PyInstaller on
``medsynth.spec``, check the folder (every bundled pack's pack.json, onnxruntime's libraries, no torch, and
on Windows the VC++ runtime DLLs), run the frozen ``medsynth --version`` with no Python on PATH, write a
deterministic archive (sorted entries, fixed timestamps and owners) and ``<archive>.sha256`` in
``sha256sum`` format, and ``build.json`` with the build key and the versions of everything bundled.

The build key is a sha256 of the sources (src/medsynth/**, this folder, pyproject.toml), the Python version,
the platform and every installed distribution's version; with ``--cache DIR`` an archive under
``DIR/<key>/`` is reused (its checksum verified) instead of building again, and the newest few are kept.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPEC = HERE / "medsynth.spec"
#: a fixed timestamp for every archive entry (2020-01-01T00:00:00Z), so equal folders give equal archives
EPOCH = 1577836800
#: modules the frozen product needs; the build refuses to start without them
REQUIRED_MODULES = ("PyInstaller", "medsynth", "onnxruntime", "scipy", "SimpleITK", "pydicom", "pynetdicom",
                    "pylibjpeg", "libjpeg", "openjpeg", "rle", "numpy", "PIL", "click", "rich")
#: distributions whose versions build.json records
RECORDED = ("medsynth", "pyinstaller", "pyinstaller-hooks-contrib", "onnxruntime", "scipy", "SimpleITK", "numpy",
            "pydicom", "pynetdicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
            "pillow", "click", "rich")
#: the VC++ runtime DLLs onnxruntime (and CPython) link against; they must travel with the folder
WINDOWS_RUNTIME_DLLS = ("vcruntime140.dll", "vcruntime140_1.dll", "msvcp140.dll")
KEEP_CACHED = 3


class BuildError(Exception):
    """The standalone build cannot be made or failed its checks (one line, shown without traceback)."""


@dataclass(frozen=True)
class BuildResult:
    """What was built: the archive, its checksum file, sizes in bytes and the build's inputs."""

    archive: str
    sha256_file: str
    sha256: str
    archive_bytes: int
    folder_bytes: int
    files: int
    build_seconds: float
    archive_seconds: float
    key: str
    cached: bool
    platform: str
    python: str
    versions: dict[str, str]


def platform_tag() -> str:
    """``linux-x86_64``, ``windows-x86_64``, ``macos-arm64``, ... (the archive's platform)."""
    system = {"Linux": "linux", "Windows": "windows", "Darwin": "macos"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{machine}"


def archive_suffix() -> str:
    return ".zip" if sys.platform == "win32" else ".tar.gz"


def medsynth_version() -> str:
    try:
        return version("medsynth")
    except PackageNotFoundError as err:
        raise BuildError("medsynth is not installed in this environment: pip install -e '.[cpu,eval,freeze]'") from err


def check_environment() -> dict[str, str]:
    """Refuse to build without the product's dependencies; return the versions build.json records."""
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise BuildError(f"missing in this environment: {', '.join(missing)} (pip install -e '.[cpu,eval,freeze]')")
    try:
        version("onnxruntime-gpu")
    except PackageNotFoundError:
        pass
    else:
        raise BuildError("onnxruntime-gpu is installed: the standalone build is for the CPU package onnxruntime")
    found: dict[str, str] = {}
    for name in RECORDED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _source_files() -> Iterator[Path]:
    roots = [REPO / "src" / "medsynth", HERE]
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                yield p
    yield REPO / "pyproject.toml"


def build_key() -> str:
    """sha256 of everything the build depends on: sources, Python, platform, installed distributions."""
    h = hashlib.sha256()
    for p in _source_files():
        h.update(p.relative_to(REPO).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(f"{sys.version}\0{platform_tag()}\0".encode())
    dists = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in distributions()})
    h.update("\n".join(dists).encode())
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_pyinstaller(workdir: Path) -> Path:
    """Run PyInstaller on the spec; return the one-folder output (``workdir/dist/medsynth``)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": str(EPOCH)}
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
           "--distpath", str(workdir / "dist"), "--workpath", str(workdir / "build"), str(SPEC)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildError(f"PyInstaller failed (exit {proc.returncode}):\n{tail}")
    folder = workdir / "dist" / "medsynth"
    if not folder.is_dir():
        raise BuildError(f"PyInstaller wrote no folder {folder}")
    return folder


def executable(folder: Path) -> Path:
    return folder / ("medsynth.exe" if sys.platform == "win32" else "medsynth")


def python_free_env(home: Path) -> dict[str, str]:
    """An environment with no Python on PATH (an empty folder) and no Python variables."""
    empty = home / "empty-path"
    empty.mkdir(parents=True, exist_ok=True)
    env = {"PATH": str(empty), "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    for keep in ("SYSTEMROOT", "SystemRoot", "WINDIR", "TEMP", "TMP", "USERPROFILE", "LOCALAPPDATA", "APPDATA"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    if sys.platform == "win32":  # Windows needs System32 on PATH for its own DLLs; it holds no python.exe
        env["PATH"] = os.pathsep.join([str(empty), os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32")])
    return env


def check_folder(folder: Path, version_expected: str) -> None:
    """The frozen folder holds what the product needs and nothing of torch; its --version runs."""
    internal = folder / "_internal"
    names = {p.name.lower() for p in internal.rglob("*")}
    src_packs = {p.parent.name for p in (REPO / "src" / "medsynth" / "packs").glob("*/pack.json")}
    frozen_packs = {p.parent.name for p in (internal / "medsynth" / "packs").glob("*/pack.json")}
    if src_packs - frozen_packs:
        raise BuildError(f"packs missing from the build: {', '.join(sorted(src_packs - frozen_packs))}")
    for top in ("torch", "monai", "onnx"):
        if (internal / top).exists():
            raise BuildError(f"{top} was collected into the build; it must stay out (see EXCLUDES in medsynth.spec)")
    if not any(n.startswith(("libonnxruntime", "onnxruntime.dll", "onnxruntime_pybind11_state")) for n in names):
        raise BuildError("onnxruntime's shared libraries are missing from the build")
    if not any(p.name.lower().startswith("_simpleitk") for p in (internal / "SimpleITK").glob("*")):
        raise BuildError("SimpleITK's extension module is missing from the build")
    for dist in ("pylibjpeg_libjpeg", "pylibjpeg_openjpeg", "pylibjpeg_rle", "pydicom", "medsynth"):
        if not list(internal.glob(f"{dist}-*.dist-info")):
            raise BuildError(f"{dist}'s metadata is missing (plugins are found through it)")
    if sys.platform == "win32":
        absent = [d for d in WINDOWS_RUNTIME_DLLS if d not in names]
        if absent:
            raise BuildError(f"VC++ runtime DLLs missing from the build: {', '.join(absent)}")
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.run([str(executable(folder)), "--version"], env=python_free_env(Path(home)),
                              capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or version_expected not in proc.stdout:
        raise BuildError(f"the frozen medsynth --version failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-500:]}")


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())


def write_archive(folder: Path, archive: Path, top: str) -> None:
    """Deterministic .tar.gz or .zip of ``folder`` under the top-level name ``top``, written atomically."""
    tmp = archive.with_name(archive.name + ".part")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for p in _entries(folder):
                name = f"{top}/{p.relative_to(folder).as_posix()}"
                info = zipfile.ZipInfo(name + ("/" if p.is_dir() else ""), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = ((0o40755 if p.is_dir() else 0o100755 if os.access(p, os.X_OK) else 0o100644) << 16)
                if p.is_dir():
                    z.writestr(info, b"")
                else:
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with p.open("rb") as src, z.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
    else:
        def normalise(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = EPOCH
            ti.mode = 0o755 if (ti.isdir() or ti.mode & 0o100) else 0o644
            return ti

        with tmp.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder, arcname=top, recursive=False, filter=normalise)
            for p in _entries(folder):
                tar.add(p, arcname=f"{top}/{p.relative_to(folder).as_posix()}", recursive=False, filter=normalise)
    os.replace(tmp, archive)


def write_checksum(archive: Path) -> tuple[Path, str]:
    digest = sha256_of(archive)
    out = archive.with_name(archive.name + ".sha256")
    out.write_text(f"{digest}  {archive.name}\n", encoding="utf-8", newline="\n")
    return out, digest


def verify_checksum(sha_file: Path) -> str:
    """Check ``<archive>.sha256`` against its archive (beside it); return the digest."""
    digest, name = sha_file.read_text(encoding="utf-8").split()
    actual = sha256_of(sha_file.with_name(name.lstrip("*")))
    if actual != digest:
        raise BuildError(f"{sha_file.with_name(name)}: sha256 {actual} does not match {sha_file.name}")
    return digest


def _folder_stats(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]  # a link is stored as a link
    return sum(p.stat().st_size for p in files), len(files)


def _from_cache(entry: Path, dist: Path) -> BuildResult | None:
    meta = entry / "build.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text(encoding="utf-8"))
    archive = entry / Path(data["archive"]).name
    sha_file = entry / Path(data["sha256_file"]).name
    if not (archive.is_file() and sha_file.is_file()):
        return None
    verify_checksum(sha_file)
    dist.mkdir(parents=True, exist_ok=True)
    if dist.resolve() != entry.resolve():
        for f in (archive, sha_file, meta):
            shutil.copy2(f, dist / f.name)
    data.update(archive=str(dist / archive.name), sha256_file=str(dist / sha_file.name), cached=True)
    return BuildResult(**data)


def _store_in_cache(cache: Path, key: str, result: BuildResult, dist: Path) -> None:
    entry = cache / key
    tmp = cache / f".{key}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (Path(result.archive).name, Path(result.sha256_file).name, "build.json"):
        shutil.copy2(dist / name, tmp / name)
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    old = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[KEEP_CACHED:]:
        shutil.rmtree(p, ignore_errors=True)


def build(dist: Path, *, cache: Path | None = None, workdir: Path | None = None, keep_folder: bool = False) -> BuildResult:
    """Build (or take from ``cache``) the archive and its .sha256 into ``dist``; see the module docstring."""
    versions = check_environment()
    ver = medsynth_version()
    key = build_key()
    if cache is not None:
        hit = _from_cache(cache / key, dist)
        if hit is not None:
            return hit
    dist.mkdir(parents=True, exist_ok=True)
    top = f"medsynth-{ver}-{platform_tag()}"
    own_work = workdir is None
    work = Path(tempfile.mkdtemp(prefix="medsynth-freeze-")) if workdir is None else workdir
    try:
        t0 = time.perf_counter()
        folder = run_pyinstaller(work)
        check_folder(folder, ver)
        t1 = time.perf_counter()
        archive = dist / f"{top}{archive_suffix()}"
        write_archive(folder, archive, top)
        sha_file, digest = write_checksum(archive)
        t2 = time.perf_counter()
        folder_bytes, files = _folder_stats(folder)
        if keep_folder:
            target = dist / top
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(folder), target)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    result = BuildResult(archive=str(archive), sha256_file=str(sha_file), sha256=digest,
                         archive_bytes=archive.stat().st_size, folder_bytes=folder_bytes, files=files,
                         build_seconds=round(t1 - t0, 1), archive_seconds=round(t2 - t1, 1), key=key, cached=False,
                         platform=platform_tag(), python=platform.python_version(), versions=versions)
    (dist / "build.json").write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    if cache is not None:
        _store_in_cache(cache, key, result, dist)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the standalone medsynth archive (PyInstaller, one folder).",
                                     epilog="example: python packaging/freeze/build.py --dist dist/ --json")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the archive, .sha256 and build.json go")
    parser.add_argument("--cache", type=Path, help="reuse/store archives under CACHE/<build key>/")
    parser.add_argument("--workdir", type=Path, help="PyInstaller's work folder (default: a temporary one)")
    parser.add_argument("--keep-folder", action="store_true", help="also leave the unpacked folder in --dist")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        result = build(args.dist, cache=args.cache, workdir=args.workdir, keep_folder=args.keep_folder)
    except BuildError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        how = "reused from cache" if result.cached else f"built in {result.build_seconds} s + {result.archive_seconds} s"
        print(f"{result.archive} ({result.archive_bytes / 1e6:.1f} MB; unpacked {result.folder_bytes / 1e6:.1f} MB "
              f"in {result.files} files; {how})\nsha256 {result.sha256}  ({result.sha256_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
