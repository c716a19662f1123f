"""``generate --cohort FILE``: the committed example cohort generates (patients, sexes, ages and the
study mix as planned, dciodvfy 0 errors), is reproducible, and bad cohort files get one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.cohort import load_cohort, plan_cohort
from test_writer import dciodvfy

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cohort_small.toml"


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def cohort_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "out"
    code, text = run("generate", "--cohort", str(EXAMPLE), "-o", str(out), "--threads", "1", "--json")
    assert code == 0, text
    return out


def test_example_cohort_generates_as_planned(cohort_out: Path) -> None:
    cohort = load_cohort(EXAMPLE)
    groups = plan_cohort(cohort)
    summary = json.loads((cohort_out / "cohort.json").read_text())
    assert summary["patients"] == cohort.patients == sum(g.patients for g in groups)
    assert {g["preset"] for g in summary["groups"]} == {"ct-chest", "mr-brain", "xr-chest"}
    patient_ids: set[str] = set()
    for g, planned in zip(summary["groups"], groups, strict=True):
        files = sorted(p for p in (cohort_out / g["folder"]).rglob("IM*") if p.is_file())
        assert len(files) == g["files"] > 0
        dsets = [pydicom.dcmread(f) for f in files]
        assert {d.PatientSex for d in dsets} == {planned.sex}
        ids = {d.PatientID for d in dsets}
        assert len(ids) == planned.patients and not ids & patient_ids  # no PatientID shared across groups
        patient_ids |= ids
        for d in dsets:
            assert str(d.PatientName).startswith("COHORT^") and d.PatientID.startswith("CH")
            assert "20210101" <= d.StudyDate <= "20240630"
        ages = {int(d.PatientAge[:3]) for d in dsets if g["studies_per_patient"] == 1}
        assert all(planned.age.min <= a <= planned.age.max for a in ages)
        if g["preset"] == "mr-brain":
            assert len({d.StudyInstanceUID for d in dsets}) == 2 * planned.patients  # prior + current
            assert all("FLAIR" in d.SeriesDescription.upper() for d in dsets)
        for f in files:
            errors, _ = dciodvfy(f)
            assert errors == [], (f, errors)


def test_cohort_is_reproducible(tmp_path: Path) -> None:
    """Same file, same cohort, byte for byte; groups of one preset never share pixels."""
    path = tmp_path / "tiny.toml"
    path.write_text('seed = 5\npatients = 4\nsteps = 2\n[sex]\nF = 1\nM = 1\n[[study]]\npreset = "ct-chest"\n'
                    'slices = 2\n', encoding="utf-8")
    digests = []
    for name in ("a", "b"):
        code, text = run("generate", "--cohort", str(path), "-o", str(tmp_path / name), "--threads", "1")
        assert code == 0, text
        digests.append({p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("IM*"))})
    assert digests[0] == digests[1]
    groups = json.loads((tmp_path / "a" / "cohort.json").read_text())["groups"]
    assert len(groups) == 2  # F and M
    first = [pydicom.dcmread(tmp_path / "a" / g["folder"] / "PT000000" / "ST000000" / "SE000000" / "IM000000")
             for g in groups]
    assert first[0].PixelData != first[1].PixelData


@pytest.mark.parametrize(("text", "message"), [
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"ct-knee\"\n", "[[study]] 1"),
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"mr-brain\"\ncondition = \"dwi\"\n", "unknown condition 'dwi'"),
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"ct-chest\"\nweight = -1\n", "weight must be a number >= 0"),
    ("seed = 1\npatients = 2\ncolour = 3\n[[study]]\npreset = \"ct-chest\"\n", "unknown key 'colour'"),
    ("seed = 1\npatients = 0\n[[study]]\npreset = \"ct-chest\"\n", "patients must be an integer 1..10000"),
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"ct-chest\"\n[[age]]\nmin = 70\nmax = 20\n", "min 70 > max 20"),
    ("seed = 1\npatients = 2\n[sex]\nX = 1\n[[study]]\npreset = \"ct-chest\"\n", "unknown key 'X' in [sex]"),
    ("seed = 1\npatients = \n", "not valid TOML"),
    ("patients = 2\n[[study]]\npreset = \"ct-chest\"\n", "needs seed, patients"),
])
def test_bad_cohort_files_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code, output = run("generate", "--cohort", str(path), "-o", str(out))
    assert code != 0 and message in output and "bad.toml" in output, output
    assert "Traceback" not in output and not out.exists()


def test_cohort_refuses_options_it_sets(tmp_path: Path) -> None:
    code, output = run("generate", "--cohort", str(EXAMPLE), "-m", "ct-chest", "-o", str(tmp_path / "o"))
    assert code != 0 and "--modality cannot be combined with --cohort" in output


def test_example_cohort_pushes_into_orthanc(cohort_out: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`medsynth push OUT` sends every group; Orthanc's REST and QIDO-RS answers show the cohort."""
    from _orthanc import start_orthanc

    try:
        pacs = start_orthanc(tmp_path_factory.mktemp("orthanc-cohort"), aet="COHORTPACS", dicomweb=True)
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        code, text = run("push", str(cohort_out), "--host", "127.0.0.1", "--port", str(pacs.dicom_port),
                         "--called-aet", pacs.aet, "--timeout", "10", "--no-progress", "--json")
        assert code == 0, text
        summary = json.loads((cohort_out / "cohort.json").read_text())
        assert len(pacs.get_json("/patients")) == summary["patients"]
        assert len(pacs.get_json("/studies")) == summary["studies"]
        assert len(pacs.get_json("/instances")) == summary["files"]
        qido = pacs.get_json("/dicom-web/studies?ModalitiesInStudy=MR")
        mr_studies = sum(g["patients"] * g["studies_per_patient"] for g in summary["groups"] if g["preset"] == "mr-brain")
        assert len(qido) == mr_studies
    finally:
        pacs.stop()
