"""Synthetic patient and study identities that look like worklist entries but are clearly fake.

Every value is drawn from a random generator seeded by the run's entropy and the patient/study
index, so a seeded run gives the same identities whatever order the series are written in. The
entropy itself comes from the run's UID namespace (:mod:`medsynth.dicom_io.uids`: preset, pack
identity, input hash, options, and a nonce unless reproducible), so two runs that differ in any of
those get different PatientIDs and AccessionNumbers even with the same seed. Nothing here is ever
taken from an input file.

Dates are consistent: a patient's first study date is drawn from ``study_dates``, the birth date is
chosen so that the age on that day is the drawn age, later studies follow in date order, and
``PatientAge`` is computed from BirthDate and StudyDate (:func:`age_on`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from enum import Enum

import numpy as np

from medsynth.errors import ConfigError

# Given names used for synthetic patients: common, gender-matched, and combined with the family
# name prefix (default "SYNTHETIC") so that no entry can be mistaken for a real person.
_GIVEN = {
    "F": ("ALICE", "AMARA", "ANNA", "BEATRIZ", "CHLOE", "CLARA", "DANA", "EDITH", "ELENA", "EMMA", "FATIMA",
          "FRIDA", "GRACE", "HANA", "HELEN", "IDA", "INES", "IRIS", "JUNE", "KARIN", "LAILA", "LENA", "LUCIA",
          "MAYA", "MEI", "MIRA", "NADIA", "NORA", "OLGA", "PAULA", "PRIYA", "ROSA", "RUTH", "SARA", "SOFIA",
          "TARA", "URSULA", "VERA", "YUKI", "ZOE"),
    "M": ("ADAM", "AHMED", "ARJUN", "BRUNO", "CARLOS", "DAVID", "DMITRI", "EMIL", "ERIK", "FELIX", "FINN",
          "GABRIEL", "HASSAN", "HUGO", "IVAN", "JAMES", "JONAS", "KAI", "KENJI", "LEO", "LUCA", "MARCO",
          "MATEO", "MILAN", "NIKO", "OMAR", "OSCAR", "PAUL", "PEDRO", "RAVI", "SAMUEL", "SVEN", "TOMAS",
          "VIKTOR", "WEI", "XAVIER", "YUSUF", "ZORAN", "ANTON", "BORIS"),
    "O": ("ALEX", "ANDY", "ARIEL", "CHARLIE", "DREW", "ELI", "JESSE", "JORDAN", "KIM", "MORGAN", "NOA",
          "QUINN", "RENE", "RILEY", "ROBIN", "SAM", "SASHA", "TONI", "YAEL", "ZHEN"),
}

_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
    starts every PatientID and AccessionNumber. ``age_years`` is an inclusive (min, max) range for
    the age at the first study. Study dates lie in ``study_dates`` (inclusive).
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
    """One synthetic patient (PatientName as DICOM PN, PatientID, sex, birth date, study dates).

    ``study_dates`` are the patient's studies in date order (index = study index); ``age_years``
    is the age at the first one.
    """

    name: str
    patient_id: str
    sex: str
    age_years: int
    birth_date: dt.date
    study_dates: tuple[dt.date, ...] = ()
    study_times: tuple[dt.time, ...] = ()


@dataclass(frozen=True)
class StudyIdentity:
    """One synthetic study: date/time, AccessionNumber, StudyID, and the patient's age that day."""

    date: dt.date
    time: dt.time
    accession: str
    study_id: str
    age_years: int = 0


def run_entropy(seed: int | None, namespace: str = "") -> int:
    """The entropy all identities of a run derive from.

    With a seed: a hash of the run's namespace and the seed (the same namespace and seed give the
    same identities, a different preset, pack, input or option gives others). Without: fresh.
    """
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"medsynth-identity/{namespace}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _token(entropy: int, *parts: object, length: int) -> str:
    """``length`` base-36 characters from a hash of the run entropy and ``parts`` (IDs, accessions)."""
    text = "/".join(["medsynth-id", str(entropy), *(str(p) for p in parts)])
    n = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(out)


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years between ``birth`` and ``day`` (what PatientAge reports)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _minus_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def make_patient(options: IdentityOptions, entropy: int, index: int, n_studies: int = 1) -> PatientIdentity:
    """Synthetic patient number ``index`` of a run with ``entropy`` (deterministic), with the dates
    of its ``n_studies`` studies (sorted)."""
    rng = np.random.default_rng([abs(entropy), 1, index])
    sex = options.sex.value if options.sex is not Sex.RANDOM else ("F", "M")[int(rng.integers(2))]
    given = _GIVEN[sex][int(rng.integers(len(_GIVEN[sex])))]
    initial = chr(ord("A") + int(rng.integers(26)))
    age = int(rng.integers(options.age_years[0], options.age_years[1] + 1))
    d0, d1 = options.study_dates
    span = (d1 - d0).days
    n = max(1, n_studies)
    # (day, second of the working day) per study, sorted: studies are in date and time order
    when = sorted(zip(rng.integers(0, span + 1, size=n).tolist(),
                      rng.integers(7 * 3600, 19 * 3600, size=n).tolist(), strict=True))
    dates = tuple(d0 + dt.timedelta(days=int(d)) for d, _ in when)
    times = tuple(dt.time(s // 3600, s % 3600 // 60, s % 60) for _, s in when)
    first = dates[0]
    # birth: between `age + 1` years (exclusive) and `age` years before the first study
    latest = _minus_years(first, age)
    earliest = _minus_years(first, age + 1) + dt.timedelta(days=1)
    birth = earliest + dt.timedelta(days=int(rng.integers((latest - earliest).days + 1)))
    if birth.year < 1900:
        birth = dt.date(1900, 1, 1)
    return PatientIdentity(
        name=f"{options.name_prefix}^{given}^{initial}",
        patient_id=f"{options.id_prefix}{_token(entropy, 'patient', index, length=12)}"[:64],
        sex=sex,
        age_years=age_on(birth, first),
        birth_date=birth,
        study_dates=dates,
        study_times=times,
    )


def make_study(options: IdentityOptions, entropy: int, patient: PatientIdentity, patient_index: int,
               index: int) -> StudyIdentity:
    """Synthetic study ``index`` of patient number ``patient_index`` (deterministic).

    Date and time are the patient's ``study_dates[index]``/``study_times[index]`` (so studies are
    in date and time order); the
    AccessionNumber is the ID prefix plus base-36 characters hashed from the run entropy, the
    patient and the study (unique per namespace: 36^13 values with the default prefix).
    """
    k = min(index, len(patient.study_dates) - 1)
    date, time = patient.study_dates[k], patient.study_times[k]
    length = max(16 - len(options.id_prefix), 8)
    return StudyIdentity(
        date=date,
        time=time,
        accession=f"{options.id_prefix}{_token(entropy, 'study', patient_index, index, length=length)}"[:16],
        study_id=str(index + 1),
        age_years=age_on(patient.birth_date, date),
    )


def age_string(years: int) -> str:
    """DICOM AS value, e.g. ``054Y``."""
    return f"{years:03d}Y"
