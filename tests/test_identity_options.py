"""``generate`` takes the identity options of ``to-dicom`` (--uid-root, --name-prefix, --id-prefix, --sex,
--age, --study-dates) and --no-progress; bad values get one-line errors before anything is sampled."""

from __future__ import annotations

from pathlib import Path

import pydicom
from click.testing import CliRunner

from medsynth.cli.main import cli

ROOT = "1.2.826.0.1.3680043.10.999"


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_generate_uses_the_identity_options(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run("generate", "-m", "mr-brain", "--patients", "3", "--slices", "2", "--steps", "1", "--threads", "1",
                     "--sex", "F", "--age", "40-60", "--study-dates", "2023-01-01:2023-12-31", "--name-prefix",
                     "TESTPAT", "--id-prefix", "TP", "--uid-root", ROOT, "--no-progress", "-o", str(out))
    assert code == 0, text
    assert "slices" not in text.split("medsynth generate")[0]  # no progress bar before the summary table
    files = sorted(out.rglob("IM*"))
    assert len(files) == 6
    for f in files:
        ds = pydicom.dcmread(f)
        assert str(ds.PatientName).startswith("TESTPAT^") and ds.PatientID.startswith("TP")
        assert ds.AccessionNumber.startswith("TP") and ds.PatientSex == "F"
        assert "20230101" <= ds.StudyDate <= "20231231"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith(ROOT + ".")
    ages = {int(pydicom.dcmread(f).PatientAge[:3]) for f in files}
    assert all(40 <= a <= 61 for a in ages)


def test_bad_identity_options_are_refused(tmp_path: Path) -> None:
    for args, message in ((["--name-prefix", "A^B"], "no '^'"), (["--age", "old"], "--age 'old'"),
                          (["--study-dates", "2023-13-01"], "--study-dates"), (["--uid-root", "1.02.x"], "not a valid UID")):
        out = tmp_path / "o"
        code, text = run("generate", "-m", "ct-chest", "--slices", "1", "-o", str(out), *args)
        assert code != 0 and message in text and "Traceback" not in text, (args, text)
        assert not out.exists()


def test_identity_options_are_refused_with_a_cohort(tmp_path: Path) -> None:
    cohort = Path(__file__).resolve().parents[1] / "examples" / "cohort_small.toml"
    code, text = run("generate", "--cohort", str(cohort), "--sex", "F", "-o", str(tmp_path / "o"))
    assert code != 0 and "--sex cannot be combined with --cohort" in text
