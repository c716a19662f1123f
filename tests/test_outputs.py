"""Crash safety and --force: atomic writes, the run journal after SIGKILL, removal of every file of a
previous medsynth run (listed or not), stale previews."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.writer import WriterOptions, write_volume
from medsynth.errors import OutputError
from medsynth.outputs import JOURNAL_NAME, atomic_write, read_run_manifest, remove_previous_run
from medsynth.presets import get_preset

_SLOW_WRITER = """
import sys, time, numpy as np
from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.writer import SyntheticStudyWriter, WriterOptions
from medsynth.presets import get_preset
preset = get_preset("ct-pelvis")
with SyntheticStudyWriter(sys.argv[1], preset, WriterOptions(seed=1)) as w:
    w.begin_series(VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 2000), (8, 8))
    for k in range(2000):
        w.write_slice(k, np.full((8, 8), float(k % 500)))
        time.sleep(0.02)
"""


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_sigkill_leaves_a_journal_of_complete_files_and_force_removes_them(tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)])
    try:
        for _ in range(600):  # wait (at most a minute) for a few files to land
            if (out / JOURNAL_NAME).is_file() and len((out / JOURNAL_NAME).read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL (TerminateProcess on Windows): no Python cleanup runs
        proc.wait(timeout=30)
    manifest = read_run_manifest(out)
    assert manifest is not None and manifest["complete"] is False
    listed = {f["path"] for f in manifest["files"]}
    images = {f for f in _files(out) if "/IM" in f and not f.rsplit("/", 1)[-1].startswith(".")}
    assert len(listed) >= 5 and listed == images  # every complete file is listed, nothing else
    for rel in listed:
        assert pydicom.dcmread(out / rel).pixel_array.shape == (8, 8)
    # --force into the killed run's folder: none of its files survive beside the new series
    (out / "mine.txt").write_text("user file")
    new = write_volume(np.zeros((2, 8, 8)), VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 2), get_preset("ct-pelvis"),
                       out, WriterOptions(seed=2), force=True)
    assert _files(out) == {f["path"] for f in new["files"]} | {"DICOMDIR", "manifest.json", "mine.txt"}


def test_force_removes_unlisted_medsynth_files_but_never_the_users(tmp_path: Path) -> None:
    out = tmp_path / "o"
    geom = VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 3)
    write_volume(np.zeros((3, 8, 8)), geom, get_preset("ct-chest"), out, WriterOptions(patients=2, seed=1))
    (out / "manifest.json").unlink()  # an old run whose manifest is gone
    foreign = out / "PT000000" / "ST000000" / "SE000000" / "IM000099"
    foreign.write_bytes(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes())  # someone else's DICOM
    (out / "notes.txt").write_text("mine")
    (out / "preview.png").write_bytes(b"old preview")
    removed = remove_previous_run(out)
    assert len([r for r in removed if "/IM" in r]) == 6 and "preview.png" in removed
    assert _files(out) == {"notes.txt", "PT000000/ST000000/SE000000/IM000099"}
    assert not (out / "PT000001").exists()


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.nii.gz"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        atomic_write(target, broken)
    assert list((tmp_path / "sub").iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_bytes(b"ok"))
    assert target.read_bytes() == b"ok" and [p.name for p in target.parent.iterdir()] == ["x.nii.gz"]


def test_generate_png_force_drops_stale_preview_and_old_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from _packs import make_tiny_pack
    from medsynth.cli.main import cli

    make_tiny_pack(tmp_path / "pack", size=16, default_steps=2)
    out = tmp_path / "out"
    base = ["generate", "-m", "ct-pelvis", "--model", str(tmp_path / "pack"), "-o", str(out), "--format", "png",
            "--seed", "1"]
    res = CliRunner().invoke(cli, [*base, "--slices", "4", "--preview"])
    assert res.exit_code == 0, res.output
    assert (out / "preview.png").is_file() and len(list(out.rglob("IM*.png"))) == 4
    res = CliRunner().invoke(cli, [*base, "--slices", "2", "--force"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert _files(out) == {f["path"] for f in manifest["files"]} | {"manifest.json"}  # no stale preview
    assert not (out / JOURNAL_NAME).exists()
