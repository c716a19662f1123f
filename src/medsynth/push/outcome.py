"""What a protocol sender reports back to the push loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from medsynth.push.model import InstanceStatus


@dataclass
class Ack:
    """The remote's answer for one instance."""

    status: InstanceStatus  # SENT or FAILED
    code: int | None = None
    reason: str = ""
    warning: str = ""


@dataclass
class BatchOutcome:
    """Answers for the instances the remote responded to (by SOP Instance UID).

    ``transient`` is set when the batch stopped early for a reason worth retrying (connection
    refused/reset, association rejected-transient or aborted, time-out, HTTP 429/5xx); the
    instances without an answer are then retried in a new association/request after a back-off.
    """

    acks: dict[str, Ack] = field(default_factory=dict)
    transient: str | None = None


class RemoteRefused(Exception):
    """The remote refused us for good (association rejected-permanent, HTTP 401/403/404...).

    Retrying is pointless: the push stops and every unsent instance fails with this reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
