"""Configuration and result types of ``medsynth push`` (C-STORE and DICOMweb STOW-RS)."""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Name of the resume state file written into the pushed folder (unless ``--state`` is given).
STATE_FILENAME = ".medsynth-push-state.json"
#: A DICOM association proposes at most 128 presentation contexts (PS3.8 9.3.2.2: odd IDs 1..255).
MAX_CONTEXTS = 128


class InstanceStatus(str, Enum):
    """What happened to one instance."""

    SENT = "sent"  # acknowledged by the remote in this run (success or warning status)
    ALREADY_PRESENT = "already_present"  # acknowledged by this destination in an earlier run: skipped
    FAILED = "failed"


@dataclass(frozen=True)
class DimseTarget:
    """A DICOM C-STORE SCP: ``called_aet@host:port``; ``calling_aet`` is our own AE title."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "MEDSYNTH"

    def key(self) -> str:
        """Stable identifier of the destination (used in the state file and report)."""
        return f"dicom://{self.called_aet}@{self.host}:{self.port}"

    def describe(self) -> str:
        return f"C-STORE {self.called_aet}@{self.host}:{self.port} (calling AE {self.calling_aet})"


@dataclass(frozen=True)
class StowAuth:
    """HTTP credentials for STOW-RS. The secret never appears in ``repr``/``str`` or any report."""

    kind: str  # "basic" or "bearer"
    username: str = ""
    secret: str = field(default="", repr=False)  # password (basic) or token (bearer)
    source: str = ""  # where it came from ("environment", "file x") for the report; never the value

    def header(self) -> str:
        """The ``Authorization`` header value."""
        if self.kind == "bearer":
            return f"Bearer {self.secret}"
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def describe(self) -> str:
        who = f" as {self.username!r}" if self.kind == "basic" else ""
        return f"{self.kind} auth{who} from {self.source}"

    def __str__(self) -> str:  # never show the secret, even by accident
        return self.describe()


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb STOW-RS endpoint, e.g. ``http://pacs:8042/dicom-web/studies``."""

    url: str
    auth: StowAuth | None = None
    verify_tls: bool = True

    def key(self) -> str:
        """The URL without query or fragment (which may carry tokens)."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def describe(self) -> str:
        auth = f", {self.auth.describe()}" if self.auth else ""
        return f"STOW-RS {self.key()}{auth}"


Target = DimseTarget | StowTarget


@dataclass(frozen=True)
class PushConfig:
    """How to push a folder.

    ``timeout_s`` bounds every network wait (TCP connect, ACSE, DIMSE, socket reads, HTTP).
    ``retries`` is the number of extra attempts after a transient failure (association rejected
    transient, connection refused/reset/aborted, time-out, HTTP 429/5xx), waiting ``backoff_s``,
    2×, 4×… (at most 30 s) between attempts. ``state_path`` defaults to
    ``DIR/.medsynth-push-state.json``; ``resume=False`` resends instances already acknowledged.
    ``associations`` batches are in flight at once (one association or request each, one thread each).
    """

    target: Target
    batch_size: int = 50
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    resume: bool = True
    state_path: Path | None = None
    echo: bool = True  # C-ECHO before sending (DIMSE only)
    associations: int = 1  # batches sent at once, each on its own association / HTTP request


@dataclass
class InstanceResult:
    """Outcome for one file. ``status_code`` is the DIMSE status (C-STORE) or HTTP status (STOW)."""

    path: str  # relative to the pushed folder, POSIX separators
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    status: InstanceStatus = InstanceStatus.FAILED
    status_code: int | None = None
    reason: str = ""
    warning: str = ""
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class PushReport:
    """The report of one push run (what ``--report``/``--json`` write)."""

    folder: str
    destination: str
    protocol: str  # "c-store" or "stow-rs"
    instances: list[InstanceResult]
    errors: list[str] = field(default_factory=list)  # problems not tied to one instance
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    state_file: str = ""

    def count(self, status: InstanceStatus) -> int:
        return sum(1 for r in self.instances if r.status is status)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.errors and self.count(InstanceStatus.FAILED) == 0

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.finished or time.time()) - self.started)

    def to_json(self) -> dict[str, Any]:
        sent = self.count(InstanceStatus.SENT)
        return {
            "folder": self.folder,
            "destination": self.destination,
            "protocol": self.protocol,
            "ok": self.ok,
            "counts": {
                "total": len(self.instances),
                "sent": sent,
                "already_present": self.count(InstanceStatus.ALREADY_PRESENT),
                "failed": self.count(InstanceStatus.FAILED),
                "warnings": sum(1 for r in self.instances if r.warning),
            },
            "duration_s": round(self.duration_s, 3),
            "instances_per_s": round(sent / self.duration_s, 2) if self.duration_s > 0 else None,
            "state_file": self.state_file,
            "errors": list(self.errors),
            "instances": [r.to_json() for r in self.instances],
        }
