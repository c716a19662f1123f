"""The standalone build (packaging/freeze): build the archive, unpack it, run it with no Python on PATH.

The module builds the archive once with ``packaging/freeze/build.py`` (about 2 minutes on the 2-core CI
machine; set MEDSYNTH_FREEZE_CACHE=DIR to reuse an archive built from identical inputs while iterating),
verifies its .sha256 file, unpacks it like a user would and then runs only the frozen executable, in an
environment whose PATH is an empty folder: generate (its DICOM checked with dciodvfy, its pixels compared
with the Python package's), push to a real Orthanc, prepare a JPEG 2000 DICOM series (pylibjpeg plugins
found through package metadata), to-dicom on a NIfTI (SimpleITK) and evaluate (scipy).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from _orthanc import Orthanc, find_orthanc, start_orthanc
from conftest import REPO
from medsynth import __version__
from medsynth.cli.main import COMMANDS, cli

BUILD = REPO / "packaging" / "freeze" / "build.py"
DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
GENERATE = ("generate", "--modality", "ct-pelvis", "--slices", "4", "--seed", "3", "--threads", "1",
            "--reproducible-uids", "--json")


@dataclass(frozen=True)
class Frozen:
    """The unpacked standalone build and a Python-free environment to run it in."""

    exe: Path
    root: Path
    archive_names: tuple[str, ...]
    env: dict[str, str]

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.exe), *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Frozen:
    if importlib.util.find_spec("PyInstaller") is None:
        if os.environ.get("CI"):
            pytest.fail("PyInstaller is missing from the test environment (it is in the test extra)")
        pytest.skip("PyInstaller is not installed: pip install -e '.[freeze]'")
    dist = tmp_path_factory.mktemp("freeze-dist")
    cmd = [sys.executable, str(BUILD), "--dist", str(dist), "--json"]
    if os.environ.get("MEDSYNTH_FREEZE_CACHE"):
        cmd += ["--cache", os.environ["MEDSYNTH_FREEZE_CACHE"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout)
    archive, sha_file = Path(result["archive"]), Path(result["sha256_file"])
    # the checksum file is in `sha256sum -c` format and matches the archive
    digest, name = sha_file.read_text(encoding="utf-8").split()
    assert name == archive.name and digest == _sha256(archive) == result["sha256"]
    root = tmp_path_factory.mktemp("unpacked")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            names = tuple(z.namelist())
            z.extractall(root)
    else:
        assert archive.name.endswith(".tar.gz")
        with tarfile.open(archive) as tar:
            names = tuple(tar.getnames())
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="tar")
            else:  # Python < 3.10.12
                tar.extractall(root)
    tops = {n.split("/", 1)[0] for n in names}
    assert len(tops) == 1, tops
    top = root / tops.pop()
    exe = top / ("medsynth.exe" if sys.platform == "win32" else "medsynth")
    assert exe.is_file() and os.access(exe, os.X_OK)
    home = tmp_path_factory.mktemp("home")
    (home / "bin").mkdir()
    env = {"PATH": str(home / "bin"), "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if sys.platform == "win32":
        env.update({k: os.environ[k] for k in ("SYSTEMROOT", "TEMP", "TMP", "USERPROFILE") if k in os.environ})
        env["PATH"] += os.pathsep + os.path.join(env.get("SYSTEMROOT", r"C:\Windows"), "System32")
    for python in ("python", "python3", f"python3.{sys.version_info.minor}"):
        assert shutil.which(python, path=env["PATH"]) is None
    return Frozen(exe, top, names, env)


@pytest.fixture(scope="module")
def generated(frozen: Frozen, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`medsynth generate --modality ct-pelvis` by the frozen executable (4 slices of the default pack, the
    bundled 512² ct-body-512: its environment has no $MEDSYNTH_MODEL_DIR stand-in)."""
    work = tmp_path_factory.mktemp("frozen-generate")
    proc = frozen.run(*GENERATE, "-o", "out", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["model_id"], summary["files"], summary["provider"]) == ("ct-body-512", 4, "CPUExecutionProvider")
    return work / "out"


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    if proc.returncode != 0 and not errors:
        raise AssertionError(f"dciodvfy failed without an error line: {lines[:5]}")
    return errors


def test_archive_holds_every_bundled_pack_and_no_torch(frozen: Frozen) -> None:
    packs = REPO / "src" / "medsynth" / "packs"
    sources = sorted(p for p in packs.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert any(p.name == "pack.json" for p in sources)
    for src in sources:  # collected by pattern: every file of every pack, byte for byte
        frozen_copy = frozen.root / "_internal" / "medsynth" / "packs" / src.relative_to(packs)
        assert frozen_copy.is_file(), src
        assert _sha256(frozen_copy) == _sha256(src), src
    internal = [n.split("/")[2] for n in frozen.archive_names if n.count("/") >= 2 and n.split("/")[1] == "_internal"]
    assert not {"torch", "monai", "onnx"} & set(internal)
    assert "onnxruntime" in internal and "SimpleITK" in internal and "scipy" in internal


def test_frozen_cli_version_help_and_torch_commands(frozen: Frozen, tmp_path: Path) -> None:
    proc = frozen.run("--version", cwd=tmp_path)
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = frozen.run("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "generate" in proc.stdout and "push" in proc.stdout
    product = ("generate", "to-dicom", "push", "models", "prepare", "evaluate")
    for name in sorted(set(COMMANDS) | set(product)):
        proc = frozen.run(name, "--help", cwd=tmp_path)
        if name in product or proc.returncode == 0:
            assert proc.returncode == 0 and f"medsynth {name}" in proc.stdout, (name, proc.stdout + proc.stderr)
        else:  # a training command whose module needs torch even for --help: one clean line
            assert proc.returncode == 2 and "torch" in proc.stderr, (name, proc.stderr)
            assert "Traceback" not in proc.stderr
    proc = frozen.run("models", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bundled = {p.parent.name for p in (REPO / "src" / "medsynth" / "packs").glob("*/pack.json")}
    assert bundled <= set(proc.stdout.replace('"', " ").split())
    # train needs torch, which the build leaves out: one line, exit 2, no traceback, nothing written
    (tmp_path / "data").mkdir()
    proc = frozen.run("train", "data", "-o", "runs/x", cwd=tmp_path)
    assert proc.returncode == 2 and "torch" in proc.stderr and "medsynth[train]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_frozen_generate_passes_dciodvfy_and_matches_the_python_package(generated: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSYNTH_MODEL_DIR")  # the package's real default, as the frozen build has it
    manifest = json.loads((generated / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] and len(manifest["files"]) == 4
    files = sorted(generated / f["path"] for f in manifest["files"])
    for f in [*files, generated / "DICOMDIR"]:
        assert dciodvfy_errors(f) == [], f
    frozen_ds = [pydicom.dcmread(f) for f in files]
    assert all(ds.SyntheticData == "YES" and ds.Modality == "CT" for ds in frozen_ds)
    # the same command through the Python package: same UIDs and pixels (same seed, threads, onnxruntime)
    res = CliRunner().invoke(cli, [*GENERATE, "-o", str(tmp_path / "py")])
    assert res.exit_code == 0, res.output
    py_files = sorted(tmp_path / "py" / f["path"] for f in json.loads((tmp_path / "py" / "manifest.json").read_text())["files"])
    py_ds = [pydicom.dcmread(f) for f in py_files]
    assert [d.SOPInstanceUID for d in frozen_ds] == [d.SOPInstanceUID for d in py_ds]
    diff = np.abs(np.stack([d.pixel_array.astype(int) for d in frozen_ds]) - np.stack([d.pixel_array.astype(int) for d in py_ds]))
    assert diff.max() <= 1
    assert np.stack([d.pixel_array for d in frozen_ds]).std() > 10


@pytest.fixture
def orthanc_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc): frozen push not tested")
    o = start_orthanc(tmp_path / "orthanc", aet="FROZENPACS", check_called_aet=True)
    yield o
    o.stop()


def test_frozen_push_to_orthanc(frozen: Frozen, generated: Path, orthanc_pacs: Orthanc, tmp_path: Path) -> None:
    proc = frozen.run("push", str(generated), "--host", "127.0.0.1", "--port", str(orthanc_pacs.dicom_port),
                      "--called-aet", "FROZENPACS", "--state", str(tmp_path / "state.json"),
                      "--report", str(tmp_path / "push.json"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "push.json").read_text())["ok"] is True
    manifest = json.loads((generated / "manifest.json").read_text(encoding="utf-8"))
    assert set(orthanc_pacs.instance_uids()) == {f["sop_instance_uid"] for f in manifest["files"]}


def test_frozen_prepare_jpeg2000_to_dicom_nifti_and_evaluate(frozen: Frozen, generated: Path, shared_data: Path,
                                                            tmp_path: Path) -> None:
    # JPEG 2000 lossless DICOM: pydicom decodes it through pylibjpeg-openjpeg, found via its entry points
    # (on the default pack's grid, 512² at 0.8 mm, so evaluate can compare it with `generated`)
    proc = frozen.run("prepare", str(shared_data / "ct" / "upper_abdomen_dicom"), "--modality", "ct-pelvis",
                      "--matrix", "512", "--pixel-spacing", "0.8", "-o", "ds", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files_read"] == 20 and summary["skipped"] == [] and summary["slices_kept"] > 0
    slices = np.load(tmp_path / "ds" / "slices.npy")
    assert slices.shape[1:] == (512, 512) and slices.std() > 0.05
    # NIfTI through SimpleITK
    proc = frozen.run("to-dicom", str(shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz"), "--modality",
                      "ct-pelvis", "-o", "vol", "--seed", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = json.loads((tmp_path / "vol" / "manifest.json").read_text())["files"][0]["path"]
    assert dciodvfy_errors(tmp_path / "vol" / first) == []
    # evaluate needs scipy (chi-square test, Fréchet distance)
    proc = frozen.run("evaluate", "--real", "ds", "--synthetic", str(generated), "-o", "report", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert 0.0 <= report["metrics"]["intensity"]["chi2_test"]["synthetic"]["p_value"] <= 1.0
    assert np.isfinite(report["metrics"]["frechet"]["synthetic"])
    assert (tmp_path / "report" / "report.html").is_file()
