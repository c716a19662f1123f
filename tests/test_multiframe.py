"""``generate --multiframe`` (and ``multiframe = true`` in a cohort): each CT/MR series is ONE Legacy
Converted Enhanced CT/MR object whose frames are the single-frame run's pixels, whose per-frame
functional groups hold the single-frame positions, which passes dciodvfy with 0 errors and keeps the
synthetic markers, de-identification attributes and provenance; manifest and DICOMDIR list it.
(Bundled packs, 1 denoising step, 3–4 slices.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.fileset import FileSet

from medsynth.cli.main import cli
from medsynth.dicom_io.multiframe import LEGACY_CT, LEGACY_MR
from medsynth.dicom_io.provenance import read_private_provenance
from test_writer import dciodvfy


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def _generate(out: Path, preset: str, *extra: str) -> dict:
    code, text = run("generate", "-m", preset, "--slices", "4", "--steps", "1", "--seed", "3", "--reproducible-uids",
                     "--threads", "1", "-o", str(out), "--json", *extra)
    assert code == 0, text
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize(("preset", "syntax", "sop_class"), [("ct-chest", "explicit", LEGACY_CT),
                                                             ("mr-brain", "jpeg-ls", LEGACY_MR)])
def test_multiframe_series_is_one_object_with_the_single_frame_pixels(tmp_path: Path, preset: str, syntax: str,
                                                                      sop_class: str) -> None:
    single = _generate(tmp_path / "single", preset, "--transfer-syntax", syntax)
    multi = _generate(tmp_path / "multi", preset, "--transfer-syntax", syntax, "--multiframe")
    assert len(single["files"]) == 4 and len(multi["files"]) == 1
    rec = multi["files"][0]
    assert rec["sop_class_uid"] == multi["sop_class_uid"] == sop_class and multi["multiframe"] == "legacy-converted-enhanced"
    assert multi["series"][0]["instances"] == 1 and sorted(p.name for p in (tmp_path / "multi").rglob("IM*")) == ["IM000000"]

    path = tmp_path / "multi" / rec["path"]
    errors, _ = dciodvfy(path)
    assert errors == [], errors
    ds = pydicom.dcmread(path)
    frames = [pydicom.dcmread(tmp_path / "single" / f["path"]) for f in single["files"]]
    assert ds.SOPClassUID == sop_class and int(ds.NumberOfFrames) == 4
    assert ds.file_meta.TransferSyntaxUID == frames[0].file_meta.TransferSyntaxUID
    assert np.array_equal(ds.pixel_array, np.stack([f.pixel_array for f in frames]))  # pixels: the same run
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for item, f in zip(per_frame, frames, strict=True):  # headers agree with pixels, frame by frame
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == [float(v) for v in
                                                                                         f.ImagePositionPatient]
        assert item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID == f.SOPInstanceUID
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert list(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == list(frames[0].ImageOrientationPatient)
    assert list(shared.PixelMeasuresSequence[0].PixelSpacing) == list(frames[0].PixelSpacing)
    # synthetic markers, Contributing Equipment, de-identification, provenance are kept
    assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES" and "DeidentificationMethod" in ds
    assert ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    assert read_private_provenance(ds) == read_private_provenance(frames[0])
    assert ds.SeriesInstanceUID != frames[0].SeriesInstanceUID  # another object: other UIDs

    if preset == "ct-chest":  # the reference converter (highdicom, a test dependency) makes the same frames
        from highdicom.legacy import LegacyConvertedEnhancedCTImage

        ref = LegacyConvertedEnhancedCTImage([pydicom.dcmread(tmp_path / "single" / f["path"]) for f in single["files"]],
                                             series_instance_uid=pydicom.uid.generate_uid(), series_number=9,
                                             sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)

        def by_position(d: pydicom.Dataset) -> dict[tuple[float, ...], bytes]:
            return {tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient): frame.tobytes()
                    for item, frame in zip(d.PerFrameFunctionalGroupsSequence, d.pixel_array, strict=True)}

        assert by_position(ref) == by_position(ds)
        assert ref.SOPClassUID == ds.SOPClassUID and ref.ImageType[:2] == ds.ImageType[:2]

    from medsynth.dicom_io.reader import read_images  # medsynth reads it back as the same volume

    back, ref_vol = (read_images([tmp_path / d]).series[0] for d in ("multi", "single"))
    assert np.array_equal(back.voxels, ref_vol.voxels) and back.geometry == ref_vol.geometry

    fs = FileSet(tmp_path / "multi" / "DICOMDIR")  # the DICOMDIR lists the one instance
    [inst] = list(fs)
    assert inst.SOPInstanceUID == ds.SOPInstanceUID and inst.ReferencedSOPClassUIDInFile == sop_class
    errors, _ = dciodvfy(tmp_path / "multi" / "DICOMDIR")
    assert errors == [], errors


def test_multiframe_cohort_and_refusals(tmp_path: Path) -> None:
    """A cohort with ``multiframe = true``: every CT series (localizer, axial, sharp, reformats) one
    object that passes dciodvfy, X-ray single-frame; cohort.json counts one instance of n frames."""
    path = tmp_path / "mf.toml"
    path.write_text('seed = 2\npatients = 1\nsteps = 1\nmultiframe = true\ntypes_per_patient = [[2, 1]]\n'
                    '[[study]]\npreset = "ct-chest"\nslices = 3\n[[study]]\npreset = "xr-chest"\n', encoding="utf-8")
    code, text = run("generate", "--cohort", str(path), "-o", str(tmp_path / "c"), "--threads", "1", "--no-progress")
    assert code == 0, text
    summary = json.loads((tmp_path / "c" / "cohort.json").read_text())
    series = {st["preset"]: st["series"] for st in summary["patient_list"][0]["studies"]}
    assert [s["instances"] for s in series["ct-chest"]] == [1] * 5 and series["ct-chest"][1]["frames"] == 3
    assert summary["files"] == 6 and summary["folders"]["ct-chest"]["files"] == 5
    for f in sorted((tmp_path / "c").rglob("IM*")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPClassUID == (LEGACY_CT if "ct-chest" in f.parts else "1.2.840.10008.5.1.4.1.1.1.1")
        errors, _ = dciodvfy(f)
        assert errors == [], (f, errors)

    base = ("generate", "--steps", "1", "--multiframe", "-o", str(tmp_path / "x"))
    code, text = run(*base, "-m", "xr-chest")
    assert code != 0 and "CT and MR presets" in text and "Traceback" not in text
    code, text = run(*base, "-m", "ct-chest", "--format", "nifti")
    assert code != 0 and "--multiframe needs --format dicom" in text
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = 1\npatients = 1\nmultiframe = "yes"\n[[study]]\npreset = "ct-chest"\n', encoding="utf-8")
    code, text = run("generate", "--cohort", str(bad), "-o", str(tmp_path / "y"))
    assert code != 0 and "multiframe must be true or false" in text
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
