"""Provenance: origin markers per pixel origin and the public reader of the private block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.provenance import PixelOrigin, Provenance, read_private_provenance
from medsynth.dicom_io.writer import WriterOptions, write_volume
from medsynth.presets import get_preset


def test_private_block_reads_back_and_real_data_has_no_input_hash(tmp_path: Path) -> None:
    geom = VolumeGeometry.axial((8, 8), (1.0, 1.0), 1.0, 1)
    gen = Provenance(model_id="ct-body", seed=3, condition="chest", pack_identity="ee" * 32)
    m = write_volume(np.zeros((1, 8, 8)), geom, get_preset("ct-chest"), tmp_path / "g", WriterOptions(seed=1), gen)
    back = read_private_provenance(pydicom.dcmread(tmp_path / "g" / m["files"][0]["path"]))
    assert back["condition"] == "chest" and back["pack_identity"] == "ee" * 32 and back["origin"] == "generated"
    real = Provenance(source_sha256="ab" * 32)
    assert real.pixel_origin is PixelOrigin.REAL and "source_sha256" not in real.file_fields()
    m = write_volume(np.zeros((1, 8, 8)), geom, get_preset("ct-chest"), tmp_path / "r", WriterOptions(seed=1), real)
    ds = pydicom.dcmread(tmp_path / "r" / m["files"][0]["path"])
    assert read_private_provenance(ds)["origin"] == "real" and "source_sha256" not in read_private_provenance(ds)
    assert m["provenance"]["source_sha256"] == "ab" * 32  # the local manifest keeps it
    assert read_private_provenance(pydicom.Dataset()) == {}
