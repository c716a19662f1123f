"""DICOM write throughput: medsynth's writer vs a plain pydicom loop, 512×512 CT slices.

Data: the real 512×512×48 chest CT ``../shared/data/ct/chest_pyradiomics_lung1.nrrd`` (int16 HU).

* ``medsynth write_volume``: the full writer — every module and marker, private provenance block,
  per-file temp name + rename, then DICOMDIR (pydicom FileSet) and manifest.json.
* ``medsynth streaming only``: the same without the DICOMDIR/manifest step (``begin_series`` +
  ``write_slice``), i.e. what one slice costs while a sampler feeds the writer.
* ``plain pydicom loop``: per slice a minimal CT dataset (patient/study/series/image-plane/pixel
  attributes, new UIDs) saved with ``Dataset.save_as``; no DICOMDIR, no manifest.

Usage: ``python benchmarks/bench_dicom_write.py [--repeats 3] [--slices 48]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.writer import (
    PixelEncoding,
    Provenance,
    SyntheticStudyWriter,
    WriterOptions,
    write_volume,
)
from medsynth.presets import get_preset

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def plain_pydicom(hu: np.ndarray, geom: VolumeGeometry, out: Path) -> None:
    """A plain loop: minimal CT header per slice, int16 pixels, save_as."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = "TEST^PATIENT"
        ds.PatientID = "123"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(geom.slice_position(k))
        ds.ImageOrientationPatient = [*geom.row_cosines, *geom.column_cosines]
        ds.PixelSpacing = [geom.spacing[1], geom.spacing[0]]
        ds.SliceThickness = geom.spacing[2]
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu[k].astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(out / f"{k:05d}.dcm", enforce_file_format=True)


def medsynth_full(hu: np.ndarray, geom: VolumeGeometry, out: Path) -> None:
    write_volume(hu, geom, get_preset("ct-chest"), out, WriterOptions(seed=1), Provenance(source_sha256="0" * 64))


def medsynth_streaming(hu: np.ndarray, geom: VolumeGeometry, out: Path) -> None:
    preset = get_preset("ct-chest")
    enc = PixelEncoding.fit(preset, float(hu.min()), float(hu.max()))
    w = SyntheticStudyWriter(out, preset, WriterOptions(seed=1), Provenance())
    w.begin_series(geom, (hu.shape[1], hu.shape[2]), encoding=enc)
    for k in range(hu.shape[0]):
        w.write_slice(k, hu[k])


def measure(fn: Callable[[np.ndarray, VolumeGeometry, Path], None], hu: np.ndarray, geom: VolumeGeometry,
            repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            t0 = time.perf_counter()
            fn(hu, geom, out)
            rates.append(hu.shape[0] / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=48)
    args = ap.parse_args()
    img = sitk.ReadImage(str(DATA / "ct" / "chest_pyradiomics_lung1.nrrd"))
    hu = sitk.GetArrayFromImage(img)[: args.slices]
    geom = VolumeGeometry.from_sitk(img)
    print(f"{hu.shape[0]} slices of {hu.shape[1]}x{hu.shape[2]} {hu.dtype} HU, {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs\n")
    print("| writer | slices/s (median) | min–max |")
    print("|---|---|---|")
    for label, fn in (("plain pydicom loop", plain_pydicom), ("medsynth streaming only", medsynth_streaming),
                      ("medsynth write_volume (+DICOMDIR, manifest)", medsynth_full)):
        rates = measure(fn, hu, geom, args.repeats)
        print(f"| {label} | {statistics.median(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} |")


if __name__ == "__main__":
    main()
