"""Cohort files: a TOML description of a synthetic patient population, generated in one call.

A cohort has a number of patients, a sex distribution (weights of F, M, O), age bands (weighted
inclusive year ranges), study dates, name/ID prefixes, the character set of patient names, and a
mix of study types (preset, condition, studies per patient, slices, weight). Each patient draws a
sex, an age band and how many study types they have (``types_per_patient``, weighted), then that
many distinct study types by weight; a type with ``studies = 2`` gives a prior and a current study.
All of a patient's studies share one identity (PatientID, name, birth date) and lie in date order.

Each study is a multi-series study of :mod:`medsynth.studies` (CT: localizer, axial, sharp kernel,
coronal and sagittal reformats; MR: every contrast of the pack; X-ray: PA or AP) with headers from
:mod:`medsynth.catalogue` (institution, station, scanner, technique, protocol, referring physician).
Output: one folder per preset (``out/ct-chest/PTpppppp/STkkkkkk/SEeeeeee/``, each with its DICOMDIR
and manifest) and ``out/cohort.json`` (every patient, study and series). The whole file is
validated (keys, types, ranges, presets, conditions of the packs) before anything is written, and
everything is seeded: the same file gives the same cohort, byte for byte. See
``examples/cohort_small.toml`` and ``examples/cohort_hospital.toml``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from medsynth.catalogue import CHARSETS, StudyHeader, draw_study_header, make_fleet, patient_name
from medsynth.dicom_io.identity import (
    IdentityOptions,
    PatientIdentity,
    Sex,
    StudyIdentity,
    make_patient,
    make_study,
    run_entropy,
)
from medsynth.dicom_io.uids import UidFactory, normalise_root, run_namespace
from medsynth.errors import ConfigError, InputError, MedsynthError
from medsynth.shard import Shard

_TOP_KEYS = {"seed", "patients", "name_prefix", "id_prefix", "study_dates", "transfer_syntax", "steps",
             "sex", "age", "study", "names", "uid_root", "types_per_patient", "multiframe"}
_STUDY_KEYS = {"preset", "condition", "studies", "slices", "weight"}
_AGE_KEYS = {"min", "max", "weight"}


@dataclass(frozen=True)
class StudyType:
    """One entry of the study mix: what a patient who draws it gets."""

    preset: str
    condition: str | None = None
    studies: int = 1
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
    names: str = "ascii"  # medsynth.catalogue.CHARSETS
    uid_root: str | None = None
    types_per_patient: tuple[tuple[int, float], ...] = ((1, 1.0),)
    multiframe: bool = False  # CT and MR series as one Legacy Converted Enhanced object each


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
    if TransferSyntax.parse(ts).eight_bit_only:
        raise _fail(p, f"transfer_syntax {ts!r} needs 8-bit pixels; generated pixels are 12-bit")
    names = top.get("names", "ascii")
    if names not in CHARSETS:
        raise _fail(p, f"names must be one of {', '.join(CHARSETS)}, got {names!r}")
    uid_root = top.get("uid_root")
    try:
        normalise_root(None if uid_root is None else str(uid_root))
    except ConfigError as err:
        raise _fail(p, str(err)) from None
    tpp_raw = top.get("types_per_patient", [[1, 1]])
    if (not isinstance(tpp_raw, list) or not tpp_raw
            or not all(isinstance(e, list) and len(e) == 2 for e in tpp_raw)):
        raise _fail(p, f"types_per_patient must be [[count, weight], ...], got {tpp_raw!r}")
    tpp = tuple((_int(p, "types_per_patient count", c, 1, len(studies)), _weight(p, "types_per_patient weight", w))
                for c, w in tpp_raw)
    if sum(w for _, w in tpp) <= 0:
        raise _fail(p, "the types_per_patient weights add up to 0")
    multiframe = top.get("multiframe", False)
    if not isinstance(multiframe, bool):
        raise _fail(p, f"multiframe must be true or false, got {multiframe!r}")
    cohort = Cohort(seed=seed, patients=patients, studies=tuple(studies), sex=sex, ages=tuple(ages),
                    name_prefix=str(top.get("name_prefix", "SYNTHETIC")), id_prefix=str(top.get("id_prefix", "SYN")),
                    study_dates=(d0, d1), transfer_syntax=ts,
                    steps=None if steps is None else _int(p, "steps", steps, 1, 100000),
                    names=names, uid_root=None if uid_root is None else str(uid_root), types_per_patient=tpp,
                    multiframe=multiframe)
    try:
        IdentityOptions(name_prefix=cohort.name_prefix, id_prefix=cohort.id_prefix, study_dates=cohort.study_dates)
    except ConfigError as err:
        raise _fail(p, str(err)) from None
    return cohort



def _pick(rng: np.random.Generator, weights: list[float]) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


@dataclass(frozen=True)
class Encounter:
    """One study of the cohort: patient (global index), the patient's study index (date order),
    the study type (index into ``Cohort.studies``), its identity, UID and header draw."""

    patient: int
    index: int
    type_index: int
    identity: StudyIdentity
    study_uid: str
    header: StudyHeader


@dataclass(frozen=True)
class CohortPlan:
    """Who the patients are and which studies they have (see :func:`plan_cohort`)."""

    people: tuple[PatientIdentity, ...]
    encounters: tuple[Encounter, ...]

    def studies_of(self, patient: int) -> list[Encounter]:
        return [e for e in self.encounters if e.patient == patient]


def _region(preset_name: str, condition: str | None) -> tuple[str, str]:
    from medsynth.dicom_io.iod import anatomy_for
    from medsynth.presets import get_preset
    from medsynth.studies import modality_of

    preset = get_preset(preset_name)
    return modality_of(preset), anatomy_for(preset, condition or preset.default_condition).label


def plan_cohort(cohort: Cohort) -> CohortPlan:
    """Draw every patient's sex, age band, study types and identity, and every study's date,
    institution, station, protocol and technique (all seeded by the cohort's seed)."""
    rng = np.random.default_rng(np.random.SeedSequence(cohort.seed, spawn_key=(0,)))
    header_rng = np.random.default_rng(np.random.SeedSequence(cohort.seed, spawn_key=(3,)))
    name_rng = np.random.default_rng(np.random.SeedSequence(cohort.seed, spawn_key=(4,)))
    fleet = make_fleet(np.random.default_rng(np.random.SeedSequence(cohort.seed, spawn_key=(5,))))
    namespace = run_namespace({"cohort": cohort.seed, "patients": cohort.patients, "id_prefix": cohort.id_prefix,
                               "uid_root": normalise_root(cohort.uid_root)}, reproducible=True)
    entropy = run_entropy(cohort.seed, namespace)
    uids = UidFactory(cohort.uid_root, cohort.seed, namespace)
    people: list[PatientIdentity] = []
    encounters: list[Encounter] = []
    for p in range(cohort.patients):
        sex = cohort.sex[_pick(rng, [w for _, w in cohort.sex])][0]
        band = cohort.ages[_pick(rng, [a.weight for a in cohort.ages])]
        n_types = cohort.types_per_patient[_pick(rng, [w for _, w in cohort.types_per_patient])][0]
        w = np.asarray([s.weight for s in cohort.studies], dtype=np.float64)
        n_types = min(n_types, int((w > 0).sum()))
        types = [int(t) for t in rng.choice(len(w), size=n_types, replace=False, p=w / w.sum())]
        kinds = [t for t in sorted(types) for _ in range(cohort.studies[t].studies)]
        kinds = [kinds[i] for i in rng.permutation(len(kinds))]  # which study falls on which date
        options = IdentityOptions(name_prefix=cohort.name_prefix, id_prefix=cohort.id_prefix, sex=Sex(sex),
                                  age_years=(band.min, band.max), study_dates=cohort.study_dates)
        person = make_patient(options, entropy, p, len(kinds))
        name = patient_name(name_rng, cohort.names, person.sex, cohort.name_prefix)
        if name is not None:
            person = dataclasses.replace(person, name=name)
        people.append(person)
        for k, t in enumerate(kinds):
            st = cohort.studies[t]
            modality, region = _region(st.preset, st.condition)
            header = draw_study_header(header_rng, fleet, modality, region)  # type: ignore[arg-type]
            encounters.append(Encounter(patient=p, index=k, type_index=t,
                                        identity=make_study(options, entropy, person, p, k),
                                        study_uid=str(uids.uid("study", p, k)), header=header))
    return CohortPlan(tuple(people), tuple(encounters))


def _contrasts(study: StudyType) -> list[str]:
    """The conditions a study of ``study`` samples: MR every label of the pack (or the one given),
    CT and X-ray its condition."""
    from medsynth.generate import resolve_pack
    from medsynth.presets import Modality, get_preset

    preset = get_preset(study.preset)
    if preset.modality is Modality.MR and study.condition is None:
        return list(resolve_pack(preset, None).metadata.labels)
    return [study.condition or preset.default_condition]


def cohort_fingerprint(cohort: Cohort) -> str:
    """A short hash of everything in the cohort file (which shards of a cohort belong together)."""
    import hashlib

    text = json.dumps(dataclasses.asdict(cohort), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def generate_cohort(cohort: Cohort, out_dir: str | Path, force: bool = False, threads: int | None = None,
                    on_progress: Callable[[str], None] | None = None, shard: Shard | None = None) -> dict[str, Any]:
    """Generate the cohort under ``out_dir``: sample every volume with :func:`medsynth.generate.generate`
    (one seeded run per preset, condition and slice count; NIfTI in a temporary folder), derive each
    study's series (:mod:`medsynth.studies`) and write them, one folder per preset; write and return
    ``cohort.json``.

    ``shard`` ``i/n``: only the patients ``p`` with ``p % n == i``. The plan, the volume recipes and
    their seeds, the writers' seeds and namespaces are the whole cohort's, and each volume's noise
    depends on its place in its recipe only (:attr:`GenerateConfig.patient_indices`), so the shard
    writes exactly the whole run's files of its patients; its ``cohort.json`` lists its patients and
    has a ``shard`` entry, and each preset folder's manifest one too, for ``merge-shards``."""
    import contextlib
    import tempfile

    import SimpleITK as sitk
    from pydicom.uid import UID

    from medsynth.dicom_io.geometry import VolumeGeometry
    from medsynth.dicom_io.multiframe import MultiFrameWriter
    from medsynth.dicom_io.provenance import PixelOrigin
    from medsynth.dicom_io.transfer_syntax import TransferSyntax
    from medsynth.dicom_io.writer import Provenance, WriterOptions
    from medsynth.generate import GenerateConfig, generate
    from medsynth.outputs import atomic_write_json, require_usable_output
    from medsynth.presets import Modality, get_preset
    from medsynth.studies import CT_SERIES, StudyWriter, ct_series, dx_series, mr_series

    def say(text: str) -> None:
        if on_progress is not None:
            on_progress(text)

    out = Path(out_dir)
    if shard is not None and shard.count > cohort.patients:
        raise ConfigError(f"--shard {shard}: {cohort.patients} patient(s) cannot fill {shard.count} shards "
                          "(shards split the cohort by patient)")
    require_usable_output(out, force, "replace the cohort's folders")
    plan = plan_cohort(cohort)
    mine = set(shard.patients(cohort.patients)) if shard is not None else set(range(cohort.patients))
    # volume recipes: (preset, condition, slices) -> the encounters that need one such volume
    recipes: dict[tuple[str, str, int], list[int]] = {}
    for i, enc in enumerate(plan.encounters):
        st = cohort.studies[enc.type_index]
        n = st.slices if get_preset(st.preset).is_volume else 1
        for cond in _contrasts(st):
            recipes.setdefault((st.preset, cond, n), []).append(i)
    volumes: dict[tuple[int, str], Path] = {}
    provenance: dict[tuple[int, str], Provenance] = {}
    with tempfile.TemporaryDirectory(prefix="medsynth-cohort-") as tmp:
        for r, (key, users) in enumerate(sorted(recipes.items())):
            preset_name, cond, n = key
            wanted = tuple(j for j, i in enumerate(users) if plan.encounters[i].patient in mine)
            if not wanted:
                continue
            say(f"sampling {len(wanted)} x {preset_name} {cond} ({n} slices)")
            seed = int(np.random.SeedSequence(cohort.seed, spawn_key=(2, r)).generate_state(1, np.uint64)[0] >> 1)
            folder = Path(tmp) / f"r{r:03d}"
            res = generate(GenerateConfig(modality=preset_name, out_dir=folder, patients=len(users), slices=n,
                                          condition=cond, seed=seed, steps=cohort.steps, threads=threads,
                                          format="nifti", reproducible_uids=True,
                                          patient_indices=None if shard is None else wanted))
            prov = json.loads(res.manifest.read_text(encoding="utf-8"))["provenance"]
            prov["origin"] = PixelOrigin(prov["origin"])
            for j in wanted:
                i = users[j]
                volumes[(i, cond)] = folder / f"PT{j:06d}" / "ST000000" / "SE000000.nii.gz"
                provenance[(i, cond)] = Provenance(**prov)

        people = dict(enumerate(plan.people))
        studies = {(e.patient, e.index): (e.identity, UID(e.study_uid)) for e in plan.encounters}
        max_studies = max(len(plan.studies_of(p)) for p in range(cohort.patients))
        max_series = max([CT_SERIES, *(len(_contrasts(s)) for s in cohort.studies)])
        presets = sorted({cohort.studies[e.type_index].preset for e in plan.encounters})
        ours = [e for e in plan.encounters if e.patient in mine]
        records: dict[tuple[int, int], list[dict[str, Any]]] = {}
        with contextlib.ExitStack() as stack:
            writers: dict[str, StudyWriter] = {}
            for k, name in enumerate(presets):
                written_here = sorted({e.patient for e in ours if cohort.studies[e.type_index].preset == name})
                if not written_here:
                    continue  # (a shard none of whose patients has a study of this preset)
                preset = get_preset(name)
                options = WriterOptions(
                    patients=cohort.patients, studies_per_patient=max_studies, series_per_study=max_series,
                    identity=IdentityOptions(name_prefix=cohort.name_prefix, id_prefix=cohort.id_prefix,
                                             study_dates=cohort.study_dates),
                    uid_root=cohort.uid_root, transfer_syntax=TransferSyntax.parse(cohort.transfer_syntax),
                    seed=int(np.random.SeedSequence(cohort.seed, spawn_key=(6, k)).generate_state(1, np.uint64)[0] >> 1))
                base = next(v for (i, _), v in provenance.items()
                            if cohort.studies[plan.encounters[i].type_index].preset == name)
                writer_class = (_multiframe_study_writer() if cohort.multiframe
                                and preset.modality in (Modality.CT, Modality.MR) else StudyWriter)
                writers[name] = writer_class(
                    out / name, preset, options, dataclasses.replace(base, condition=None, seed=cohort.seed),
                    people, studies, force=force)
                if shard is not None:  # merge-shards reads it
                    writers[name].manifest_extra["shard"] = {**shard.to_json(), "patients": written_here}
                stack.enter_context(writers[name])
            for i, enc in enumerate(plan.encounters):
                if enc.patient not in mine:
                    continue
                st = cohort.studies[enc.type_index]
                preset = get_preset(st.preset)
                say(f"writing patient {enc.patient + 1} study {enc.index + 1} ({st.preset})")
                written = records.setdefault((enc.patient, enc.index), [])
                for cond in _contrasts(st):
                    img = sitk.ReadImage(str(volumes[(i, cond)]))
                    vol = sitk.GetArrayFromImage(img).astype(np.float64)
                    geom = VolumeGeometry.from_sitk(img)
                    modality, region = _region(st.preset, cond)
                    if preset.modality is Modality.CT:
                        series = ct_series(vol, geom, enc.header, region)
                    elif preset.modality is Modality.MR:
                        series = [mr_series(vol, geom, enc.header, cond)]
                    else:
                        desc = str(load_catalogue_series(region, enc.header.view))
                        series = [dx_series(vol[:1], geom, enc.header, desc)]
                    for s in series:
                        files = writers[st.preset].write_series(enc.patient, enc.index, enc.header, s,
                                                                provenance[(i, cond)])
                        entry = {"kind": s.kind.value, "description": s.description[:64], "condition": cond,
                                 "instances": files}
                        if isinstance(writers[st.preset], MultiFrameWriter):  # one object of `files` frames
                            entry.update(instances=1, frames=files)
                        written.append(entry)
            for w in writers.values():
                w.finish()
            folders = {name: {"files": len(w.files), "manifest": f"{name}/manifest.json"}
                       for name, w in writers.items()}
    patients_out = []
    for p, person in enumerate(plan.people):
        if p not in mine:
            continue
        patients_out.append({
            "index": p, "patient_id": person.patient_id, "name": person.name, "sex": person.sex,
            "age_years": person.age_years, "birth_date": person.birth_date.isoformat(),
            "studies": [{
                "index": e.index, "preset": cohort.studies[e.type_index].preset, "date": e.identity.date.isoformat(),
                "study_instance_uid": e.study_uid, "accession": e.identity.accession,
                "description": e.header.study_description, "institution": e.header.station.institution,
                "station": e.header.station.name, "manufacturer": e.header.station.scanner.manufacturer,
                "model": e.header.station.scanner.model, "series": records[(p, e.index)],
            } for e in plan.studies_of(p)],
        })
    summary: dict[str, Any] = {
        "format_version": 2, "seed": cohort.seed, "patients": len(patients_out), "studies": len(ours),
        "series": sum(len(v) for v in records.values()), "files": sum(f["files"] for f in folders.values()),
        "transfer_syntax": cohort.transfer_syntax, "folders": folders, "patient_list": patients_out,
    }
    if shard is not None:
        summary["shard"] = {**shard.to_json(), "patients": sorted(mine), "cohort": cohort_fingerprint(cohort)}
    atomic_write_json(out / "cohort.json", summary)
    return summary


def merge_cohort_summaries(summaries: Sequence[Mapping[str, Any]],
                           folders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``cohort.json`` of the unsharded cohort run from its shards' (checked to belong together
    by :func:`medsynth.shard.merge_shards`) and the merged preset folders (name → files, manifest):
    every patient in index order, the totals summed, no ``shard`` entry — byte for byte the one
    ``generate --cohort`` writes without ``--shard``."""
    first = summaries[0]
    patients = sorted((p for s in summaries for p in s["patient_list"]), key=lambda p: int(p["index"]))
    return {
        "format_version": first["format_version"], "seed": first["seed"], "patients": len(patients),
        "studies": sum(int(s["studies"]) for s in summaries), "series": sum(int(s["series"]) for s in summaries),
        "files": sum(int(f["files"]) for f in folders.values()), "transfer_syntax": first["transfer_syntax"],
        "folders": {name: dict(folders[name]) for name in sorted(folders)}, "patient_list": patients,
    }


def _multiframe_study_writer() -> type[Any]:
    """The cohort's study writer with each series as one multi-frame object."""
    from medsynth.dicom_io.multiframe import MultiFrameWriter
    from medsynth.studies import StudyWriter

    class MultiFrameStudyWriter(MultiFrameWriter, StudyWriter):
        """:class:`~medsynth.studies.StudyWriter` writing :mod:`medsynth.dicom_io.multiframe` objects."""

    return MultiFrameStudyWriter


def load_catalogue_series(region: str, view: str) -> str:
    """The X-ray series description of ``region`` in ``view`` (catalogue ``dx.protocol``)."""
    from medsynth.catalogue import load_catalogue

    proto = load_catalogue()["dx"]["protocol"].get(region, {})
    return str(proto.get("series", {}).get(view, f"{region.upper()} {view}"))


def cohort_summary_text(summary: Mapping[str, Any]) -> str:
    """One line per preset folder and a JSON line of totals, for the terminal."""
    lines = [f"{name}/: {f['files']} files" for name, f in summary["folders"].items()]
    return "\n".join(lines) + "\n" + json.dumps(
        {k: summary[k] for k in ("patients", "studies", "series", "files")})
