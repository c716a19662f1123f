"""Header catalogues: vendors, models, software versions, techniques, kernels, protocols, series
descriptions, synthetic institutions, stations, referring physicians and patient names, with
realistic relative frequencies, read from the package data file ``catalogue.toml``.

Everything is drawn from a ``numpy.random.Generator`` the caller seeds, so a seeded cohort gets the
same headers every time. A :class:`Fleet` fixes which scanner (and software version) stands at each
station of each institution, so a station name always comes with the same model; a study draws an
institution, one of its stations for the modality, a referring physician and a protocol
(:func:`draw_study_header`). CT technique (kVp, effective mAs, pitch, CTDIvol) is drawn per study
and CTDIvol follows from kVp and mAs (:func:`ct_technique`). Names in a chosen character set come
from :func:`patient_name` (non-ASCII names need SpecificCharacterSet ISO_IR 192, which medsynth
writes on every file).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from medsynth.errors import ConfigError

Charset = Literal["ascii", "latin", "international"]
CHARSETS: tuple[str, ...] = ("ascii", "latin", "international")
CatalogueModality = Literal["CT", "MR", "DX"]


@functools.lru_cache(maxsize=1)
def load_catalogue() -> Mapping[str, Any]:
    """The parsed ``catalogue.toml`` of the package (cached)."""
    text = resources.files("medsynth").joinpath("catalogue.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for key in ("institution", "referring_family", "names", "ct", "mr", "dx"):
        if key not in data:
            raise ConfigError(f"catalogue.toml lacks {key!r}")  # a broken installation
    return data


def weighted(rng: np.random.Generator, pairs: Sequence[Sequence[Any]]) -> Any:
    """One value of ``[[value, weight], ...]``, drawn by weight."""
    w = np.asarray([float(p[1]) for p in pairs], dtype=np.float64)
    return pairs[int(rng.choice(len(pairs), p=w / w.sum()))][0]


def _pick_table(rng: np.random.Generator, tables: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return weighted(rng, [(t, t.get("weight", 1.0)) for t in tables])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Scanner:
    """A scanner model with the software version installed at its station."""

    modality: str
    manufacturer: str
    model: str
    software: str
    style: str = ""
    localizer: str = ""
    kernels: Mapping[str, str] = field(default_factory=dict)
    field_t: float | None = None
    portable: bool = False


@dataclass(frozen=True)
class Station:
    """One station of an institution: its name, AE-like station name and scanner."""

    institution: str
    department: str
    name: str
    serial: str
    scanner: Scanner


@dataclass(frozen=True)
class Fleet:
    """The stations of every institution, per modality (seeded by :func:`make_fleet`)."""

    stations: Mapping[str, Mapping[str, tuple[Station, ...]]]  # institution -> modality -> stations
    weights: Mapping[str, float]


def _initials(name: str) -> str:
    return "".join(w[0] for w in name.split() if w[0].isalpha()).upper()[:4]


def make_fleet(rng: np.random.Generator) -> Fleet:
    """Place a scanner (drawn by market weight) and a software version at every station."""
    cat = load_catalogue()
    stations: dict[str, dict[str, tuple[Station, ...]]] = {}
    weights: dict[str, float] = {}
    for inst in cat["institution"]:
        name = str(inst["name"])
        weights[name] = float(inst.get("weight", 1.0))
        per: dict[str, tuple[Station, ...]] = {}
        for modality, count in sorted(inst["stations"].items()):
            tables = cat[modality.lower()]["scanner"]
            made = []
            for k in range(int(count)):
                fixed = [t for t in tables if not t.get("portable", False)]
                made.append(_station(rng, name, inst, modality, f"{_initials(name)}{modality}{k + 1}", fixed))
            if modality == "DX":  # one mobile unit per institution for bedside (AP) films
                mobile = [t for t in tables if t.get("portable", False)]
                made.append(_station(rng, name, inst, modality, f"{_initials(name)}MOBILE1", mobile))
            per[modality] = tuple(made)
        stations[name] = per
    return Fleet(stations, weights)


def _station(rng: np.random.Generator, name: str, inst: Mapping[str, Any], modality: str, station: str,
             tables: Sequence[Mapping[str, Any]]) -> Station:
    t = _pick_table(rng, tables)
    scanner = Scanner(modality=modality, manufacturer=str(t["manufacturer"]), model=str(t["model"]),
                      software=str(weighted(rng, t["software"])), style=str(t.get("style", "")),
                      localizer=str(t.get("localizer", "")), kernels=dict(t.get("kernels", {})),
                      field_t=float(t["field_t"]) if "field_t" in t else None,
                      portable=bool(t.get("portable", False)))
    serial = f"{int(rng.integers(10000, 99999))}"
    return Station(institution=name, department=str(inst.get("department", "")), name=station, serial=serial,
                   scanner=scanner)


@dataclass(frozen=True)
class StudyHeader:
    """What one study's headers say beyond the pixels: where, on what, for whom, which protocol."""

    station: Station
    referring_physician: str
    study_description: str
    view: str = ""  # DX: PA or AP
    technique: Mapping[str, Any] = field(default_factory=dict)

    def equipment(self) -> dict[str, Any]:
        """General Equipment and institution attributes (keyword -> value) for every series."""
        s = self.station
        return {
            "Manufacturer": s.scanner.manufacturer,
            "ManufacturerModelName": s.scanner.model,
            "SoftwareVersions": s.scanner.software.split("\\") if "\\" in s.scanner.software else s.scanner.software,
            "DeviceSerialNumber": s.serial,
            "StationName": s.name,
            "InstitutionName": s.institution,
            "InstitutionalDepartmentName": s.department,
            "ReferringPhysicianName": self.referring_physician,
        }


def ct_technique(rng: np.random.Generator) -> dict[str, Any]:
    """kVp, effective mAs, tube current, rotation time, pitch and CTDIvol (mGy) of one CT acquisition;
    CTDIvol = effective mAs / 100 × the catalogue's CTDIvol per 100 mAs at that kVp."""
    t = load_catalogue()["ct"]["technique"]
    kvp = int(weighted(rng, t["kvp"]))
    mas = float(round(rng.uniform(*t["mas"])))
    pitch = float(weighted(rng, t["pitch"]))
    rotation = float(weighted(rng, t["rotation_s"]))
    ma = mas * pitch / rotation  # effective mAs = mA × rotation time / pitch
    ctdi = mas / 100.0 * float(t["ctdi_per_100mas"][str(kvp)])
    return {"kvp": kvp, "mas": round(mas), "ma": round(ma), "rotation_s": rotation, "pitch": pitch,
            "ctdivol": round(ctdi, 2), "exposure_ms": round(rotation * 1000)}


def draw_study_header(rng: np.random.Generator, fleet: Fleet, modality: CatalogueModality, region: str) -> StudyHeader:
    """Institution (by weight), a station of it for ``modality``, a referring physician, the study
    description (protocol) of ``region`` (chest, abdomen, pelvis, brain, heart) and, for DX, the view
    (PA on a fixed station, AP on the mobile unit); CT gets its technique (:func:`ct_technique`)."""
    cat = load_catalogue()
    inst = weighted(rng, [(k, w) for k, w in fleet.weights.items()])
    stations = fleet.stations[inst][modality]
    family = cat["referring_family"][int(rng.integers(len(cat["referring_family"])))]
    referring = f"{family}^{chr(ord('A') + int(rng.integers(26)))}^^DR"
    proto = cat[modality.lower()]["protocol"].get(region)
    view = ""
    technique: dict[str, Any] = {}
    if modality == "DX":
        view = str(weighted(rng, proto["views"])) if proto else "PA"
        pool = [s for s in stations if s.scanner.portable == (view == "AP")] or list(stations)
        station = pool[int(rng.integers(len(pool)))]
        description = str(proto["study"][view]) if proto else f"XR {region.upper()}"
        t = cat["dx"]["technique"]
        technique = {"kvp": int(weighted(rng, t["kvp"])), "mas": round(float(rng.uniform(*t["mas"])), 2),
                     "sid_mm": int(t["sid_mm"][view])}
    else:
        fixed = [s for s in stations if not s.scanner.portable]
        station = fixed[int(rng.integers(len(fixed)))]
        description = str(weighted(rng, proto["study"])) if proto else f"{modality} {region.upper()}"
        if modality == "CT":
            technique = ct_technique(rng)
            technique["sharp"] = str(proto["sharp"]) if proto else "bone"
    return StudyHeader(station=station, referring_physician=referring, study_description=description[:64],
                       view=view, technique=technique)


def mr_series_description(style: str, contrast: str) -> str:
    """A vendor-style MR series description of ``contrast`` (t1, t2, flair, t1c, lge)."""
    table = load_catalogue()["mr"]["series"].get(style, {})
    return str(table.get(contrast, contrast.upper()))


def _split(entry: str) -> tuple[str, str | None]:
    alpha, _, ideo = entry.partition("=")
    return alpha, (ideo or None)


def patient_name(rng: np.random.Generator, charset: str, sex: str, prefix: str) -> str | None:
    """A PN value in ``charset`` (None for ascii: keep the plain ``PREFIX^GIVEN^INITIAL`` form).

    latin/international: an invented family and given name; ``prefix`` (e.g. SYNTHETIC) becomes the
    name suffix so the entry still reads as synthetic; CJK names carry an ideographic group when
    both parts have one (``YAMADA^TARO^^^SYNTHETIC=山田^太郎``).
    """
    if charset == "ascii":
        return None
    if charset not in CHARSETS:
        raise ConfigError(f"unknown name character set {charset!r}; choose one of: {', '.join(CHARSETS)}")
    table = load_catalogue()["names"][charset]
    fam_a, fam_i = _split(table["family"][int(rng.integers(len(table["family"])))])
    given_list = table.get(sex) or table["O"]
    giv_a, giv_i = _split(given_list[int(rng.integers(len(given_list)))])
    name = f"{fam_a}^{giv_a}^^^{prefix}"
    if fam_i and giv_i:
        name += f"={fam_i}^{giv_i}"
    return name
