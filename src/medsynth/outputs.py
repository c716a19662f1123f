"""The one rule for output folders, shared by every command that writes one."""

from __future__ import annotations

from pathlib import Path

from medsynth.errors import OutputError


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
