"""Transfer syntaxes (``--transfer-syntax``) of ``generate`` and ``to-dicom``: every syntax round-trips
(lossless ones exactly, with the same UIDs), passes dciodvfy with 0 errors, is named in the DICOMDIR
and the manifest, and is pushed to a real Orthanc in its own syntax."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.uid import JPEG2000, JPEGBaseline8Bit

from _orthanc import Orthanc, start_orthanc
from medsynth.cli.main import cli
from medsynth.dicom_io.provenance import read_private_provenance
from medsynth.dicom_io.transfer_syntax import TransferSyntax
from test_writer import dciodvfy

LOSSLESS = ("explicit", "implicit", "rle", "jpeg-ls", "jpeg2000")
GENERATED = (*LOSSLESS, "jpeg2000-lossy")


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def _files(out: Path) -> list[pydicom.Dataset]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [pydicom.dcmread(out / f["path"]) for f in manifest["files"]]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled ct-body pack, 2 slices, same seed, in every syntax generate offers."""
    base = tmp_path_factory.mktemp("ts")
    out = {}
    for ts in GENERATED:
        code, text = run("generate", "-m", "ct-pelvis", "--steps", "2", "--slices", "2", "--seed", "11",
                         "--reproducible-uids", "--threads", "1", "--transfer-syntax", ts, "-o", str(base / ts), "--json")
        assert code == 0, text
        out[ts] = base / ts
    return out


@pytest.mark.parametrize("ts", GENERATED)
def test_generate_each_syntax_valid_and_named(generated: dict[str, Path], ts: str) -> None:
    syntax = TransferSyntax(ts)
    manifest = json.loads((generated[ts] / "manifest.json").read_text())
    assert manifest["transfer_syntax"] == {"name": ts, "uid": str(syntax.uid)}
    dsets = _files(generated[ts])
    assert len(dsets) == 2
    for ds in dsets:
        assert ds.file_meta.TransferSyntaxUID == syntax.uid
        errors, _ = dciodvfy(Path(ds.filename))
        assert errors == [], (ts, errors)
        assert read_private_provenance(ds)["seed"] == 11  # the private block survives implicit VR too
        assert ds.SyntheticData == "YES"
    dicomdir = pydicom.dcmread(generated[ts] / "DICOMDIR")
    images = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    assert {r.ReferencedTransferSyntaxUIDInFile for r in images} == {syntax.uid}


@pytest.mark.parametrize("ts", LOSSLESS[1:])
def test_generate_lossless_same_instances_same_pixels(generated: dict[str, Path], ts: str) -> None:
    ref = {str(d.SOPInstanceUID): d for d in _files(generated["explicit"])}
    got = {str(d.SOPInstanceUID): d for d in _files(generated[ts])}
    assert set(got) == set(ref)  # a lossless encoding is the same instance
    for uid, ds in got.items():
        assert np.array_equal(ds.pixel_array, ref[uid].pixel_array), ts
        assert ds.LossyImageCompression == "00"
        assert "LossyImageCompressionRatio" not in ds


def test_generate_lossy_jpeg2000_marked_and_new_instances(generated: dict[str, Path]) -> None:
    ref = _files(generated["explicit"])
    lossy = _files(generated["jpeg2000-lossy"])
    assert not {str(d.SOPInstanceUID) for d in lossy} & {str(d.SOPInstanceUID) for d in ref}
    for a, b in zip(sorted(ref, key=lambda d: d.InstanceNumber), sorted(lossy, key=lambda d: d.InstanceNumber),
                    strict=True):
        assert b.LossyImageCompression == "01"
        assert b.LossyImageCompressionMethod == "ISO_15444_1"
        assert float(b.LossyImageCompressionRatio) > 2.0
        diff = np.abs(a.pixel_array.astype(np.int32) - b.pixel_array.astype(np.int32))
        assert diff.max() > 0 and diff.mean() < 30  # close, not equal (stored units, 12-bit)


def test_generate_jpeg_baseline_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "jb"
    code, text = run("generate", "-m", "ct-pelvis", "--steps", "2", "--slices", "2", "--transfer-syntax",
                     "jpeg-baseline", "-o", str(out))
    assert code != 0 and "8-bit" in text and "Traceback" not in text
    assert not out.exists()
    code, text = run("generate", "-m", "ct-pelvis", "--format", "png", "--transfer-syntax", "rle", "-o", str(out))
    assert code != 0 and "--format dicom" in text


@pytest.fixture(scope="module")
def real_ct(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real CT slices (int16 HU) as .npy; the third doubled (-2048..6142, beyond 12 bits), so the
    series needs 16-bit signed storage."""
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct" / "chest_pyradiomics_lung1.nrrd")))
    vol = hu[20:23, ::4, ::4].astype(np.int16)
    vol[2] *= 2
    path = tmp_path_factory.mktemp("ct") / "ct.npy"
    np.save(path, vol)
    return path


@pytest.mark.parametrize("ts", (*LOSSLESS, "jpeg2000-lossy"))
def test_to_dicom_real_ct_roundtrip(real_ct: Path, tmp_path: Path, ts: str) -> None:
    hu = np.load(real_ct)
    out = tmp_path / ts
    code, text = run("to-dicom", str(real_ct), "-m", "ct-chest", "--spacing", "2.7,2.7,5", "--seed", "2",
                     "-o", str(out), "--transfer-syntax", ts, "--json")
    assert code == 0, text
    assert json.loads(text)["transfer_syntax"]["name"] == ts
    dsets = sorted(_files(out), key=lambda d: d.InstanceNumber)
    assert [d.PixelRepresentation for d in dsets] == [1, 1, 1]  # the doubled slice needs signed 16-bit
    for k, ds in enumerate(dsets):
        errors, _ = dciodvfy(Path(ds.filename))
        assert errors == [], (ts, errors)
        back = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        if ts == "jpeg2000-lossy":
            assert ds.LossyImageCompression == "01" and ds.file_meta.TransferSyntaxUID == JPEG2000
            assert 0 < np.abs(back - hu[k]).mean() < 0.01 * float(np.ptp(hu[k]))  # close, not equal
        else:
            assert np.array_equal(back, hu[k].astype(np.float64)), ts
            assert ds.SyntheticData == "NO"  # real pixels stay de-identified real data


def test_to_dicom_jpeg_baseline_8bit_radiograph(shared_data: Path, tmp_path: Path) -> None:
    """A real 8-bit chest X-ray as JPEG baseline: 8 bits allocated, lossy attributes, close pixels."""
    png = sorted((shared_data / "xr" / "nih_cxr14_256" / "normal").glob("*.png"))[0]
    img = np.asarray(Image.open(png).convert("L"))
    src = tmp_path / "xr.npy"
    np.save(src, img)
    out = tmp_path / "jb"
    code, text = run("to-dicom", str(src), "-m", "xr-chest", "--spacing", "0.7,0.7,1", "--seed", "4",
                     "-o", str(out), "--transfer-syntax", "jpeg-baseline")
    assert code == 0, text
    (ds,) = _files(out)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1.5
    errors, _ = dciodvfy(Path(ds.filename))
    assert errors == [], errors
    assert np.abs(ds.pixel_array.astype(np.int32) - img.astype(np.int32)).mean() < 3


def test_to_dicom_jpeg_baseline_refuses_16bit_iods(shared_data: Path, tmp_path: Path) -> None:
    """8-bit MR still cannot be JPEG baseline (the MR Image module allows 16 bits allocated only)."""
    out = tmp_path / "mr"
    code, text = run("to-dicom", str(shared_data / "mr" / "brain_stroke_t1.nii.gz"), "-m", "mr-brain",
                     "-o", str(out), "--transfer-syntax", "jpeg-baseline")
    assert code != 0 and "8-bit" in text and "Traceback" not in text
    assert not out.exists()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Orthanc:
    try:
        o = start_orthanc(tmp_path_factory.mktemp("orthanc-ts"), aet="TSPACS")
    except RuntimeError as err:
        pytest.fail(str(err))
    yield o  # type: ignore[misc]
    o.stop()


def _push(o: Orthanc, folder: Path) -> None:
    code, text = run("push", str(folder), "--host", "127.0.0.1", "--port", str(o.dicom_port),
                     "--called-aet", o.aet, "--timeout", "10", "--no-progress", "--json")
    assert code == 0, text


@pytest.mark.parametrize("ts", ("jpeg-ls", "jpeg2000-lossy", "implicit"))
def test_push_each_run_lands_with_its_pixels(orthanc: Orthanc, generated: dict[str, Path], ts: str) -> None:
    """push proposes each file's own syntax (uncompressed ones also as the other little-endian one):
    Orthanc stores compressed files as sent and every decoded pixel is the same."""
    orthanc.clear()
    _push(orthanc, generated[ts])
    stored = orthanc.instance_uids()
    dsets = _files(generated[ts])
    assert set(stored) == {str(d.SOPInstanceUID) for d in dsets}
    for ds in dsets:
        back = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{stored[str(ds.SOPInstanceUID)]}/file")))
        if TransferSyntax(ts).compressed:
            assert back.file_meta.TransferSyntaxUID == TransferSyntax(ts).uid
        assert np.array_equal(back.pixel_array, ds.pixel_array)
