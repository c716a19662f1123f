"""DICOMweb STOW-RS (PS3.18 10.5) over the standard library's http.client.

Hand-written because neither pydicom nor pynetdicom speak DICOMweb, and one multipart POST does not
justify a new dependency. Credentials only ever go into the Authorization header.
"""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from medsynth.errors import ConfigError
from medsynth.push.collect import Instance
from medsynth.push.model import InstanceStatus, StowTarget
from medsynth.push.outcome import Ack, BatchOutcome, RemoteRefused

_CHUNK = 1 << 20
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def check_url(url: str) -> None:
    """Reject URLs we cannot or must not use (never echoing the URL: it may hold a secret)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--stow needs an http:// or https:// URL, e.g. http://127.0.0.1:8042/dicom-web/studies")
    if parts.username or parts.password:
        raise ConfigError(
            "--stow URL must not contain credentials; set MEDSYNTH_STOW_USER/MEDSYNTH_STOW_PASSWORD, "
            "MEDSYNTH_STOW_TOKEN or use --auth-file"
        )


def _describe(code: int) -> str:
    """``0xA700 Refused: Out of Resources``: STOW-RS reuses the C-STORE status codes (PS3.18 I.2.2)."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    desc = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1]
    return f"0x{code:04X}" + (f" {desc}" if desc else "")


def _vals(item: dict[str, Any], tag: str) -> list[Any]:
    el = item.get(tag)
    return el.get("Value", []) if isinstance(el, dict) else []


class StowSender:
    """POSTs batches as multipart/related; type="application/dicom" to one STOW-RS endpoint."""

    protocol = "stow-rs"

    def __init__(self, target: StowTarget, timeout_s: float) -> None:
        check_url(target.url)
        self.target = target
        self.timeout_s = timeout_s
        parts = urlsplit(target.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                ctx = ssl.create_default_context()
                if not self.target.verify_tls:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s, context=ctx)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def echo(self) -> str | None:
        """No DICOMweb equivalent of C-ECHO is standard; the first POST tells."""
        return None

    @staticmethod
    def _body(batch: Sequence[Instance], boundary: str) -> tuple[Iterator[bytes], int]:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        sep = b"\r\n"
        length = sum(len(head) + i.size for i in batch) + len(sep) * (len(batch) - 1) + len(tail)

        def gen() -> Iterator[bytes]:
            for n, inst in enumerate(batch):
                yield (sep if n else b"") + head
                with open(inst.path, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        yield chunk
            yield tail

        return gen(), length

    def send(self, batch: Sequence[Instance], progress: Callable[[int], None]) -> BatchOutcome:
        boundary = f"medsynth-{uuid.uuid4().hex}"
        body, length = self._body(batch, boundary)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(length),
        }
        if self.target.auth is not None:
            headers["Authorization"] = self.target.auth.header()
        out = BatchOutcome()
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=headers)
            rsp = conn.getresponse()
            payload = rsp.read()
            code = rsp.status
            if rsp.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as err:
            self.close()
            what = "timed out" if isinstance(err, TimeoutError) else (getattr(err, "strerror", None) or type(err).__name__)
            out.transient = f"STOW-RS request to {self.target.key()} failed ({what})"
            return out
        if code in _TRANSIENT_HTTP:
            out.transient = f"HTTP {code} {rsp.reason}"
            return out
        if code in (401, 403):
            raise RemoteRefused(f"HTTP {code} {rsp.reason}: authentication refused by {self.target.key()}")
        if code in (404, 405, 415):
            raise RemoteRefused(f"HTTP {code} {rsp.reason}: {self.target.key()} is not a STOW-RS endpoint")
        body_json: Any = None
        try:
            body_json = json.loads(payload) if payload else None
        except ValueError:
            body_json = None
        if isinstance(body_json, list) and body_json:
            body_json = body_json[0]
        referenced: dict[str, str] = {}
        failed: dict[str, int | None] = {}
        if isinstance(body_json, dict):
            for item in _vals(body_json, "00081199"):  # ReferencedSOPSequence
                uid = next(iter(_vals(item, "00081155")), None)
                warn = next(iter(_vals(item, "00081196")), None)  # WarningReason
                if uid:
                    referenced[str(uid)] = f"warning reason {_describe(int(warn))}" if warn is not None else ""
            for item in _vals(body_json, "00081198"):  # FailedSOPSequence
                uid = next(iter(_vals(item, "00081155")), None)
                why = next(iter(_vals(item, "00081197")), None)  # FailureReason
                if uid:
                    failed[str(uid)] = int(why) if why is not None else None
        for inst in batch:
            uid = inst.sop_instance_uid
            if uid in referenced and 200 <= code < 300:
                out.acks[uid] = Ack(InstanceStatus.SENT, code, warning=referenced[uid])
            elif uid in failed:
                why = failed[uid]
                reason = f"STOW-RS failure reason {_describe(why)}" if why is not None else "STOW-RS failure"
                out.acks[uid] = Ack(InstanceStatus.FAILED, code, f"{reason} (HTTP {code})")
            else:
                out.acks[uid] = Ack(
                    InstanceStatus.FAILED, code, f"HTTP {code} {rsp.reason}: not acknowledged in the STOW-RS response"
                )
            progress(1)
        return out
