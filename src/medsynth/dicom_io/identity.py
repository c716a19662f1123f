"""Synthetic patient and study identities that look like worklist entries but are clearly fake.

Every value is drawn from a random generator seeded by the writer's seed and the patient/study
index, so a seeded run gives the same identities whatever order the series are written in.
Nothing here is ever taken from an input file.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from enum import Enum

import numpy as np

from medsynth.errors import ConfigError

# Given names used for synthetic patients: common, gender-matched, and combined with the family
# name prefix (default "SYNTHETIC") so that no entry can be mistaken for a real person.
_GIVEN = {
    "F": ("ALICE", "BEATRIZ", "CLARA", "DANA", "ELENA", "FATIMA", "GRACE", "HANA", "INES", "JUNE"),
    "M": ("ADAM", "BRUNO", "CARLOS", "DAVID", "EMIL", "FELIX", "GABRIEL", "HUGO", "IVAN", "JONAS"),
    "O": ("ALEX", "ROBIN", "SAM", "KIM", "NOA", "RENE", "SASHA", "TONI", "YAEL", "ZHEN"),
}


class Sex(str, Enum):
    """PatientSex (0010,0040) values; ``RANDOM`` draws F or M per patient."""

    F = "F"
    M = "M"
    O = "O"  # noqa: E741 - DICOM's own code for "other"
    RANDOM = "random"


@dataclass(frozen=True)
class IdentityOptions:
    """How synthetic patients and studies look.

    ``name_prefix`` is the family name of every patient (``SYNTHETIC^GRACE^K``), ``id_prefix``
    starts every PatientID and AccessionNumber. ``age_years`` is an inclusive (min, max) range.
    Study dates are drawn uniformly from ``study_dates`` (inclusive).
    """

    name_prefix: str = "SYNTHETIC"
    id_prefix: str = "SYN"
    sex: Sex = Sex.RANDOM
    age_years: tuple[int, int] = (25, 85)
    study_dates: tuple[dt.date, dt.date] = (dt.date(2020, 1, 1), dt.date(2024, 12, 31))

    def __post_init__(self) -> None:
        for label, value, limit in (("name prefix", self.name_prefix, 30), ("ID prefix", self.id_prefix, 8)):
            if not value or len(value) > limit or not all(c.isalnum() or c in " -_" for c in value):
                raise ConfigError(
                    f"{label} {value!r} must be 1-{limit} letters, digits, spaces, '-' or '_' (no '^' or '\\')"
                )
        lo, hi = self.age_years
        if not 0 <= lo <= hi <= 120:
            raise ConfigError(f"age range {self.age_years} must satisfy 0 <= min <= max <= 120")
        d0, d1 = self.study_dates
        if d0 > d1 or d0.year < 1900:
            raise ConfigError(f"study date range {d0}..{d1} is empty or before 1900")


@dataclass(frozen=True)
class PatientIdentity:
    """One synthetic patient (PatientName as DICOM PN, PatientID, sex, age in years)."""

    name: str
    patient_id: str
    sex: str
    age_years: int
    birth_date: dt.date


@dataclass(frozen=True)
class StudyIdentity:
    """One synthetic study: date/time, AccessionNumber, StudyID."""

    date: dt.date
    time: dt.time
    accession: str
    study_id: str


def run_entropy(seed: int | None) -> int:
    """The entropy all identities of a run derive from: the seed, or fresh randomness."""
    return seed if seed is not None else secrets.randbits(63)


def make_patient(options: IdentityOptions, entropy: int, index: int) -> PatientIdentity:
    """Synthetic patient number ``index`` of a run with ``entropy`` (deterministic)."""
    rng = np.random.default_rng([abs(entropy), 1, index])
    sex = options.sex.value if options.sex is not Sex.RANDOM else ("F", "M")[int(rng.integers(2))]
    given = _GIVEN[sex][int(rng.integers(len(_GIVEN[sex])))]
    initial = chr(ord("A") + int(rng.integers(26)))
    number = int(rng.integers(100000, 1000000))
    age = int(rng.integers(options.age_years[0], options.age_years[1] + 1))
    # birth date: `age` years before the first possible study date, minus up to a year
    anchor = options.study_dates[0]
    birth = dt.date(max(anchor.year - age - 1, 1900), 1, 1) + dt.timedelta(days=int(rng.integers(365)))
    return PatientIdentity(
        name=f"{options.name_prefix}^{given}^{initial}",
        patient_id=f"{options.id_prefix}{number:06d}{index:03d}"[:64],
        sex=sex,
        age_years=age,
        birth_date=birth,
    )


def make_study(options: IdentityOptions, entropy: int, patient: int, index: int) -> StudyIdentity:
    """Synthetic study ``index`` of patient ``patient`` (deterministic)."""
    rng = np.random.default_rng([abs(entropy), 2, patient, index])
    d0, d1 = options.study_dates
    date = d0 + dt.timedelta(days=int(rng.integers((d1 - d0).days + 1)))
    # working hours, whole seconds
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    time = dt.time(seconds // 3600, seconds % 3600 // 60, seconds % 60)
    number = int(rng.integers(1000000, 10000000))
    return StudyIdentity(
        date=date,
        time=time,
        accession=f"{options.id_prefix}{number}"[:16],
        study_id=str(index + 1),
    )


def age_string(years: int) -> str:
    """DICOM AS value, e.g. ``054Y``."""
    return f"{years:03d}Y"
