"""Resume state: the SOP Instance UIDs each destination has acknowledged, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsynth.errors import InputError, OutputError
from medsynth.outputs import atomic_write_text

_FORMAT = "medsynth-push-state"
_VERSION = 1


class PushState:
    """``{destination key: set of acknowledged SOP Instance UIDs}`` backed by one JSON file.

    The file is rewritten whole after every batch via a temporary file in the same folder and
    ``os.replace`` (atomic on POSIX and Windows), so an interrupted run never leaves it half-written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._acked: dict[str, set[str]] = {}
        if path.exists():
            try:
                data: Any = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("format") != _FORMAT:
                    raise ValueError("not a medsynth push state file")
                dests = data.get("destinations", {})
                if not isinstance(dests, dict):
                    raise ValueError("'destinations' is not an object")
                for key, entry in dests.items():
                    uids = entry.get("acknowledged", []) if isinstance(entry, dict) else []
                    self._acked[str(key)] = {str(u) for u in uids}
            except (OSError, ValueError) as err:
                raise InputError(f"unreadable push state file ({err}); delete it or pass --state", path) from None

    def acknowledged(self, destination: str) -> set[str]:
        return set(self._acked.get(destination, set()))

    def add(self, destination: str, uids: list[str]) -> None:
        self._acked.setdefault(destination, set()).update(uids)

    def save(self) -> None:
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "destinations": {k: {"acknowledged": sorted(v)} for k, v in sorted(self._acked.items())},
        }
        text = json.dumps(payload, indent=1)
        try:
            atomic_write_text(self.path, text)
        except OutputError as err:
            raise OutputError(f"cannot write the push state file ({err.message}); pass --state FILE",
                              self.path) from None
