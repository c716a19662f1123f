"""Reader tests: real scans' geometry, DICOM grouping/sorting/decoding, tilt, and every class of bad input."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.reader import ImageSeries, read_images, read_volume


def _testfile(name: str) -> Path:
    p = get_testdata_file(name)
    assert p is not None, name
    return Path(p)


def _only(result_series: list[ImageSeries]) -> ImageSeries:
    assert len(result_series) == 1, [s.name for s in result_series]
    return result_series[0]


def _orthonormal(g: VolumeGeometry) -> bool:
    m = g.matrix
    return bool(np.allclose(m.T @ m, np.eye(3), atol=1e-5))


# ------------------------------------------------------------------------------------ real volumes

# (file, expected (x, y, z) spacing mm, CT?) — facts from the data's README, checked against the file
REAL_VOLUMES = [
    ("ct/abdomen_pelvis_totalseg.nii.gz", (3.0, 3.0, 3.0), True),
    ("ct/cardiac_cta_totalseg_1.nii.gz", (1.5, 1.5, 1.5), True),
    ("ct/cardiac_cta_totalseg_2.nii.gz", (1.5, 1.5, 1.5), True),
    ("ct/chest_pyradiomics_lung1.nrrd", (0.57, 0.57, 5.0), True),
    ("ct/chest_pyradiomics_lung2.nrrd", (0.627, 0.627, 5.0), True),
    ("mr/abdomen_mr_totalseg.nii.gz", (3.0, 3.0, 3.0), False),
    ("mr/brain_stroke_flair.nii.gz", (1.0, 1.0, 1.0), False),
    ("mr/brain_stroke_t1.nii.gz", (1.0, 1.0, 1.0), False),
    ("mr/brain_stroke_t2.nii.gz", (1.0, 1.0, 1.0), False),
    ("mr/brain_t1_chris.nii.gz", (1.0, 1.0, 1.0), False),
    ("mr/brain_t1_colin27.nii.gz", (1.0, 1.0, 1.0), False),
    ("mr/brain_t1c_pyradiomics_1.nrrd", (0.781, 0.781, 6.5), False),
    ("mr/brain_t1c_pyradiomics_2.nrrd", (0.781, 0.781, 6.5), False),
]


@pytest.mark.parametrize(("name", "spacing", "is_ct"), REAL_VOLUMES, ids=[v[0] for v in REAL_VOLUMES])
def test_real_volume_geometry_and_values(shared_data: Path, name: str, spacing: tuple[float, float, float],
                                         is_ct: bool) -> None:
    s = read_volume(shared_data / name)
    assert s.voxels.dtype == np.float32 and s.voxels.ndim == 3
    np.testing.assert_allclose(s.geometry.spacing, spacing, rtol=0.01)
    assert _orthonormal(s.geometry)
    # the array's z axis is (close to) the patient's superior axis in every one of these files
    assert abs(s.geometry.slice_normal[2]) > 0.9
    # orientation is the file's: SimpleITK reads the same direction and origin
    ref = sitk.ReadImage(str(shared_data / name))
    np.testing.assert_allclose(s.geometry.direction, ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(s.geometry.origin, ref.GetOrigin(), atol=1e-4)
    lo, hi = float(s.voxels.min()), float(s.voxels.max())
    if is_ct:
        assert -1300 <= lo <= -900 and 1000 <= hi <= 4000, (lo, hi)  # air and bone/contrast in HU
    else:
        assert hi > lo and hi > 100


def test_jpeg2000_ct_series_matches_gdcm(shared_data: Path) -> None:
    folder = shared_data / "ct/upper_abdomen_dicom"
    res = read_images([folder])
    assert not res.skipped and res.files_seen == 20
    s = _only(res.series)
    assert s.shape == (20, 512, 512)
    assert s.facts.modality == "CT" and s.facts.manufacturer == "SIEMENS"
    assert "JPEG 2000" in s.facts.transfer_syntax
    np.testing.assert_allclose(s.geometry.spacing, (0.977, 0.977, 2.0), atol=0.001)
    assert _orthonormal(s.geometry) and s.geometry.slice_normal == pytest.approx((0.0, 0.0, 1.0))
    assert s.voxels.min() == pytest.approx(-1024.0) and s.voxels.max() > 1000  # HU after rescale
    # GDCM (through SimpleITK) decodes and sorts the same series independently
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    np.testing.assert_array_equal(s.voxels, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(s.geometry.origin, ref.GetOrigin(), atol=1e-3)
    # no patient identity anywhere in what the reader returns
    text = repr(s.facts) + s.name
    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    for tag in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(tag, "") or "")
        if len(value) > 2:
            assert value not in text


def test_mr_dicom_series_matches_gdcm(shared_data: Path) -> None:
    folder = shared_data / "mr/cardiac_lge_dicom"
    s = _only(read_images([folder]).series)
    assert s.shape == (44, 640, 640) and s.facts.modality == "MR"
    assert s.facts.inversion_time_ms == pytest.approx(360.0) and "IR" in s.facts.sequence
    np.testing.assert_allclose(s.geometry.spacing, (0.625, 0.625, 2.5), atol=0.001)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    np.testing.assert_array_equal(s.voxels, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(s.geometry.direction, ref.GetDirection(), atol=1e-4)


def test_gantry_tilt_series_is_resampled_not_sheared(shared_data: Path) -> None:
    s = _only(read_images([shared_data / "ct/head_gantry_tilt_dicom"]).series)
    assert _orthonormal(s.geometry)
    # slice normal = row x column of the tilted slices (18.5 degrees about the x axis)
    assert s.geometry.slice_normal == pytest.approx((0.0, np.sin(np.radians(18.5)), np.cos(np.radians(18.5))),
                                                    abs=2e-3)
    assert s.geometry.spacing[2] == pytest.approx(4.0, abs=0.01)
    assert any("gantry tilt" in n for n in s.notes) and any("uneven slice gaps" in n for n in s.notes)
    # 28 slices over 4.0 and 7.0 mm gaps span ~144 mm along the normal -> 37 slices at 4 mm
    assert s.shape == (37, 512, 512)
    assert s.voxels.max() > 1000  # skull in HU


def _tilted_ball_series(folder: Path, tilt_deg: float, z_positions: list[float]) -> tuple[np.ndarray, float]:
    """Write a CT series of a 40 mm-radius ball (1000 HU in -1000 HU air) with tilted slices at the
    given table positions (like a gantry-tilted scan: IPP moves along z only). Returns the ball centre."""
    template = pydicom.dcmread(_testfile("CT_small.dcm"))
    centre = np.array([0.0, 10.0, 60.0])
    radius = 40.0
    t = np.radians(tilt_deg)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    n, sp = 64, 2.0
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(z_positions):
        ipp = np.array([-63.0, -63.0, z])
        jj, ii = np.meshgrid(np.arange(n), np.arange(n))  # jj: column index, ii: row index
        pts = ipp + jj[..., None] * sp * row + ii[..., None] * sp * col
        inside = np.linalg.norm(pts - centre, axis=-1) <= radius
        hu = np.where(inside, 1000, -1000).astype(np.int16)
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [*row.tolist(), *col.tolist()]
        ds.ImagePositionPatient = ipp.tolist()
        ds.GantryDetectorTilt = tilt_deg
        ds.PixelSpacing = [sp, sp]
        ds.Rows = ds.Columns = n
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelRepresentation = 1
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.InstanceNumber = len(z_positions) - k  # deliberately reversed: sorting must use geometry
        ds.save_as(folder / f"{k:03d}.dcm")
    return centre, radius


def test_tilted_uneven_synthetic_ball_lands_where_it_is(tmp_path: Path) -> None:
    # 4 mm then 7 mm gaps; the tilted stack covers the whole ball
    zs = [4.0 * i for i in range(16)] + [60.0 + 7.0 * i for i in range(1, 14)]
    centre, radius = _tilted_ball_series(tmp_path / "tilt", 20.0, zs)
    s = _only(read_images([tmp_path / "tilt"]).series)
    assert any("gantry tilt +20 deg" in n for n in s.notes)
    g = s.geometry
    z, y, x = np.nonzero(s.voxels > 0)
    idx = np.stack([x, y, z], axis=1).astype(float)
    world = np.asarray(g.origin) + (idx * np.asarray(g.spacing)) @ g.matrix.T
    # the ball's centroid and radius are right in patient space (a sheared stack misplaces it by cm)
    np.testing.assert_allclose(world.mean(axis=0), centre, atol=1.5)
    assert np.linalg.norm(world - centre, axis=1).max() <= radius + 4.0


def test_missing_slices_are_refused(tmp_path: Path) -> None:
    zs = [20.0 + 4.0 * i for i in range(6)] + [80.0 + 4.0 * i for i in range(4)]  # a 40 mm hole
    _tilted_ball_series(tmp_path / "gap", 0.0, zs)
    res = read_images([tmp_path / "gap"])
    assert not res.series
    assert len(res.skipped) == 1 and "missing slices" in res.skipped[0].reason


def test_sorted_by_geometry_not_file_name(shared_data: Path, tmp_path: Path) -> None:
    src = sorted((shared_data / "ct/upper_abdomen_dicom").iterdir())[:6]
    for i, f in enumerate(src):  # names in reverse order of position
        shutil.copy(f, tmp_path / f"z{len(src) - i:02d}.dcm")
    a = _only(read_images(src).series)
    b = _only(read_images([tmp_path]).series)
    np.testing.assert_array_equal(a.voxels, b.voxels)
    assert a.geometry == b.geometry


def test_folder_with_several_series_is_split(shared_data: Path, tmp_path: Path) -> None:
    for f in sorted((shared_data / "ct/upper_abdomen_dicom").iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(_testfile("CT_small.dcm"), tmp_path / "ct_small.dcm")
    shutil.copy(_testfile("MR_small.dcm"), tmp_path / "mr_small.dcm")
    res = read_images([tmp_path])
    assert sorted(s.shape for s in res.series) == [(1, 64, 64), (1, 128, 128), (3, 512, 512)]
    assert sorted(s.facts.modality for s in res.series) == ["CT", "CT", "MR"]


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_compressed_and_odd_syntaxes_decode_identically(name: str) -> None:
    ref = _only(read_images([_testfile("MR_small.dcm")]).series)
    s = _only(read_images([_testfile(name)]).series)
    np.testing.assert_array_equal(s.voxels, ref.voxels)
    assert s.geometry == ref.geometry


def test_rescale_slope_intercept_gives_hu() -> None:
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    s = _only(read_images([path]).series)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(s.voxels[0], expected)


def test_enhanced_multiframe_matches_single_frames(shared_data: Path, tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    files = sorted((shared_data / "ct/upper_abdomen_dicom").iterdir())[:4]
    legacy = [pydicom.dcmread(f) for f in files]
    for ds in legacy:
        ds.decompress()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # these files leave it empty
    mf = LegacyConvertedEnhancedCTImage(legacy, series_instance_uid=generate_uid(), series_number=9,
                                        sop_instance_uid=generate_uid(), instance_number=1)
    mf.save_as(tmp_path / "enhanced.dcm")
    single = _only(read_images(files).series)
    multi = _only(read_images([tmp_path / "enhanced.dcm"]).series)
    assert multi.shape == (4, 512, 512)
    np.testing.assert_array_equal(multi.voxels, single.voxels)
    np.testing.assert_allclose(multi.geometry.origin, single.geometry.origin, atol=1e-3)
    np.testing.assert_allclose(multi.geometry.spacing, single.geometry.spacing, atol=1e-3)


def _dx_file(path: Path, photometric: str) -> Path:
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    ds.Modality = "DX"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    ds.ImagerPixelSpacing = [0.2, 0.3]
    ds.PhotometricInterpretation = photometric
    ds.save_as(path)
    return path


def test_dx_monochrome1_is_inverted(tmp_path: Path) -> None:
    m2 = _only(read_images([_dx_file(tmp_path / "m2.dcm", "MONOCHROME2")]).series)
    m1 = _only(read_images([_dx_file(tmp_path / "m1.dcm", "MONOCHROME1")]).series)
    assert m1.is_projection and m2.is_projection
    assert m2.voxels.min() >= 0.0 and m2.voxels.max() <= 1.0
    np.testing.assert_allclose(m1.voxels, 1.0 - m2.voxels, atol=1e-6)
    assert m1.geometry.spacing[:2] == pytest.approx((0.3, 0.2))


def test_png_xray_is_grey(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, 25:] = 200
    Image.fromarray(rgb).save(tmp_path / "x.png")
    s = _only(read_images([tmp_path / "x.png"]).series)
    assert s.is_projection and s.shape == (1, 30, 50)
    assert s.voxels[0, 0, 0] == 0.0 and s.voxels[0, 0, 40] == pytest.approx(200 / 255, abs=1e-3)


# ------------------------------------------------------------------------------------ bad input


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected reason fragment)."""
    out: dict[str, tuple[Path, str]] = {}
    for name, reason in [("test-SR.dcm", "not an image (Comprehensive SR"), ("rtstruct.dcm", "RT Structure Set"),
                         ("rtplan.dcm", "RT Plan"), ("rtdose.dcm", "RT Dose"), ("liver_1frame.dcm", "Segmentation"),
                         ("waveform_ecg.dcm", "Waveform"), ("MR_truncated.dcm", "cannot decode pixel data"),
                         ("SC_rgb_rle.dcm", "colour image")]:
        out[name] = (_testfile(name), reason)
    ps = Dataset()
    ps.file_meta = FileMetaDataset()
    ps.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ps.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    ps.file_meta.MediaStorageSOPClassUID = ps.SOPClassUID
    ps.SOPInstanceUID = ps.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ps.Modality = "PR"
    ps.save_as(tmp / "pr.dcm", enforce_file_format=True)
    out["presentation state"] = (tmp / "pr.dcm", "Presentation State")
    ct = pydicom.dcmread(_testfile("CT_small.dcm"))
    nopix = copy.deepcopy(ct)
    del nopix.PixelData
    nopix.save_as(tmp / "nopix.dcm")
    out["no PixelData"] = (tmp / "nopix.dcm", "no PixelData")
    noori = copy.deepcopy(ct)
    del noori.ImageOrientationPatient
    noori.save_as(tmp / "noori.dcm")
    out["missing orientation"] = (tmp / "noori.dcm", "missing ImageOrientationPatient")
    raw = _testfile("CT_small.dcm").read_bytes()
    (tmp / "cut_header.dcm").write_bytes(raw[:300])
    out["truncated header"] = (tmp / "cut_header.dcm", "")
    (tmp / "cut_pixels.dcm").write_bytes(raw[: len(raw) - 5000])
    out["truncated pixels"] = (tmp / "cut_pixels.dcm", "pixel data")
    (tmp / "garbage.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    out["garbage"] = (tmp / "garbage.dcm", "not a DICOM file")
    (tmp / "notes.txt").write_text("hello", encoding="utf-8")
    out["text"] = (tmp / "notes.txt", "not a DICOM file")
    nan = np.zeros((4, 8, 8), np.float32)
    nan[1:3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp / "nan.nrrd"))
    out["NaN volume"] = (tmp / "nan.nrrd", "non-finite")
    # SimpleITK's NIfTI reader turns NaN into 0, so an all-NaN NIfTI arrives as an empty volume
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)), str(tmp / "nan.nii.gz"))
    out["all-NaN NIfTI"] = (tmp / "nan.nii.gz", "empty")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(tmp / "empty.nrrd"))
    out["empty volume"] = (tmp / "empty.nrrd", "empty")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 3, 4, 5), np.float32), isVector=False), str(tmp / "four_d.nii"))
    out["4D volume"] = (tmp / "four_d.nii", "4D")
    (tmp / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out["corrupt NIfTI"] = (tmp / "broken.nii.gz", "cannot read volume")
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out["corrupt PNG"] = (tmp / "broken.png", "cannot read picture")
    return out


def test_every_bad_input_gets_one_clear_reason_and_good_files_continue(tmp_path: Path) -> None:
    bad = _bad_inputs(tmp_path)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in bad.values()}
    good = _testfile("CT_small.dcm")
    res = read_images([*(p for p, _ in bad.values()), good])
    assert [s.shape for s in res.series] == [(1, 128, 128)]  # the good file still read
    by_path: dict[Path, list[str]] = {}
    for sk in res.skipped:
        by_path.setdefault(Path(sk.path), []).append(sk.reason)
    for label, (path, fragment) in bad.items():
        reasons = by_path.get(path)
        assert reasons is not None and len(reasons) == 1, (label, reasons)
        assert fragment in reasons[0], (label, reasons[0])
        assert "\n" not in reasons[0]
    # inputs never modified
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in bad.values()}


def test_mixed_series_same_position_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    for i in range(2):
        ds.SOPInstanceUID = generate_uid()
        ds.EchoNumbers = None
        ds.save_as(tmp_path / f"dup{i}.dcm")
    res = read_images([tmp_path])
    assert not res.series and len(res.skipped) == 1
    assert "mixed series" in res.skipped[0].reason and "share a position" in res.skipped[0].reason


def test_missing_input_is_reported(tmp_path: Path) -> None:
    res = read_images([tmp_path / "nope.dcm"])
    assert not res.series and res.skipped[0].reason == "no such file or folder"


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_with_dicom_writer(tmp_path: Path) -> None:
    writer = pytest.importorskip("medsynth.dicom_io.writer")
    from medsynth.presets import get_preset

    rng = np.random.default_rng(1)
    vol = rng.integers(-1024, 2047, size=(5, 24, 32)).astype(np.float32)
    geo = VolumeGeometry(origin=(-100.0, -80.0, 30.0), spacing=(0.8, 0.9, 2.5))
    writer.write_volume(vol, geo, get_preset("ct-abdomen"), tmp_path / "out")
    res = read_images([tmp_path / "out"])
    s = _only(res.series)
    np.testing.assert_array_equal(s.voxels, vol)
    np.testing.assert_allclose(s.geometry.origin, geo.origin, atol=1e-3)
    np.testing.assert_allclose(s.geometry.spacing, geo.spacing, atol=1e-4)
    np.testing.assert_allclose(s.geometry.direction, geo.direction, atol=1e-6)
    assert s.facts.modality == "CT"


# ------------------------------------------------------------------------------------ seeded fuzz

_FUZZ_ATTRS = ("RescaleSlope", "RescaleIntercept", "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored",
               "HighBit", "PixelRepresentation", "SamplesPerPixel", "PixelSpacing", "ImagePositionPatient",
               "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices", "WindowCenter", "WindowWidth",
               "GantryDetectorTilt", "EchoTime", "RepetitionTime", "InstanceNumber", "PhotometricInterpretation",
               "Modality", "SOPClassUID", "SeriesInstanceUID", "PixelData")
_FUZZ_VALUES = (b"abc ", b"1\\2 ", b"", b"nan ", b"inf ", b"-1", b"1e5", b"1e-6", b"0 ", b"99999999", b"\x00\xff",
                b"1e308\\1e308", b"-0\\-0", b"MONOCHROME3 ", b"1.2.3.4.5 ")


def _mutate(src: bytes, rng: np.random.Generator) -> bytes:
    """One seeded mutation of a DICOM file: malformed values, deleted attributes, a truncation or
    flipped header bytes. Malformed values are written raw in implicit VR (as broken real files carry
    them). The series UID is made unique so each mutant is its own series."""
    import io

    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    kind = int(rng.integers(5))
    ds = pydicom.dcmread(io.BytesIO(src))
    ds.SeriesInstanceUID = generate_uid()
    if kind in (3, 4):
        fresh = io.BytesIO()
        ds.save_as(fresh)
        src = fresh.getvalue()
    if kind == 3:  # truncate anywhere
        return src[: int(rng.integers(0, len(src)))]
    if kind == 4:  # flip bytes in the header region
        buf = bytearray(src)
        for _ in range(int(rng.integers(1, 20))):
            buf[int(rng.integers(132, min(len(buf), 3000)))] = int(rng.integers(256))
        return bytes(buf)
    for _ in range(int(rng.integers(1, 4))):
        name = _FUZZ_ATTRS[int(rng.integers(len(_FUZZ_ATTRS)))]
        tag = Tag(tag_for_keyword(name))
        if kind == 0:
            if name in ds:
                del ds[name]
        else:
            value = _FUZZ_VALUES[int(rng.integers(len(_FUZZ_VALUES)))]
            value += b" " * (len(value) % 2)  # DICOM values have even length
            ds._dict[tag] = RawDataElement(tag, None, len(value), value, 0, True, True)
    return _raw_bytes(ds)  # by hand: pydicom's writer would parse (and choke on) the malformed values


def _shrunk(path: Path) -> bytes:
    """A real file with its pixels subsampled 4× (header kept, spacing adjusted): a fast fuzz seed."""
    import io

    ds = pydicom.dcmread(path)
    arr = np.ascontiguousarray(ds.pixel_array[::4, ::4])
    ds.PixelData, ds.Rows, ds.Columns = arr.tobytes(), arr.shape[0], arr.shape[1]
    ds.PixelSpacing = [float(v) * 4 for v in ds.PixelSpacing]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore")
def test_seeded_fuzz_no_traceback_and_good_series_survive(shared_data: Path, tmp_path: Path) -> None:
    """300 mutants of real CT slices beside real series: every file is read or skipped with a one-line
    reason, nothing raises, and every good series comes back exactly as when read alone."""
    from medsynth.dicom_io.writer import write_volume
    from medsynth.presets import get_preset

    slab = read_volume(shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz")
    good_series = tmp_path / "good"
    write_volume(slab.voxels[40:48].astype(np.int16), slab.geometry, get_preset("ct-pelvis"), good_series)
    singles = sorted((shared_data / "ct" / "covid_nysbu_axial_dicom").iterdir())
    alone = _only(read_images([good_series]).series)
    alone_singles = {s.files[0].name: s for s in read_images(singles).series}
    assert len(alone_singles) == len(singles)

    folder = tmp_path / "in"
    shutil.copytree(good_series, folder / "good")
    shutil.copytree(singles[0].parent, folder / "singles")
    rng = np.random.default_rng(20261202)
    sources = [_shrunk(p) for p in singles]
    mutants = folder / "mutants"
    mutants.mkdir()
    for i in range(300):
        (mutants / f"m{i:03d}.dcm").write_bytes(_mutate(sources[int(rng.integers(len(sources)))], rng))

    res = read_images([folder])  # must not raise
    by_name = {s.files[0].name: s for s in res.series if s.files[0].parent.name == "singles"}
    assert by_name.keys() == alone_singles.keys()
    for name, s in by_name.items():
        np.testing.assert_array_equal(s.voxels, alone_singles[name].voxels)
    (good,) = [s for s in res.series if s.files[0].is_relative_to(folder / "good")]
    np.testing.assert_array_equal(good.voxels, alone.voxels)
    assert good.geometry == alone.geometry
    # every mutant is accounted for: in a series, or skipped with a one-line reason naming it
    used = {f for s in res.series for f in s.files}
    skipped = {Path(sk.path) for sk in res.skipped}
    for m in mutants.iterdir():
        assert m in used or m in skipped or m.parent in skipped, m  # the folder: a skipped multi-file group
    assert all("\n" not in sk.reason and sk.reason for sk in res.skipped)
    assert len(skipped & set(mutants.iterdir())) > 100  # the mutations really break files


def _raw_value(ds: pydicom.Dataset, keyword: str, value: bytes) -> None:
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    ds._dict[tag] = RawDataElement(tag, None, len(value), value, 0, True, True)


@pytest.mark.filterwarnings("ignore")
def test_malformed_header_values_skip_their_file_only(tmp_path: Path) -> None:
    """Non-numeric RescaleSlope/Intercept or NumberOfFrames, a multi-valued slope, absurd PixelSpacing:
    the file is skipped with a reason naming the attribute; the good file beside it is read."""
    cases = {"RescaleSlope": b"abc ", "RescaleIntercept": b"x1", "NumberOfFrames": b"x ",
             "PixelSpacing": b"1e5\\1e5 "}
    expect = {"RescaleSlope": "RescaleSlope", "RescaleIntercept": "RescaleIntercept",
              "NumberOfFrames": "NumberOfFrames", "PixelSpacing": "PixelSpacing"}
    for keyword, value in cases.items():
        ds = pydicom.dcmread(_testfile("CT_small.dcm"))
        ds.SeriesInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"  # implicit VR: the value is parsed by its VR
        _raw_value(ds, keyword, value)
        _save_raw(ds, tmp_path / f"{keyword}.dcm")
    multi = pydicom.dcmread(_testfile("CT_small.dcm"))
    multi.SeriesInstanceUID = generate_uid()
    multi.RescaleSlope = [1, 2]
    multi.save_as(tmp_path / "multi.dcm")
    tiny = pydicom.dcmread(_testfile("CT_small.dcm"))
    tiny.SeriesInstanceUID = generate_uid()
    tiny.PixelSpacing = [1e-6, 1e-6]
    tiny.save_as(tmp_path / "tiny.dcm")
    res = read_images([tmp_path, _testfile("CT_small.dcm")])
    assert [s.files[0].name for s in res.series] == ["CT_small.dcm"]
    reasons = {Path(sk.path).name: sk.reason for sk in res.skipped}
    for keyword in cases:
        assert expect[keyword] in reasons[f"{keyword}.dcm"], reasons
    assert "RescaleSlope holds 2 values" in reasons["multi.dcm"]
    assert "PixelSpacing" in reasons["tiny.dcm"] and "implausible" in reasons["tiny.dcm"]


def _save_raw(ds: pydicom.Dataset, path: Path) -> None:
    path.write_bytes(_raw_bytes(ds))


def _raw_bytes(ds: pydicom.Dataset) -> bytes:
    """The file bytes of ``ds`` with its raw (possibly malformed) elements written as they are."""
    import struct

    from pydicom.dataelem import RawDataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=False)
    fp.is_implicit_VR = True
    for tag in sorted(ds._dict):
        elem = ds._dict[tag]
        if isinstance(elem, RawDataElement):
            fp.write(struct.pack("<HHI", tag.group, tag.elem, len(elem.value)) + elem.value)
        else:
            write_data_element(fp, elem)
    return bytes(fp.getvalue())


def test_truncated_and_nan_geometry_nifti_are_refused(shared_data: Path, tmp_path: Path) -> None:
    import gzip

    import nibabel as nib

    src = shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz"
    raw = gzip.decompress(src.read_bytes())
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 1000], compresslevel=1))
    (tmp_path / "cut_stream.nii.gz").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    img = nib.load(src)
    data = np.asarray(img.dataobj)[:8, :8, :8]
    for name, value in (("nan", np.nan), ("zero", 0.0), ("inf", np.inf)):
        out = nib.Nifti1Image(data, np.eye(4))
        out.header["pixdim"][2] = value
        nib.save(out, tmp_path / f"pixdim_{name}.nii.gz")
        assert not np.isfinite(nib.load(tmp_path / f"pixdim_{name}.nii.gz").header["pixdim"][2]) or value == 0
    res = read_images([tmp_path])
    assert res.series == []
    reasons = {Path(sk.path).name: sk.reason for sk in res.skipped}
    assert "truncated NIfTI" in reasons["cut.nii"] and "truncated NIfTI" in reasons["cut.nii.gz"]
    assert "truncated or corrupt" in reasons["cut_stream.nii.gz"]
    for name in ("nan", "zero", "inf"):
        assert "pixdim[2]" in reasons[f"pixdim_{name}.nii.gz"], reasons
    assert read_volume(src).shape == (112, 101, 122)  # the intact file still reads
