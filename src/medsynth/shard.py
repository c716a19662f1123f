"""Sharded generation: split one seeded run over ``n`` workers and merge the shards into one run.

A :class:`Shard` ``i/n`` generates the patients ``p`` with ``p % n == i`` of the whole run's plan.
Pixels (noise per slice from ``SeedSequence(seed, (patient, study, series, slice))``), UIDs,
identities and dates (named by the whole run's namespace: preset, pack, sampler, plan, seed) and
file paths (``PTpppppp`` = the global patient index) depend only on the seed and the global index,
so the union of the shards is the one run, file for file. That needs ``--seed`` and
``--reproducible-uids``. Each shard writes its own folder with its own ``manifest.json`` (a
``shard`` entry) and DICOMDIR; :func:`merge_shards` checks the shards belong together and
hard-links (or copies) their files into one folder with one manifest and one DICOMDIR.

A cohort (``generate --cohort FILE --shard i/n``) shards the same way by its global patient index;
each shard writes its preset folders (each manifest with a ``shard`` entry) and a ``cohort.json`` of
its patients, and the merge combines both into the unsharded cohort run (:func:`merge_shards`).

The scheduler is Slurm (array jobs: ``--shard`` defaults from ``SLURM_ARRAY_TASK_ID`` /
``SLURM_ARRAY_TASK_COUNT``) or Ray / Dask (see ``examples/``); medsynth has none of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import ConfigError, InputError

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: the patients ``p`` with ``p % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 100000:
            raise ConfigError(f"--shard: the shard count must be 1..100000, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self.index}/{self.count}: the index must be 0..{self.count - 1}")

    def patients(self, total: int) -> range:
        """The global indices of this shard's patients among ``total``."""
        return range(self.index, total, self.count)

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` → Shard (ConfigError with an example otherwise)."""
    m = _SHARD_RE.match(text)
    if m is None:
        raise ConfigError(f"--shard {text!r}: expected INDEX/COUNT with a 0-based index, e.g. 0/4")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a Slurm array task (``SLURM_ARRAY_TASK_ID`` − ``SLURM_ARRAY_TASK_MIN`` of
    ``SLURM_ARRAY_TASK_COUNT``), or None outside an array job."""
    env = os.environ if environ is None else environ
    task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if not task or not count:
        return None
    try:
        index = int(task) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        return Shard(index, int(count))
    except ValueError:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={task!r} / SLURM_ARRAY_TASK_COUNT={count!r} are not a shard; "
                          "pass --shard INDEX/COUNT") from None


def resolve_shard(text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of ``--shard I/N`` (``text``), else of the Slurm array task, else None; a count of 1
    (``--shard 0/1``) means no sharding."""
    found = parse_shard(text) if text else shard_from_env(environ)
    return found if found is not None and found.count > 1 else None


def check_shardable(seed: int | None, reproducible_uids: bool, patients: int, shard: Shard) -> None:
    """ConfigError unless the run can be sharded: a seed, reproducible UIDs and at least one patient
    per shard."""
    if seed is None or not reproducible_uids:
        raise ConfigError(f"--shard {shard} needs --seed and --reproducible-uids (every shard must make the "
                          "same UIDs and pixels the whole run would)")
    if shard.count > patients:
        raise ConfigError(f"--shard {shard}: {patients} patient(s) cannot fill {shard.count} shards "
                          "(shards split the run by patient)")


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------

#: manifest entries that must agree between the shards of one run
_SAME = ("format_version", "preset", "modality", "sop_class_uid", "transfer_syntax", "seed", "uid_root",
         "uid_namespace", "provenance")


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_shards` wrote: ``files`` linked or copied (``linked`` of them as hard links)."""

    out_dir: Path
    shards: int
    patients: int
    studies: int
    series: int
    files: int
    linked: int
    dicomdir: bool

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.out_dir), "shards": self.shards, "patients": self.patients,
                "studies": self.studies, "series": self.series, "files": self.files, "linked": self.linked,
                "dicomdir": "DICOMDIR" if self.dicomdir else None, "manifest": "manifest.json"}


def _read_shard(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no manifest.json: not a medsynth output folder", folder) from None
    except (OSError, ValueError) as err:
        raise InputError(f"manifest.json is unreadable: {err}", folder) from None
    if not isinstance(data, dict) or not isinstance(data.get("shard"), dict):
        raise InputError("manifest.json has no shard entry: not written by generate --shard", folder)
    if data.get("complete") is not True:
        raise InputError("the shard did not finish (manifest says complete: false); run it again", folder)
    if not isinstance(data.get("files"), list) or not isinstance(data.get("series"), list):
        raise InputError("manifest.json lists no files/series", folder)
    return data


def _link_or_copy(src: Path, tmp: Path) -> bool:
    """Hard-link ``src`` to ``tmp`` (same volume), else copy it; True when linked."""
    try:
        os.link(src, tmp)
        return True
    except OSError:
        shutil.copyfile(src, tmp)
        return False


def _check_shard_indices(folders: Sequence[Path], shards: Sequence[dict[str, Any]], count: int, complete: bool) -> None:
    """Every folder's ``shard`` entry is of ``count`` shards and no index comes twice; with
    ``complete`` all indices 0..count−1 must be there."""
    seen: dict[int, Path] = {}
    for folder, sh in zip(folders, shards, strict=True):
        idx, n = int(sh["index"]), int(sh["count"])
        if n != count:
            raise InputError(f"is shard {idx}/{n}, the others are of {count}", folder)
        if idx in seen:
            raise InputError(f"shard {idx}/{n} is given twice (also {seen[idx]})", folder)
        seen[idx] = folder
    missing = sorted(set(range(count)) - set(seen))
    if complete and missing:
        raise InputError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing: pass all {count} "
                         "shard folders")


def _gather(folders: Sequence[Path], manifests: Sequence[dict[str, Any]], count: int | None = None,
            ) -> tuple[int, list[tuple[Path, dict[str, Any]]]]:
    """Check the shard folders belong to one run and list their files ``(folder, record)`` by path.

    ``count`` None: every index 0..n−1 must be there once (a plain run); an int: the shard count the
    folders must have, some indices may be absent (a cohort's preset folder that some shards have no
    patient for)."""
    first = manifests[0]
    want = int(first["shard"]["count"]) if count is None else count
    for folder, m in zip(folders, manifests, strict=True):
        for key in _SAME:
            if m.get(key) != first.get(key):
                raise InputError(f"belongs to another run than {folders[0]} ({key} differs)", folder)
    _check_shard_indices(folders, [m["shard"] for m in manifests], want, complete=count is None)
    files = sorted(((folder, rec) for folder, m in zip(folders, manifests, strict=True) for rec in m["files"]),
                   key=lambda fr: fr[1]["path"])
    paths = [rec["path"] for _, rec in files]
    if len(set(paths)) != len(paths):
        raise InputError("two shards wrote the same file path: not shards of one run", folders[0])
    for folder, rec in files:
        if not (folder / rec["path"]).is_file():
            raise InputError(f"{rec['path']} is listed but missing", folder)
    return want, files


def _write_merged(out: Path, manifests: Sequence[dict[str, Any]], files: list[tuple[Path, dict[str, Any]]],
                  count: int, placed: Callable[[], None]) -> tuple[dict[str, Any], int]:
    """Link the ``files`` into ``out`` (an empty folder), write its DICOMDIR and manifest.json (the
    unsharded run's entries in its order, plus ``merged_from``); returns the manifest and the links."""
    from medsynth.dicom_io.dicomdir import DirEntry, build_dicomdir
    from medsynth.dicom_io.fileset import DICOMDIR_KEYWORDS
    from medsynth.dicom_io.uids import UidFactory
    from medsynth.outputs import atomic_write, atomic_write_bytes, atomic_write_json

    first = manifests[0]
    linked = 0
    for folder, rec in files:
        result: list[bool] = []

        def place(tmp: Path, src: Path = folder / rec["path"], result: list[bool] = result) -> None:
            result.append(_link_or_copy(src, tmp))

        atomic_write(out / rec["path"], place)
        linked += int(result[0])
        placed()

    series = sorted((s for m in manifests for s in m["series"]), key=lambda s: (s["patient"], s["study"], s["series"]))
    dicomdir = bool(files) and all(m.get("dicomdir") for m in manifests)
    if dicomdir:
        import pydicom
        from pydicom.dataset import Dataset

        entries = []
        for _, rec in files:
            ds = pydicom.dcmread(out / rec["path"], stop_before_pixels=True)
            stub = Dataset()
            for keyword in DICOMDIR_KEYWORDS:
                if keyword in ds:
                    stub[keyword] = ds[keyword]
            stub.SOPInstanceUID = ds.SOPInstanceUID
            stub.InstanceNumber = ds.InstanceNumber
            entries.append(DirEntry(stub, tuple(rec["path"].split("/")), str(ds.file_meta.TransferSyntaxUID)))
        root = first.get("uid_root")
        uids = UidFactory(None if root in (None, "2.25.") else root, first.get("seed"), first["uid_namespace"])
        atomic_write_bytes(out / "DICOMDIR", build_dicomdir(entries, "MEDSYNTH", uids.uid("fileset")))
    values = {
        "complete": True,
        "dicomdir": "DICOMDIR" if dicomdir else None,
        "patients": sum(int(m.get("patients", 0)) for m in manifests),
        "studies": sum(int(m.get("studies", 0)) for m in manifests),
        "series": series,
        "files": [rec for _, rec in files],
    }
    # the unsharded run's manifest, entry for entry and in its order, then where it was merged from
    merged = {k: values.get(k, v) for k, v in first.items() if k != "shard"}
    merged.update(values)
    merged["merged_from"] = [{"index": int(m["shard"]["index"]), "count": count, "files": len(m["files"])}
                             for m in sorted(manifests, key=lambda m: int(m["shard"]["index"]))]
    atomic_write_json(out / "manifest.json", merged)
    return merged, linked


def merge_shards(shard_dirs: Sequence[str | Path], out_dir: str | Path, force: bool = False,
                 on_file: Callable[[int, int], None] | None = None) -> MergeResult:
    """Merge the shard folders of one ``generate --shard i/n`` run into ``out_dir``.

    Checks every shard is complete, that all belong to the same run (same namespace, seed, preset,
    pack, transfer syntax, shard count) and that each index 0..n−1 is there once. Then every file is
    hard-linked (copied across volumes) to the same relative path under ``out_dir``, and one
    ``manifest.json`` and one DICOMDIR are written: the folder is the one unsharded run would have
    written. The shard folders are not modified. ``on_file(done, total)`` after each file.

    Shards of a cohort (``generate --cohort FILE --shard i/n``: a ``cohort.json`` with a ``shard``
    entry at the top) are merged preset folder by preset folder the same way, and their
    ``cohort.json`` files into the one of the unsharded cohort run (see
    :func:`medsynth.cohort.merge_cohort_summaries`).
    """
    from medsynth.dicom_io.fileset import prepare_output

    if not shard_dirs:
        raise ConfigError("merge-shards needs at least one shard folder")
    folders = [Path(d) for d in shard_dirs]
    out = Path(out_dir)
    for f in folders:
        if f.resolve() == out.resolve():
            raise ConfigError("the merged folder must not be one of the shard folders", out)
    cohorts = [(f / COHORT_NAME).is_file() and not (f / "manifest.json").is_file() for f in folders]
    if any(cohorts):
        if not all(cohorts):
            odd = folders[cohorts.index(False)]
            raise InputError(f"is not a cohort shard like {folders[cohorts.index(True)]}", odd)
        return _merge_cohort(folders, out, force, on_file)
    manifests = [_read_shard(f) for f in folders]
    count, files = _gather(folders, manifests)
    prepare_output(out, force)
    done = [0]

    def placed() -> None:
        done[0] += 1
        if on_file is not None:
            on_file(done[0], len(files))

    merged, linked = _write_merged(out, manifests, files, count, placed)
    return MergeResult(out_dir=out, shards=count, patients=merged["patients"], studies=merged["studies"],
                       series=len(merged["series"]), files=len(files), linked=linked,
                       dicomdir=merged["dicomdir"] is not None)


#: the summary file of a cohort run (see medsynth.cohort)
COHORT_NAME = "cohort.json"
#: cohort.json entries that must agree between the shards of one cohort
_SAME_COHORT = ("format_version", "seed", "transfer_syntax")


def _read_cohort_shard(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / COHORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{COHORT_NAME} is unreadable: {err}", folder) from None
    if not isinstance(data, dict) or not isinstance(data.get("shard"), dict):
        raise InputError(f"{COHORT_NAME} has no shard entry: not written by generate --cohort --shard", folder)
    if not isinstance(data.get("folders"), dict) or not isinstance(data.get("patient_list"), list):
        raise InputError(f"{COHORT_NAME} lists no folders/patients", folder)
    return data


def _merge_cohort(folders: Sequence[Path], out: Path, force: bool,
                  on_file: Callable[[int, int], None] | None) -> MergeResult:
    """Merge the shards of one cohort run: every preset folder as a run's shards, then cohort.json."""
    from medsynth.cohort import merge_cohort_summaries
    from medsynth.dicom_io.fileset import prepare_output
    from medsynth.outputs import atomic_write_json, require_usable_output

    summaries = [_read_cohort_shard(f) for f in folders]
    first = summaries[0]
    count = int(first["shard"]["count"])
    for folder, s in zip(folders, summaries, strict=True):
        for key in (*_SAME_COHORT, "cohort"):
            here, there = (s if key != "cohort" else s["shard"]), (first if key != "cohort" else first["shard"])
            if here.get(key) != there.get(key):
                raise InputError(f"belongs to another cohort run than {folders[0]} ({key} differs)", folder)
    _check_shard_indices(folders, [s["shard"] for s in summaries], count, complete=True)
    plans = []
    for name in sorted({name for s in summaries for name in s["folders"]}):
        subs = [f / name for f, s in zip(folders, summaries, strict=True) if name in s["folders"]]
        manifests = [_read_shard(sub) for sub in subs]
        _, files = _gather(subs, manifests, count)
        plans.append((name, manifests, files))
    total = sum(len(files) for _, _, files in plans)
    if require_usable_output(out, force, "replace the cohort's folders"):
        for name, _, _ in plans:
            if (out / name).is_dir():
                prepare_output(out / name, force)
    done = [0]

    def placed() -> None:
        done[0] += 1
        if on_file is not None:
            on_file(done[0], total)

    merged_folders: dict[str, dict[str, Any]] = {}
    linked, dicomdir = 0, bool(plans)
    for name, manifests, files in plans:
        prepare_output(out / name, force)
        merged, links = _write_merged(out / name, manifests, files, count, placed)
        linked += links
        dicomdir = dicomdir and merged["dicomdir"] is not None
        merged_folders[name] = {"files": len(files), "manifest": f"{name}/manifest.json"}
    summary = merge_cohort_summaries(summaries, merged_folders)
    atomic_write_json(out / COHORT_NAME, summary)
    return MergeResult(out_dir=out, shards=count, patients=int(summary["patients"]), studies=int(summary["studies"]),
                       series=int(summary["series"]), files=total, linked=linked, dicomdir=dicomdir)
