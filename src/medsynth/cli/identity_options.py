"""The identity options ``medsynth generate`` shares with ``to-dicom`` (``--uid-root``,
``--name-prefix``, ``--id-prefix``, ``--sex``, ``--age``, ``--study-dates``) and ``--no-progress``:
parsed here into an :class:`~medsynth.dicom_io.identity.IdentityOptions` that the library uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_NAMES = ("uid_root", "name_prefix", "id_prefix", "sex", "age", "study_dates")


def identity_options(func: F) -> F:
    """Decorator for ``generate``: adds the options and hands the command ``identity``
    (IdentityOptions or None when none is given), ``uid_root`` and ``no_progress`` keyword arguments."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in _NAMES}
        if kwargs.get("cohort") is not None:
            for k, v in given.items():
                if v is not None:
                    raise click.UsageError(f"--{k.replace('_', '-')} cannot be combined with --cohort "
                                           "(the cohort file sets it)")
        identity = None
        if any(given[k] is not None for k in _NAMES[1:]):
            from medsynth.cli.to_dicom import _parse_age, _parse_dates
            from medsynth.dicom_io.identity import IdentityOptions, Sex

            defaults = IdentityOptions()
            identity = IdentityOptions(
                name_prefix=given["name_prefix"] or defaults.name_prefix,
                id_prefix=given["id_prefix"] or defaults.id_prefix,
                sex=Sex(given["sex"]) if given["sex"] else defaults.sex,
                age_years=_parse_age(given["age"]) if given["age"] else defaults.age_years,
                study_dates=_parse_dates(given["study_dates"]) if given["study_dates"] else defaults.study_dates)
        if given["uid_root"] is not None:
            from medsynth.dicom_io.uids import normalise_root

            normalise_root(given["uid_root"])  # ConfigError before anything is sampled
        return func(*args, identity=identity, uid_root=given["uid_root"], **kwargs)

    options = [
        click.option("--uid-root", metavar="ROOT", help="UID prefix (default 2.25 UUID-derived UIDs)."),
        click.option("--name-prefix", metavar="TEXT", help="Family name of every patient [default: SYNTHETIC]."),
        click.option("--id-prefix", metavar="TEXT", help="Start of PatientID and AccessionNumber [default: SYN]."),
        click.option("--sex", type=click.Choice(["F", "M", "O", "random"]), help="PatientSex [default: random]."),
        click.option("--age", metavar="YEARS", help="Age in years at the first study, or MIN-MAX [default: 25-85]."),
        click.option("--study-dates", metavar="FROM:TO",
                     help="Study dates YYYY-MM-DD[:YYYY-MM-DD] [default: 2020-01-01:2024-12-31]."),
        click.option("--no-progress", is_flag=True, help="No progress bar (batch scripts, CI logs)."),
    ]
    out: Any = wrapper
    for opt in reversed(options):
        out = opt(out)
    return out  # type: ignore[no-any-return]
