"""Shared output mechanisms: the output-folder rule, atomic writes, the run journal, and removal of
a previous medsynth run's files (``--force``). Every command that writes files uses these.

* :func:`atomic_write` — the one way medsynth writes a file: to a temporary name beside the target
  (``.partial-<name>``, so the suffix that selects a format is kept), then ``os.replace`` (atomic on
  POSIX and Windows). A crash never leaves a half-written file under the final name.
* :class:`RunJournal` — ``manifest.json`` says ``"complete": false`` from the first moment and names
  ``manifest.journal.jsonl``, to which one JSON line per complete file is appended (and flushed) as
  it lands; :meth:`RunJournal.finish` (normal end, exception or Ctrl-C) writes the final manifest
  and removes the journal. After SIGKILL the folder still lists its complete files
  (:func:`read_run_manifest` merges them).
* :func:`remove_previous_run` — what ``--force`` removes: every file of an earlier medsynth run in
  the folder, listed in its manifest/journal or not (files in medsynth's ``PTnnnnnn/STnnnnnn/…``
  layout: DICOM ones only when they carry medsynth's marker), its DICOMDIR, manifest, journal,
  preview and temporary files; never anything else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from medsynth.errors import OutputError

MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "manifest.journal.jsonl"
PREVIEW_NAME = "preview.png"
#: the names of medsynth's layout: PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn[.dcm|.png] and PT/ST/SEnnnnnn.nii.gz
_LAYOUT = re.compile(r"^PT\d{6}/ST\d{6}/(SE\d{6}\.nii\.gz|SE\d{6}/IM\d{6}(\.dcm|\.png)?)$")
_MARKER = b"MEDSYNTH"  # private creator "MEDSYNTH 1.0" / ImplementationVersionName "MEDSYNTH_x"


def require_usable_output(out: Path, force: bool, what_force_does: str) -> bool:
    """Refuse ``out`` if it is a file, or a non-empty folder without ``force``.

    Returns True when ``out`` is a non-empty folder the caller may overwrite (``force``), so it can
    clean up a previous run of its own. ``what_force_does`` completes the hint "use --force to ...".
    """
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputError(f"output folder is not empty (use --force to {what_force_does})", out)
        return True
    return False


def partial_name(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path``."""
    return path.with_name(f".partial-{path.name}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp)`` to a temporary name beside it, then rename.

    Creates the parent folder. OSError (and SimpleITK's RuntimeError) become an OutputError naming
    ``path``; the temporary file never survives.
    """
    tmp = partial_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write: {err.strerror or err}", path) from None
    except RuntimeError as err:  # SimpleITK reports write failures as RuntimeError
        text = str(err).strip()
        raise OutputError(f"cannot write: {text.splitlines()[-1] if text else 'unknown error'}", path) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 ``text``."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """:func:`atomic_write` of ``data`` as JSON (with a final newline)."""
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


class RunJournal:
    """``manifest.json`` + an append-only journal of complete files for one run in ``out_dir``."""

    def __init__(self, out_dir: Path, head: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.path = out_dir / JOURNAL_NAME
        self._fh: IO[str] | None = None
        atomic_write_json(out_dir / MANIFEST_NAME, {**head, "complete": False, "journal": JOURNAL_NAME, "files": []})
        try:
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as err:
            raise OutputError(f"cannot write: {err.strerror}", self.path) from None

    def add(self, record: dict[str, Any]) -> None:
        """Record one complete file (its manifest entry); flushed at once (survives SIGKILL)."""
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the final ``manifest.json`` (complete or not, it lists every file) and remove the journal."""
        self.close()
        atomic_write_json(self.out_dir / MANIFEST_NAME, manifest)
        if self.path.exists():
            self.path.unlink()


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """The complete-file records of ``folder``'s journal (a torn last line is ignored)."""
    out: list[dict[str, Any]] = []
    try:
        lines = (folder / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_run_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/manifest.json`` with the journal's files merged in when the run did not finish."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("complete") is False and data.get("journal"):
        files = data.get("files")
        listed: list[Any] = files if isinstance(files, list) else []
        seen = {f.get("path") for f in listed if isinstance(f, dict)}
        data["files"] = [*listed, *(r for r in read_journal(folder) if r.get("path") not in seen)]
    return data


def _is_ours(path: Path, rel: str) -> bool:
    if not _LAYOUT.match(rel):
        return False
    if rel.endswith((".png", ".nii.gz")):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return _MARKER in head


def remove_previous_run(out_dir: Path) -> list[str]:
    """Remove every file of a previous medsynth run in ``out_dir`` (see the module docstring) and the
    folders this leaves empty; returns the removed paths (relative, '/'-separated)."""
    root = out_dir.resolve()
    listed: set[str] = set()
    manifest = read_run_manifest(out_dir)
    if manifest is not None:
        for f in manifest.get("files", []) if isinstance(manifest.get("files"), list) else []:
            rel = f.get("path") if isinstance(f, dict) else f
            if isinstance(rel, str):
                listed.add(rel)
    removed: list[str] = []
    evidence = manifest is not None and str(manifest.get("software", "")).startswith("medsynth")
    for p in sorted(out_dir.rglob("*")):
        if not p.is_file() and not p.is_symlink():
            continue
        rel = p.relative_to(out_dir).as_posix()
        target = p.resolve()
        if root not in target.parents:
            continue
        temporary = p.name.startswith(".partial-") or (p.name.startswith(".") and p.name.endswith(".partial"))
        if rel in listed or temporary or _is_ours(p, rel):
            p.unlink()
            removed.append(rel)
            evidence = True
    for name in ("DICOMDIR", JOURNAL_NAME, MANIFEST_NAME, PREVIEW_NAME):
        p = out_dir / name
        if p.is_file() and (evidence or name != PREVIEW_NAME):
            p.unlink()
            removed.append(name)
    for d in sorted((d for d in out_dir.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        rel = d.relative_to(out_dir).as_posix()
        if re.match(r"^PT\d{6}(/ST\d{6}(/SE\d{6})?)?$", rel) and not any(d.iterdir()):
            d.rmdir()
    return removed
