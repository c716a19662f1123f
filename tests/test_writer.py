"""The synthetic DICOM writer: IOD validity (dciodvfy), markers, coherence, safety, reproducibility."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.identity import IdentityOptions, Sex
from medsynth.dicom_io.uids import UidFactory
from medsynth.dicom_io.writer import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PixelEncoding,
    Provenance,
    SyntheticStudyWriter,
    WriterOptions,
    write_volume,
)
from medsynth.errors import ConfigError, DicomWriteError, InputError, OutputError
from medsynth.presets import PRESETS, Modality, get_preset

DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
PROV = Provenance(model_id="ct-body", model_sha256="ab" * 32, seed=11, sampler="ddim", steps=50,
                  guidance=2.5, condition="pelvis")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dciodvfy for one file (which must exist)."""
    assert path.is_file(), path
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    if proc.returncode != 0 and not errors:
        raise AssertionError(f"dciodvfy failed without an error line: {lines[:5]}")
    return errors, warnings


def values(ds: pydicom.Dataset, keyword: str) -> list:
    """A possibly single-valued attribute as a list."""
    v = ds[keyword].value
    return list(v) if ds[keyword].VM > 1 else [v]


def read_all(out: Path, manifest: dict) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(out / f["path"]) for f in manifest["files"]]


def random_volume(preset_name: str, n: int, seed: int = 0) -> tuple[np.ndarray, VolumeGeometry]:
    p = get_preset(preset_name)
    rng = np.random.default_rng(seed)
    vol = rng.uniform(p.intensity.physical_low, p.intensity.physical_high, (n, *p.matrix))
    geom = VolumeGeometry.axial(p.matrix, p.pixel_spacing_mm, p.slice_thickness_mm or 1.0, n)
    return vol, geom


# ------------------------------------------------------------------------------------------------
# IOD validity and markers, every preset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.samples_per_pixel == 1))  # RGB: test_micro
def test_every_preset_is_valid_and_marked(tmp_path: Path, name: str) -> None:
    preset = PRESETS[name]
    vol, geom = random_volume(name, 3)
    prov = dataclasses.replace(PROV, condition=preset.default_condition)
    manifest = write_volume(vol, geom, preset, tmp_path / "out", WriterOptions(seed=5), prov)
    out = tmp_path / "out"
    assert len(manifest["files"]) == 3 and manifest["complete"] is True

    for rec in manifest["files"]:
        errors, _ = dciodvfy(out / rec["path"])
        assert errors == [], errors
    errors, _ = dciodvfy(out / "DICOMDIR")
    assert errors == [], errors

    ds = pydicom.dcmread(out / manifest["files"][0]["path"])
    assert ds.SOPClassUID == preset.sop_class.value
    assert ds.file_meta.MediaStorageSOPClassUID == preset.sop_class.value
    assert ds.Modality == preset.modality.value
    # synthetic marking
    assert ds.SyntheticData == "YES"
    equip = ds.ContributingEquipmentSequence[0]
    code = equip.PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "109100", "DCM", "Synthesizing Equipment")
    assert equip.Manufacturer == "medsynth" and equip.SoftwareVersions == PROV.software_version
    assert equip.ContributionDateTime and "ct-body" in equip.ContributionDescription
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "ddim" in ds.DerivationDescription
    # de-identification markers: only the Basic Profile is claimed
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert ds.BurnedInAnnotation == "NO"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    # windows, anatomy
    assert [float(v) for v in values(ds, "WindowCenter")] == [w.center for w in preset.windows]
    assert [float(v) for v in values(ds, "WindowWidth")] == [w.width for w in preset.windows]
    assert values(ds, "WindowCenterWidthExplanation") == [w.explanation for w in preset.windows]
    assert ds.BodyPartExamined == preset.body_part_examined
    region = ds.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == (preset.anatomic_region.value,
                                                                 preset.anatomic_region.scheme)
    # provenance private block
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert block[0x01].value == "ct-body"
    assert block[0x02].value == "ab" * 32
    assert block[0x03].value == "11"
    assert block[0x04].value == "ddim"
    assert int(block[0x05].value) == 50
    assert float(block[0x06].value) == 2.5
    assert json.loads(block[0x10].value)["model_sha256"] == "ab" * 32
    assert manifest["provenance"]["model_sha256"] == "ab" * 32
    # pixel values come back (rounded) in physical units
    for k, d in enumerate(read_all(out, manifest)):
        back = pydicom.pixels.apply_rescale(d.pixel_array, d) if "RescaleSlope" in d else d.pixel_array
        assert np.max(np.abs(back - vol[k])) <= 0.5 + 1e-9


def test_ct_hu_round_trip_exact_with_widened_encoding(tmp_path: Path) -> None:
    preset = get_preset("ct-abdomen")
    rng = np.random.default_rng(1)
    vol = rng.integers(-1024, 3072, size=(2, 16, 20)).astype(np.float64)
    geom = VolumeGeometry.axial((16, 20), (0.7, 0.7), 2.0, 2)
    m12 = write_volume(vol, geom, preset, tmp_path / "a", WriterOptions(seed=1))
    ds = pydicom.dcmread(tmp_path / "a" / m12["files"][0]["path"])
    assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (12, 0, -1024.0)

    wide = vol.copy()
    wide[0, 0, 0], wide[1, 0, 0] = -2000.0, 4000.0  # outside the preset's 12-bit range
    m16 = write_volume(wide, geom, preset, tmp_path / "b", WriterOptions(seed=1))
    for k, d in enumerate(read_all(tmp_path / "b", m16)):
        assert (d.BitsStored, d.PixelRepresentation) == (16, 1)
        hu = pydicom.pixels.apply_rescale(d.pixel_array, d)
        np.testing.assert_array_equal(hu, wide[k])
    assert all(s["clipped_pixels"] == 0 for s in m16["series"])
    errors, _ = dciodvfy(tmp_path / "b" / m16["files"][0]["path"])
    assert errors == []

    with pytest.raises(InputError):
        PixelEncoding.fit(preset, -40000.0, 0.0)


def test_mr_fractional_values_are_rescaled_and_recorded(tmp_path: Path) -> None:
    vol = np.linspace(0.0, 1.0, 2 * 8 * 8).reshape(2, 8, 8)
    geom = VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 2)
    m = write_volume(vol, geom, get_preset("mr-brain"), tmp_path / "o", WriterOptions(seed=2))
    assert m["intensity_rescaled"]["input_range"] == [0.0, 1.0]
    ds = pydicom.dcmread(tmp_path / "o" / m["files"][1]["path"])
    assert int(ds.pixel_array.max()) == 4095
    saved = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert saved["intensity_rescaled"] == m["intensity_rescaled"]


# ------------------------------------------------------------------------------------------------
# Hierarchy and series coherence
# ------------------------------------------------------------------------------------------------


def test_hierarchy_and_series_coherence_oblique(tmp_path: Path) -> None:
    preset = get_preset("mr-cardiac")
    # an oblique, right-handed orientation: rotate about x by 30 degrees
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    geom = VolumeGeometry(origin=(-10.0, 20.0, 5.0), spacing=(1.25, 1.5, 4.0),
                          direction=tuple(float(v) for v in rot.reshape(-1)))  # type: ignore[arg-type]
    opts = WriterOptions(patients=2, studies_per_patient=2, series_per_study=2, seed=9)
    n = 4
    with SyntheticStudyWriter(tmp_path / "o", preset, opts, PROV) as w:
        for slot in opts.slots():
            w.begin_series(geom, (6, 5), patient=slot.patient, study=slot.study)
            for k in reversed(range(n)):  # any order
                w.write_slice(k, np.full((6, 5), 100.0 * slot.series + k))
        manifest = w.finish()
    out = tmp_path / "o"
    assert len(manifest["files"]) == 2 * 2 * 2 * n
    assert manifest["patients"] == 2 and manifest["studies"] == 4 and len(manifest["series"]) == 8
    dsets = read_all(out, manifest)
    assert len({d.SOPInstanceUID for d in dsets}) == len(dsets)
    assert len({d.PatientID for d in dsets}) == 2
    assert len({d.StudyInstanceUID for d in dsets}) == 4
    assert len({d.SeriesInstanceUID for d in dsets}) == 8
    assert len({d.FrameOfReferenceUID for d in dsets}) == 4  # one patient coordinate system per study
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for d in dsets:
        by_series.setdefault(d.SeriesInstanceUID, []).append(d)
    normal = np.cross(rot[:, 0], rot[:, 1])
    for series in by_series.values():
        assert len({d.FrameOfReferenceUID for d in series}) == 1
        assert len({d.StudyInstanceUID for d in series}) == 1
        series.sort(key=lambda d: int(d.InstanceNumber))
        assert [int(d.InstanceNumber) for d in series] == list(range(1, n + 1))
        for d in series:
            assert [float(v) for v in d.PixelSpacing] == [1.5, 1.25]
            assert float(d.SliceThickness) == 4.0 and float(d.SpacingBetweenSlices) == 4.0
            np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient],
                                       [*rot[:, 0], *rot[:, 1]], atol=1e-6)
        pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in series])
        np.testing.assert_allclose(pos[0], geom.origin, atol=1e-6)
        steps = np.diff(pos, axis=0)
        np.testing.assert_allclose(steps, np.tile(4.0 * normal, (n - 1, 1)), atol=1e-6)
        locs = [float(d.SliceLocation) for d in series]
        np.testing.assert_allclose(np.diff(locs), 4.0, atol=1e-6)
    # the DICOMDIR references every file with its UIDs
    fs = FileSet(out / "DICOMDIR")
    listed = {inst.SOPInstanceUID: Path(inst.path).relative_to(out).as_posix() for inst in fs}
    assert listed == {f["sop_instance_uid"]: f["path"] for f in manifest["files"]}
    for d in dsets[:3]:
        errors, _ = dciodvfy(Path(d.filename))
        assert errors == []


def test_streaming_writer_refuses_misuse(tmp_path: Path) -> None:
    preset = get_preset("ct-chest")
    w = SyntheticStudyWriter(tmp_path / "o", preset, WriterOptions(seed=1))
    with pytest.raises(DicomWriteError, match="before begin_series"):
        w.write_slice(0, np.zeros((4, 4)))
    w.finish()
    with pytest.raises(DicomWriteError, match="finished"):
        w.begin_series(VolumeGeometry.axial((4, 4), (1.0, 1.0), 1.0, 2), (4, 4))
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["files"] == []


def test_streaming_writer_input_checks(tmp_path: Path) -> None:
    preset = get_preset("ct-chest")
    geom = VolumeGeometry.axial((4, 4), (1.0, 1.0), 1.0, 2)
    with SyntheticStudyWriter(tmp_path / "o", preset, WriterOptions(seed=1)) as w:
        w.begin_series(geom, (4, 4))
        with pytest.raises(InputError, match="shape"):
            w.write_slice(0, np.zeros((4, 5)))
        with pytest.raises(InputError, match="NaN"):
            w.write_slice(0, np.full((4, 4), np.nan))
        w.write_slice(0, np.zeros((4, 4)))
        with pytest.raises(InputError, match="already"):
            w.write_slice(0, np.zeros((4, 4)))
        with pytest.raises(ConfigError):
            w.begin_series(geom, (4, 4), patient=1)
        with pytest.raises(ConfigError):
            w.begin_series(geom, (4, 4))  # series_per_study = 1 already used
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["complete"] is True and len(manifest["files"]) == 1


# ------------------------------------------------------------------------------------------------
# Safety: interrupted runs, output folder rules
# ------------------------------------------------------------------------------------------------


def test_interrupt_leaves_complete_files_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = get_preset("ct-pelvis")
    geom = VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 10)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt), SyntheticStudyWriter(out, preset, WriterOptions(seed=3), PROV) as w:
        w.begin_series(geom, (8, 8))
        for k in range(10):
            if k == 4:
                raise KeyboardInterrupt
            w.write_slice(k, np.zeros((8, 8)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["error"] == "KeyboardInterrupt"
    assert len(manifest["files"]) == 4
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([f["path"] for f in manifest["files"]] + ["manifest.json"])
    for f in manifest["files"]:
        assert pydicom.dcmread(out / f["path"]).pixel_array.shape == (8, 8)

    # a crash in the middle of writing one file leaves no partial file behind
    def broken_save(self: pydicom.Dataset, filename: object, **kwargs: object) -> None:
        Path(str(filename)).write_bytes(b"DICM half")
        raise OSError(28, "No space left on device")

    out2 = tmp_path / "o2"
    monkeypatch.setattr(pydicom.Dataset, "save_as", broken_save)
    with pytest.raises(OutputError), SyntheticStudyWriter(out2, preset, WriterOptions(seed=3)) as w:
        w.begin_series(geom, (8, 8))
        w.write_slice(0, np.zeros((8, 8)))
    files = [p.relative_to(out2).as_posix() for p in out2.rglob("*") if p.is_file()]
    assert files == ["manifest.json"]
    assert json.loads((out2 / "manifest.json").read_text())["files"] == []


def test_output_folder_rules(tmp_path: Path) -> None:
    preset = get_preset("xr-chest")
    vol, geom = random_volume("xr-chest", 2)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(OutputError, match="not empty"):
        write_volume(vol, geom, preset, out, WriterOptions(seed=1))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    first = write_volume(vol, geom, preset, out, WriterOptions(seed=1), force=True)
    # force again with a smaller plan: the previous run's files go, the user's file stays
    second = write_volume(vol[:1], geom, preset, out, WriterOptions(seed=2), force=True)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([f["path"] for f in second["files"]] + ["DICOMDIR", "manifest.json", "keep.txt"])
    assert (out / "keep.txt").read_text() == "user file"
    assert first["files"][0]["sop_instance_uid"] != second["files"][0]["sop_instance_uid"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_volume(vol, geom, preset, afile, WriterOptions(seed=1))


# ------------------------------------------------------------------------------------------------
# UIDs, identities, reproducibility
# ------------------------------------------------------------------------------------------------


def _all_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_seeded_runs_are_byte_identical(tmp_path: Path) -> None:
    vol, geom = random_volume("ct-chest", 3)
    opts = WriterOptions(patients=2, seed=42)
    write_volume(vol, geom, get_preset("ct-chest"), tmp_path / "a", opts, PROV)
    write_volume(vol, geom, get_preset("ct-chest"), tmp_path / "b", opts, PROV)
    a, b = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b")
    assert len(a) == 2 * 3 + 2 and a == b
    write_volume(vol, geom, get_preset("ct-chest"), tmp_path / "c", WriterOptions(patients=2, seed=43), PROV)
    c = _all_bytes(tmp_path / "c")
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_uids_unique_unseeded_and_root(tmp_path: Path) -> None:
    assert UidFactory().uid("x") != UidFactory().uid("x")
    assert UidFactory().uid("x").startswith("2.25.")
    seeded = UidFactory(seed=1)
    assert seeded.uid("study", 0) == UidFactory(seed=1).uid("study", 0) != seeded.uid("study", 1)
    assert UidFactory("1.2.826.0.1.3680043.10.999", seed=1).uid("a").startswith("1.2.826.0.1.3680043.10.999.")
    for uid in (UidFactory(seed=7).uid("a"), UidFactory("1.2.3", seed=7).uid("a"), UidFactory("1.2.3").uid("a")):
        assert uid.is_valid, uid
    with pytest.raises(ConfigError):
        UidFactory("1.02.x")
    vol, geom = random_volume("ct-pelvis", 2)
    ma = write_volume(vol, geom, get_preset("ct-pelvis"), tmp_path / "a")
    mb = write_volume(vol, geom, get_preset("ct-pelvis"), tmp_path / "b")
    assert not {f["sop_instance_uid"] for f in ma["files"]} & {f["sop_instance_uid"] for f in mb["files"]}
    mr = write_volume(vol, geom, get_preset("ct-pelvis"), tmp_path / "r", WriterOptions(uid_root="1.2.3.4"))
    ds = pydicom.dcmread(tmp_path / "r" / mr["files"][0]["path"])
    for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
        assert uid.startswith("1.2.3.4.") and uid.is_valid


def test_identity_options(tmp_path: Path) -> None:
    import datetime as dt

    ident = IdentityOptions(name_prefix="TESTPAT", id_prefix="QA", sex=Sex.F, age_years=(40, 40),
                            study_dates=(dt.date(2023, 5, 1), dt.date(2023, 5, 1)))
    vol, geom = random_volume("mr-brain", 1)
    m = write_volume(vol, geom, get_preset("mr-brain"), tmp_path / "o",
                     WriterOptions(patients=3, identity=ident, seed=4))
    dsets = read_all(tmp_path / "o", m)
    for d in dsets:
        assert str(d.PatientName).startswith("TESTPAT^")
        assert d.PatientID.startswith("QA") and d.AccessionNumber.startswith("QA")
        assert d.PatientSex == "F" and d.PatientAge == "040Y" and d.StudyDate == "20230501"
    assert len({d.PatientID for d in dsets}) == 3
    with pytest.raises(ConfigError):
        IdentityOptions(name_prefix="BAD^NAME")
    with pytest.raises(ConfigError):
        WriterOptions(patients=0)


def test_preset_encoding_matches_preset() -> None:
    for preset in PRESETS.values():
        enc = PixelEncoding.for_preset(preset)
        lo, hi = enc.physical_range
        assert lo <= preset.intensity.physical_low and hi >= preset.intensity.physical_high
        if preset.modality is Modality.CT:
            assert (lo, hi) == (-1024.0, 3071.0)


# ------------------------------------------------------------------------------------------------
# Namespaces: the same seed under another preset / model / input / option shares nothing
# ------------------------------------------------------------------------------------------------


def _identifiers(out: Path, manifest: dict) -> dict[str, set[str]]:
    dsets = read_all(out, manifest)
    keys = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PatientID",
            "AccessionNumber")
    return {k: {str(d.get(k)) for d in dsets if k in d} for k in keys}


def _plan(preset_name: str, out: Path, prov: Provenance, **opts: object) -> dict:
    vol, geom = random_volume(preset_name, 2)
    options = WriterOptions(patients=2, studies_per_patient=2, seed=7, **opts)  # type: ignore[arg-type]
    return write_volume(vol, geom, get_preset(preset_name), out, options, prov)


def test_same_seed_other_preset_or_model_shares_no_identifier(tmp_path: Path) -> None:
    mr_prov = Provenance(model_id="mr-brain", model_sha256="cd" * 32, seed=7, condition="t1")
    runs = {
        "ct": _plan("ct-pelvis", tmp_path / "ct", PROV),
        "mr": _plan("mr-brain", tmp_path / "mr", mr_prov),
        "ct-chest": _plan("ct-chest", tmp_path / "ct-chest", PROV),  # same model, other preset
        "other-pack": _plan("ct-pelvis", tmp_path / "pk", Provenance(**{**PROV.to_json(), "pack_identity": "ee" * 32})),
        "other-plan": _plan("ct-pelvis", tmp_path / "pl", PROV, series_per_study=2),
    }
    ids = {name: _identifiers(tmp_path / {"ct": "ct", "mr": "mr", "ct-chest": "ct-chest", "other-pack": "pk",
                                          "other-plan": "pl"}[name], m) for name, m in runs.items()}
    names = sorted(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for key in ids[a]:
                assert not ids[a][key] & ids[b][key], (a, b, key)
    # and the same namespace + seed reproduces them
    again = _plan("ct-pelvis", tmp_path / "ct2", PROV)
    assert _identifiers(tmp_path / "ct2", again) == ids["ct"]
    assert again["uid_namespace"] == runs["ct"]["uid_namespace"] != runs["mr"]["uid_namespace"]


def test_ct_and_mr_with_the_same_seed_both_land_in_orthanc(tmp_path: Path) -> None:
    from _orthanc import start_orthanc
    from medsynth.push.model import DimseTarget, PushConfig
    from medsynth.push.runner import push_folder

    _plan("ct-pelvis", tmp_path / "ct", PROV)
    _plan("mr-brain", tmp_path / "mr", Provenance(model_id="mr-brain", model_sha256="cd" * 32, seed=7))
    try:
        pacs = start_orthanc(tmp_path / "orthanc")
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        target = DimseTarget(host="127.0.0.1", port=pacs.dicom_port, called_aet=pacs.aet)
        for name in ("ct", "mr"):
            push_folder(tmp_path / name, PushConfig(target=target, timeout_s=10.0), progress=False)
        stored = set(pacs.instance_uids())
        written = {f["sop_instance_uid"] for name in ("ct", "mr")
                   for f in json.loads((tmp_path / name / "manifest.json").read_text())["files"]}
        assert len(written) == 2 * 2 * 2 * 2 and stored == written
        assert len(pacs.get_json("/patients")) == 4 and len(pacs.get_json("/studies")) == 8
    finally:
        pacs.stop()
