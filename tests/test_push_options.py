"""`medsynth push` output: the resume hint when a PACS may have lost what it acknowledged, whole file
names in the failure table, and no CLI import from the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.writer import Provenance, WriterOptions, write_volume
from medsynth.presets import get_preset
from medsynth.push.model import InstanceResult, InstanceStatus, PushReport
from medsynth.push.options import print_report


def test_resume_after_the_pacs_lost_the_study_gives_a_hint(tmp_path: Path) -> None:
    from _orthanc import start_orthanc

    out = tmp_path / "study"
    write_volume(np.zeros((3, 8, 8)), VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 3), get_preset("ct-chest"), out,
                 WriterOptions(seed=1), Provenance(model_id="ct-body"))
    try:
        pacs = start_orthanc(tmp_path / "orthanc")
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        args = ["push", str(out), "--host", "127.0.0.1", "--port", str(pacs.dicom_port), "--called-aet", pacs.aet,
                "--timeout", "10", "--no-progress"]
        assert CliRunner().invoke(cli, args).exit_code == 0
        pacs.clear()  # the PACS loses the study
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0 and "--no-resume" in " ".join(res.output.split())
        assert "3 instances were not sent again" in " ".join(res.output.split())
        assert pacs.get_json("/instances") == []  # resume trusted its state: nothing was sent
        res = CliRunner().invoke(cli, [*args, "--no-resume"])
        assert res.exit_code == 0 and len(pacs.get_json("/instances")) == 3
    finally:
        pacs.stop()


def test_failure_table_shows_whole_file_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    names = [f"PT000000/ST000000/SE000000/IM{i:06d}" for i in (12, 345)]
    report = PushReport(folder="f", destination="dicom://X@h:1", protocol="c-store", finished=1.0, instances=[
        InstanceResult(n, "1.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", InstanceStatus.FAILED, 0xA701,
                       "0xA701 Refused: Out of Resources - a long reason that needs more than one line") for n in names])
    report.started = 0.0
    print_report(report)
    text = capsys.readouterr().out
    for n in names:
        assert n in text, text


def test_push_library_never_imports_the_cli() -> None:
    code = ("import sys; import medsynth.push.options, medsynth.push.runner; "
            "sys.exit(any(m.startswith('medsynth.cli') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
