"""medsynth.catalogue: seeded and deterministic, frequencies follow the weights, a station keeps its
scanner, CTDIvol follows kVp and mAs, AP chest films come from mobile units, and names in every
character set survive a DICOM round trip (ISO_IR 192)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsynth.catalogue import (
    CHARSETS,
    ct_technique,
    draw_study_header,
    load_catalogue,
    make_fleet,
    patient_name,
)
from medsynth.errors import ConfigError


def test_draws_are_seeded_and_stations_keep_their_scanner() -> None:
    def draws(seed: int) -> list[tuple[str, str, str, str]]:
        rng = np.random.default_rng(seed)
        fleet = make_fleet(rng)
        return [(h.station.name, h.station.scanner.model, h.station.scanner.software, h.study_description)
                for h in (draw_study_header(rng, fleet, "CT", "chest") for _ in range(50))]

    a = draws(1)
    assert a == draws(1) and a != draws(2)
    by_station: dict[str, set[tuple[str, str]]] = {}
    for station, model, software, _ in a:
        by_station.setdefault(station, set()).add((model, software))
    assert all(len(v) == 1 for v in by_station.values())


def test_frequencies_follow_the_weights() -> None:
    cat = load_catalogue()
    rng = np.random.default_rng(0)
    n = 1500
    vendors = Counter(make_fleet(rng).stations["Synthetic General Hospital"]["CT"][0].scanner.manufacturer
                      for _ in range(n))
    weights: Counter[str] = Counter()
    for t in cat["ct"]["scanner"]:
        weights[t["manufacturer"]] += t["weight"]
    total = sum(weights.values())
    for vendor, w in weights.items():
        assert vendors[vendor] / n == pytest.approx(w / total, abs=0.04), vendor
    kvp = Counter(ct_technique(rng)["kvp"] for _ in range(n))
    assert kvp[120] / n == pytest.approx(0.6, abs=0.04)


def test_ct_dose_follows_technique_and_ap_films_are_portable() -> None:
    rng = np.random.default_rng(3)
    per100 = load_catalogue()["ct"]["technique"]["ctdi_per_100mas"]
    for _ in range(200):
        t = ct_technique(rng)
        assert t["ctdivol"] == pytest.approx(t["mas"] / 100 * per100[str(t["kvp"])], abs=0.02)
        assert t["ma"] == pytest.approx(t["mas"] * t["pitch"] / t["rotation_s"], abs=1)
    fleet = make_fleet(rng)
    views = Counter()
    for _ in range(300):
        h = draw_study_header(rng, fleet, "DX", "chest")
        views[h.view] += 1
        assert h.station.scanner.portable == (h.view == "AP")
        assert h.technique["sid_mm"] == (1000 if h.view == "AP" else 1800)
    assert views["PA"] / 300 == pytest.approx(0.7, abs=0.08)


@pytest.mark.parametrize("charset", CHARSETS)
def test_names_round_trip_through_dicom(charset: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    names = [patient_name(rng, charset, sex, "SYNTHETIC") for sex in "FMO" * 30]
    if charset == "ascii":
        assert names == [None] * 90
        return
    assert all(n is not None and n.split("=")[0].endswith("^^^SYNTHETIC") for n in names)
    assert any(not str(n).isascii() for n in names)
    if charset == "international":
        assert any("=" in str(n) for n in names)  # an ideographic group (CJK)
    for i, name in enumerate(names[:20]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = name
        path = tmp_path / f"n{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert str(back.PatientName) == name


def test_unknown_charset_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown name character set"):
        patient_name(np.random.default_rng(0), "klingon", "F", "X")
