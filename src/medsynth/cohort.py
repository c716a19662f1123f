"""Cohort files: a TOML description of a synthetic patient population, generated in one call.

A cohort has a number of patients, a sex distribution (weights of F, M, O), age bands (weighted
inclusive year ranges), study dates, name/ID prefixes and a mix of study types (preset, condition,
studies per patient, series, slices, weight). Each patient draws one study type, a sex and an age
band from the seeded distributions; patients that drew the same (study type, sex, age band) are
generated together as one seeded ``generate`` run (its own seed, derived from the cohort seed, so no
two groups share pixels) in ``out/Gnn-<preset>-<sex>/``; ``cohort.json`` lists the groups. The
whole cohort is validated (keys, types, ranges, presets, conditions of the packs) before anything is
written. See ``examples/cohort_small.toml``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from medsynth.dicom_io.identity import IdentityOptions, Sex
from medsynth.errors import ConfigError, InputError, MedsynthError

_TOP_KEYS = {"seed", "patients", "name_prefix", "id_prefix", "study_dates", "transfer_syntax", "steps",
             "sex", "age", "study"}
_STUDY_KEYS = {"preset", "condition", "studies", "series", "slices", "weight"}
_AGE_KEYS = {"min", "max", "weight"}


@dataclass(frozen=True)
class StudyType:
    """One entry of the study mix: what a patient who draws it gets."""

    preset: str
    condition: str | None = None
    studies: int = 1
    series: int = 1
    slices: int = 16
    weight: float = 1.0


@dataclass(frozen=True)
class AgeBand:
    """Inclusive age range in years at the first study, with its weight."""

    min: int
    max: int
    weight: float = 1.0


@dataclass(frozen=True)
class Cohort:
    """A validated cohort file (see the module docstring)."""

    seed: int
    patients: int
    studies: tuple[StudyType, ...]
    sex: tuple[tuple[str, float], ...] = (("F", 0.5), ("M", 0.5))
    ages: tuple[AgeBand, ...] = (AgeBand(25, 85),)
    name_prefix: str = "SYNTHETIC"
    id_prefix: str = "SYN"
    study_dates: tuple[dt.date, dt.date] = (dt.date(2020, 1, 1), dt.date(2024, 12, 31))
    transfer_syntax: str = "explicit"
    steps: int | None = None


@dataclass(frozen=True)
class CohortGroup:
    """Patients that drew the same study type, sex and age band: one generate run."""

    index: int
    study: StudyType
    sex: str
    age: AgeBand
    patients: int
    seed: int

    @property
    def folder(self) -> str:
        return f"G{self.index:02d}-{self.study.preset}-{self.sex}"


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"cohort file: {message}", path)


def _int(path: Path, where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(path, f"{where} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _weight(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise _fail(path, f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _keys(path: Path, where: str, table: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(table, dict):
        raise _fail(path, f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})")
    return table


def load_cohort(path: str | Path) -> Cohort:
    """Read and validate a cohort TOML file; ConfigError/InputError naming the file and the problem."""
    from medsynth.dicom_io.transfer_syntax import TransferSyntax
    from medsynth.generate import resolve_pack
    from medsynth.presets import get_preset

    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("cohort file not found", p) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cohort file is unreadable: {err}", p) from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"cohort file is not valid TOML: {err}", p) from None
    top = _keys(p, "the cohort file", raw, _TOP_KEYS)
    if "seed" not in top or "patients" not in top or "study" not in top:
        raise _fail(p, "needs seed, patients and at least one [[study]]")
    seed = _int(p, "seed", top["seed"], 0, 2**63 - 1)
    patients = _int(p, "patients", top["patients"], 1, 10000)

    studies_raw = top["study"]
    if not isinstance(studies_raw, list) or not studies_raw:
        raise _fail(p, "[[study]] must be a list of tables with at least one entry")
    studies = []
    for i, entry in enumerate(studies_raw, start=1):
        where = f"[[study]] {i}"
        t = _keys(p, where, entry, _STUDY_KEYS)
        if "preset" not in t or not isinstance(t["preset"], str):
            raise _fail(p, f"{where} needs preset = \"ct-chest\" (or another preset name)")
        try:
            preset = get_preset(t["preset"])
        except MedsynthError as err:
            raise _fail(p, f"{where}: {err}") from None
        cond = t.get("condition")
        if cond is not None and not isinstance(cond, str):
            raise _fail(p, f"{where}: condition must be a string")
        try:
            labels = resolve_pack(preset, None).metadata.labels
        except MedsynthError as err:
            raise _fail(p, f"{where}: {err}") from None
        if (cond or preset.default_condition) not in labels:
            raise _fail(p, f"{where}: unknown condition {cond!r} for {preset.name}; choose one of: {', '.join(labels)}")
        studies.append(StudyType(
            preset=preset.name, condition=cond,
            studies=_int(p, f"{where} studies", t.get("studies", 1), 1, 100),
            series=_int(p, f"{where} series", t.get("series", 1), 1, 100),
            slices=_int(p, f"{where} slices", t.get("slices", 16), 1, 10000),
            weight=_weight(p, f"{where} weight", t.get("weight", 1.0)),
        ))
    if sum(s.weight for s in studies) <= 0:
        raise _fail(p, "the [[study]] weights add up to 0")

    sex_raw = _keys(p, "[sex]", top.get("sex", {"F": 0.5, "M": 0.5}), {"F", "M", "O"})
    sex = tuple((k, _weight(p, f"[sex] {k}", v)) for k, v in sorted(sex_raw.items()))
    if sum(w for _, w in sex) <= 0:
        raise _fail(p, "the [sex] weights add up to 0")

    ages_raw = top.get("age", [{"min": 25, "max": 85}])
    if not isinstance(ages_raw, list) or not ages_raw:
        raise _fail(p, "[[age]] must be a list of tables (min, max, weight)")
    ages = []
    for i, entry in enumerate(ages_raw, start=1):
        t = _keys(p, f"[[age]] {i}", entry, _AGE_KEYS)
        lo = _int(p, f"[[age]] {i} min", t.get("min"), 0, 120)
        hi = _int(p, f"[[age]] {i} max", t.get("max"), 0, 120)
        if lo > hi:
            raise _fail(p, f"[[age]] {i}: min {lo} > max {hi}")
        ages.append(AgeBand(lo, hi, _weight(p, f"[[age]] {i} weight", t.get("weight", 1.0))))
    if sum(a.weight for a in ages) <= 0:
        raise _fail(p, "the [[age]] weights add up to 0")

    dates = top.get("study_dates", ["2020-01-01", "2024-12-31"])
    try:
        d0, d1 = (dt.date.fromisoformat(str(d)) for d in dates)
    except (TypeError, ValueError):
        raise _fail(p, f"study_dates must be [\"YYYY-MM-DD\", \"YYYY-MM-DD\"], got {dates!r}") from None
    ts = top.get("transfer_syntax", "explicit")
    try:
        TransferSyntax.parse(ts)
    except ConfigError as err:
        raise _fail(p, str(err)) from None
    steps = top.get("steps")
    cohort = Cohort(seed=seed, patients=patients, studies=tuple(studies), sex=sex, ages=tuple(ages),
                    name_prefix=str(top.get("name_prefix", "SYNTHETIC")), id_prefix=str(top.get("id_prefix", "SYN")),
                    study_dates=(d0, d1), transfer_syntax=ts,
                    steps=None if steps is None else _int(p, "steps", steps, 1, 100000))
    try:
        IdentityOptions(name_prefix=cohort.name_prefix, id_prefix=cohort.id_prefix, study_dates=cohort.study_dates)
    except ConfigError as err:
        raise _fail(p, str(err)) from None
    return cohort


def _pick(rng: np.random.Generator, weights: list[float]) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def plan_cohort(cohort: Cohort) -> list[CohortGroup]:
    """Draw each patient's study type, sex and age band (seeded); group equal draws."""
    rng = np.random.default_rng(np.random.SeedSequence(cohort.seed, spawn_key=(0,)))
    counts: dict[tuple[int, int, int], int] = {}
    for _ in range(cohort.patients):
        key = (_pick(rng, [s.weight for s in cohort.studies]), _pick(rng, [w for _, w in cohort.sex]),
               _pick(rng, [a.weight for a in cohort.ages]))
        counts[key] = counts.get(key, 0) + 1
    groups = []
    for g, (key, n) in enumerate(sorted(counts.items())):
        group_seed = int(np.random.SeedSequence(cohort.seed, spawn_key=(1, g)).generate_state(1, np.uint64)[0] >> 1)
        groups.append(CohortGroup(index=g, study=cohort.studies[key[0]], sex=cohort.sex[key[1]][0],
                                  age=cohort.ages[key[2]], patients=n, seed=group_seed))
    return groups


def generate_cohort(cohort: Cohort, out_dir: str | Path, force: bool = False, threads: int | None = None,
                    on_group: Callable[[CohortGroup, int], None] | None = None) -> dict[str, Any]:
    """Generate every group of ``plan_cohort(cohort)`` under ``out_dir``; write and return
    ``cohort.json`` (the groups, their folders, patients, sexes, ages and files)."""
    from medsynth.generate import GenerateConfig, generate
    from medsynth.outputs import atomic_write_json, require_usable_output

    out = Path(out_dir)
    require_usable_output(out, force, "replace the cohort's groups")
    groups = plan_cohort(cohort)
    records: list[dict[str, Any]] = []
    for k, group in enumerate(groups):
        if on_group is not None:
            on_group(group, k)
        identity = IdentityOptions(name_prefix=cohort.name_prefix, id_prefix=cohort.id_prefix,
                                   sex=Sex(group.sex), age_years=(group.age.min, group.age.max),
                                   study_dates=cohort.study_dates)
        cfg = GenerateConfig(modality=group.study.preset, out_dir=out / group.folder, patients=group.patients,
                             studies=group.study.studies, series=group.study.series, slices=group.study.slices,
                             condition=group.study.condition, seed=group.seed, steps=cohort.steps, threads=threads,
                             force=force, reproducible_uids=True, transfer_syntax=cohort.transfer_syntax,
                             identity=identity)
        result = generate(cfg)
        records.append({"folder": group.folder, "preset": group.study.preset, "condition": result.condition,
                        "sex": group.sex, "age_years": [group.age.min, group.age.max], "patients": group.patients,
                        "studies_per_patient": group.study.studies, "series": result.series, "files": result.files,
                        "seed": group.seed, "manifest": f"{group.folder}/manifest.json"})
    summary: dict[str, Any] = {"format_version": 1, "seed": cohort.seed, "patients": cohort.patients,
               "studies": sum(r["patients"] * r["studies_per_patient"] for r in records),
               "files": sum(r["files"] for r in records), "groups": records}
    atomic_write_json(out / "cohort.json", summary)
    return summary


def cohort_summary_text(summary: Mapping[str, Any]) -> str:
    """One line per group, for the terminal."""
    return "\n".join(f"{g['folder']}: {g['patients']} patient(s) {g['sex']} {g['age_years'][0]}-{g['age_years'][1]} y, "
                     f"{g['preset']} {g['condition']}, {g['files']} files" for g in summary["groups"]) + "\n" + json.dumps(
        {"patients": summary["patients"], "studies": summary["studies"], "files": summary["files"]})
