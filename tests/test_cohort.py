"""``generate --cohort FILE``: a slice of the committed hospital cohort (CT, MR and X-ray patients,
priors and currents, multi-series studies, catalogue headers, accented names) generates as planned,
passes dciodvfy in every transfer syntax and pushes into a real Orthanc whose REST and QIDO-RS answers
show the planned patients, studies, series and descriptions; cohorts are reproducible; bad cohort
files get one-line errors.

The slice size is a parameter: ``MEDSYNTH_COHORT_TEST_PATIENTS`` (default 3: the first three patients
of the 50, who between them have CT, MR and X-ray studies, priors and currents). The full 50 are run by
hand and timed in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.cohort import Cohort, generate_cohort, load_cohort
from test_writer import dciodvfy

REPO = Path(__file__).resolve().parents[1]
HOSPITAL = REPO / "examples" / "cohort_hospital.toml"
SMALL = REPO / "examples" / "cohort_small.toml"
PATIENTS = int(os.environ.get("MEDSYNTH_COHORT_TEST_PATIENTS", "3"))
SYNTAXES = ["implicit", "rle", "jpeg-ls", "jpeg2000", "jpeg2000-lossy"]


def hospital_slice(patients: int, slices: int = 4) -> Cohort:
    """The hospital file cut for a test: its first ``patients`` patients, at most ``slices`` slices
    per volume and one denoising step (the plan of those patients is the full file's)."""
    cohort = load_cohort(HOSPITAL)
    studies = tuple(dataclasses.replace(s, slices=min(s.slices, slices)) for s in cohort.studies)
    return dataclasses.replace(cohort, patients=patients, steps=1, studies=studies)


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cohort = hospital_slice(PATIENTS)
    out = tmp_path_factory.mktemp("hospital") / "out"
    summary = generate_cohort(cohort, out, threads=1)
    return out, summary


def _series_files(out: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its files, over every preset folder."""
    found: dict[str, list[Path]] = {}
    for f in sorted(out.rglob("IM*")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        found.setdefault(str(ds.SeriesInstanceUID), []).append(f)
    return found


def test_hospital_slice_is_the_planned_archive(hospital: tuple[Path, dict[str, Any]]) -> None:
    out, summary = hospital
    assert summary["patients"] == PATIENTS and json.loads((out / "cohort.json").read_text()) == summary
    presets = Counter(st["preset"] for p in summary["patient_list"] for st in p["studies"])
    assert {k.split("-")[0] for k in presets} == {"ct", "mr", "xr"}, presets  # mixed CT/MR/X-ray
    assert any(len(p["studies"]) > 1 for p in summary["patient_list"])  # priors and currents
    by_series = _series_files(out)
    assert sum(len(v) for v in by_series.values()) == summary["files"]
    first = {uid: pydicom.dcmread(files[0]) for uid, files in by_series.items()}
    for patient in summary["patient_list"]:
        dates = [st["date"] for st in patient["studies"]]
        assert dates == sorted(dates)
        for st in patient["studies"]:
            series = [d for d in first.values() if d.StudyInstanceUID == st["study_instance_uid"]]
            assert len(series) == len(st["series"]) > 0
            assert {d.PatientID for d in series} == {patient["patient_id"]}  # one identity across folders
            assert {str(d.PatientName) for d in series} == {patient["name"]}
            assert {d.StationName for d in series} == {st["station"]} and len({d.FrameOfReferenceUID
                                                                             for d in series if "FrameOfReferenceUID" in d}) <= 1
            got = sorted((d.SeriesDescription, len(by_series[str(d.SeriesInstanceUID)])) for d in series)
            assert got == sorted((s["description"], s["instances"]) for s in st["series"])
            kinds = [s["kind"] for s in st["series"]]
            if st["preset"].startswith("ct-"):
                assert kinds == ["localizer", "axial", "sharp", "coronal", "sagittal"]
                types = {d.SeriesDescription: list(d.ImageType) for d in series}
                kernels = {s["kind"]: d.get("ConvolutionKernel") for s, d in zip(
                    st["series"], sorted(series, key=lambda d: int(d.SeriesNumber)), strict=True)}
                assert kernels["axial"] != kernels["sharp"] and kernels["coronal"] == kernels["axial"]
                assert sorted(t[2] for t in types.values()) == ["AXIAL", "AXIAL", "LOCALIZER", "REFORMATTED",
                                                               "REFORMATTED"]
                assert all(float(d.CTDIvol) > 0 and int(d.KVP) in (100, 120, 140) for d in series
                           if "LOCALIZER" not in d.ImageType)
            elif st["preset"] == "mr-brain":
                assert sorted(s["condition"] for s in st["series"]) == ["flair", "t1", "t1c", "t2"]
                assert len({d.EchoTime for d in series}) > 1 and {float(d.MagneticFieldStrength) for d in series} <= {1.5, 3.0}
            elif st["preset"] == "xr-chest":
                assert kinds == ["dx"] and series[0].ViewPosition in ("PA", "AP")
    for files in by_series.values():  # every series (its instances differ only in position and pixels)
        errors, _ = dciodvfy(files[0])
        assert errors == [], (files[0], errors)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_every_transfer_syntax_passes_dciodvfy(hospital: tuple[Path, dict[str, Any]], tmp_path: Path,
                                               syntax: str) -> None:
    """One patient with a CT and an X-ray study (types of the hospital file) in each other transfer
    syntax, every series checked."""
    base = hospital_slice(1, slices=2)
    keep = tuple(dataclasses.replace(s, studies=1) for s in base.studies if s.preset in ("ct-chest", "xr-chest")
                 and s.condition is None)
    cohort = dataclasses.replace(base, studies=keep, types_per_patient=((2, 1.0),), transfer_syntax=syntax)
    out = tmp_path / syntax
    summary = generate_cohort(cohort, out, threads=1)
    by_series = _series_files(out)
    assert len(by_series) == summary["series"] == 6
    for files in by_series.values():
        ds = pydicom.dcmread(files[0])
        assert ds.file_meta.TransferSyntaxUID == json.loads(
            (files[0].parents[3] / "manifest.json").read_text())["transfer_syntax"]["uid"]
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)  # decodes
        errors, _ = dciodvfy(files[0])
        assert errors == [], (files[0], errors)


def test_cohort_is_reproducible(tmp_path: Path) -> None:
    """Same file, same cohort, byte for byte (through the CLI)."""
    path = tmp_path / "tiny.toml"
    path.write_text('seed = 5\npatients = 2\nsteps = 1\nnames = "international"\n[[study]]\npreset = "ct-chest"\n'
                    'slices = 2\n[[study]]\npreset = "xr-chest"\n', encoding="utf-8")
    digests = []
    for name in ("a", "b"):
        code, text = run("generate", "--cohort", str(path), "-o", str(tmp_path / name), "--threads", "1", "--json")
        assert code == 0, text
        digests.append({p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]


@pytest.mark.parametrize(("text", "message"), [
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"ct-knee\"\n", "[[study]] 1"),
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"mr-brain\"\ncondition = \"dwi\"\n", "unknown condition 'dwi'"),
    ("seed = 1\npatients = 2\n[[study]]\npreset = \"ct-chest\"\nweight = -1\n", "weight must be a number >= 0"),
    ("seed = 1\npatients = 2\nnames = \"klingon\"\n[[study]]\npreset = \"ct-chest\"\n", "names must be one of"),
    ("seed = 1\npatients = 2\ntypes_per_patient = [[3, 1]]\n[[study]]\npreset = \"ct-chest\"\n",
     "types_per_patient count must be an integer 1..1"),
    ("seed = 1\npatients = 2\ntransfer_syntax = \"jpeg-baseline\"\n[[study]]\npreset = \"ct-chest\"\n", "needs 8-bit"),
    ("seed = 1\npatients = 2\nuid_root = \"1.02.x\"\n[[study]]\npreset = \"ct-chest\"\n", "not a valid UID prefix"),
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
    code, output = run("generate", "--cohort", str(SMALL), "-m", "ct-chest", "-o", str(tmp_path / "o"))
    assert code != 0 and "--modality cannot be combined with --cohort" in output


def test_hospital_slice_pushes_into_orthanc(hospital: tuple[Path, dict[str, Any]],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """`medsynth push OUT` sends every folder; Orthanc's REST and QIDO-RS answers show the planned
    patients (accented names stored as written), studies, series counts and descriptions."""
    from _orthanc import start_orthanc

    out, summary = hospital
    try:
        pacs = start_orthanc(tmp_path_factory.mktemp("orthanc-cohort"), aet="COHORTPACS", dicomweb=True)
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        code, text = run("push", str(out), "--host", "127.0.0.1", "--port", str(pacs.dicom_port),
                         "--called-aet", pacs.aet, "--timeout", "10", "--no-progress", "--json",
                         "--associations", "2")
        assert code == 0, text
        patients = pacs.get_json("/patients?expand")
        assert sorted(p["MainDicomTags"]["PatientID"] for p in patients) == sorted(
            p["patient_id"] for p in summary["patient_list"])
        names = {p["MainDicomTags"]["PatientID"]: p["MainDicomTags"]["PatientName"] for p in patients}
        assert any(not n.isascii() for n in names.values())
        assert len(pacs.get_json("/studies")) == summary["studies"]
        assert len(pacs.get_json("/series")) == summary["series"]
        assert len(pacs.get_json("/instances")) == summary["files"]
        for patient in summary["patient_list"]:
            assert names[patient["patient_id"]] == patient["name"]
            for st in patient["studies"]:
                qido = pacs.get_json(f"/dicom-web/studies/{st['study_instance_uid']}/series")
                got = sorted(s["0008103E"]["Value"][0] for s in qido)
                assert got == sorted(s["description"] for s in st["series"])
        mr = pacs.get_json("/dicom-web/studies?ModalitiesInStudy=MR")
        assert len(mr) == sum(st["preset"].startswith("mr-") for p in summary["patient_list"] for st in p["studies"])
    finally:
        pacs.stop()
