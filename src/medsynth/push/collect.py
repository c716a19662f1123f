"""Find the DICOM instances of a folder (the manifest first, else a scan) and read their headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import InputError
from medsynth.outputs import JOURNAL_NAME, read_run_manifest
from medsynth.push.model import STATE_FILENAME

MANIFEST_NAME = "manifest.json"
# Files that are never instances to store: the media directory, our own bookkeeping.
_SKIP_NAMES = {"DICOMDIR", STATE_FILENAME, MANIFEST_NAME, JOURNAL_NAME}
# Keys under which a manifest may list its files, and the path key of each entry.
_LIST_KEYS = ("files", "instances", "items")
_PATH_KEYS = ("path", "file", "filename", "relative_path")


@dataclass(frozen=True)
class Instance:
    """One DICOM file to push (header only; pixel data stays on disk)."""

    path: Path
    rel: str  # path relative to the folder, POSIX separators (for reports)
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int  # bytes on disk


@dataclass
class Collected:
    instances: list[Instance]
    problems: list[tuple[str, str]]  # (relative path, reason) for files that cannot be pushed
    source: str  # "manifest" or "scan"


def _manifest_paths(folder: Path) -> list[Path] | None:
    """Files listed in ``folder/manifest.json`` (written by the DICOM writer), or None.

    Accepts a list of entries under ``files``/``instances``/``items``, each a relative path string or
    an object with a ``path``/``file`` key; anything else means "no usable manifest" (then we scan).
    """
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        return None
    data: Any = read_run_manifest(folder)  # an interrupted run's journal is merged in
    if data is None:
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    entries: Any = None
    if isinstance(data, dict):
        for key in _LIST_KEYS:
            if isinstance(data.get(key), list):
                entries = data[key]
                break
    elif isinstance(data, list):
        entries = data
    if not entries:
        return None
    out: list[Path] = []
    for entry in entries:
        rel: Any = entry
        if isinstance(entry, dict):
            rel = next((entry[k] for k in _PATH_KEYS if isinstance(entry.get(k), str)), None)
        if not isinstance(rel, str):
            return None
        p = (folder / rel).resolve()
        if folder.resolve() not in p.parents:  # a manifest must not point outside its folder
            return None
        out.append(p)
    return out


def _scan(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in _SKIP_NAMES and not p.name.startswith("."):
            yield p


def read_header(path: Path, folder: Path) -> Instance:
    """Read the identifying header of one DICOM file (stops before pixel data).

    Raises InputError naming the file when it is not a DICOM Part-10 file with SOP Class/Instance UID
    and a transfer syntax.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    rel = path.relative_to(folder).as_posix() if folder in path.parents else path.name
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise InputError(f"not a readable DICOM file ({err})", rel) from None
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    sop_class = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    if not ts:
        raise InputError("no Transfer Syntax UID in the file meta information", rel)
    if not sop_class or not sop_uid:
        raise InputError("no SOP Class UID or SOP Instance UID", rel)
    return Instance(path, rel, sop_class, sop_uid, ts, path.stat().st_size)


def collect(folder: Path) -> Collected:
    """All pushable instances of ``folder``, in a stable order.

    With a usable ``manifest.json`` only the files it lists are read (a listed file that is missing or
    unreadable is a problem); otherwise every file below ``folder`` is tried and files that are not
    DICOM at all are silently ignored, except ``*.dcm`` files, which are reported.
    """
    from pydicom.misc import is_dicom

    if not folder.is_dir():
        raise InputError("not a folder", folder)
    folder = folder.resolve()
    listed = _manifest_paths(folder)
    instances: list[Instance] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    source = "manifest" if listed is not None else "scan"
    candidates = listed if listed is not None else list(_scan(folder))
    for p in candidates:
        rel = p.relative_to(folder).as_posix()
        if listed is None and p.suffix.lower() != ".dcm":
            try:
                if not is_dicom(p):
                    continue
            except OSError:
                continue
        if not p.is_file():
            problems.append((rel, "listed in manifest.json but missing"))
            continue
        try:
            inst = read_header(p, folder)
        except InputError as err:
            problems.append((rel, err.message))
            continue
        if inst.sop_instance_uid in seen:
            problems.append((rel, f"duplicate SOP Instance UID {inst.sop_instance_uid}: skipped"))
            continue
        seen.add(inst.sop_instance_uid)
        instances.append(inst)
    return Collected(instances, problems, source)
