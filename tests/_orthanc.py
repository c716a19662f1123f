"""Run a real Orthanc PACS as a child process on loopback for the push tests and benchmark.

Orthanc binds all interfaces; we only ever talk to it on 127.0.0.1, with remote access and
authentication off (or basic auth on, for the STOW auth test). Stopped by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def find_orthanc() -> str | None:
    """The Orthanc executable: $MEDSYNTH_ORTHANC, PATH, or Debian's /usr/sbin/Orthanc."""
    env = os.environ.get("MEDSYNTH_ORTHANC")
    if env:
        return env if Path(env).is_file() else None
    for name in ("Orthanc", "orthanc"):
        hit = shutil.which(name)
        if hit:
            return hit
    for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc"):
        if Path(p).is_file():
            return p
    return None


def find_dicomweb_plugin() -> str | None:
    for p in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(p).is_file():
            return p
    for base in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc"):
        hits = sorted(Path(base).glob("libOrthancDicomWeb.so*")) if Path(base).is_dir() else []
        if hits:
            return str(hits[0])
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: ``aet@127.0.0.1:dicom_port``, REST on ``http://127.0.0.1:http_port``."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    aet: str
    dicom_port: int
    http_port: int
    users: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _request(self, path: str, method: str = "GET", data: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            user, pw = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return bytes(rsp.read())

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def get_bytes(self, path: str) -> bytes:
        return self._request(path)

    def clear(self) -> None:
        """Delete every patient (so each test starts from an empty archive)."""
        for pid in self.get_json("/patients"):
            self._request(f"/patients/{pid}", method="DELETE")

    def instance_uids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance id."""
        out: dict[str, str] = {}
        for oid in self.get_json("/instances"):
            tags = self.get_json(f"/instances/{oid}/simplified-tags")
            out[tags["SOPInstanceUID"]] = oid
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    check_called_aet: bool = False,
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
    lua: str | None = None,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Orthanc:
    """Start Orthanc with a temporary config/storage under ``workdir``; wait until /system answers.

    Raises RuntimeError (with Orthanc's log tail) when it is missing or does not come up.
    """
    exe = find_orthanc()
    if exe is None:
        raise RuntimeError(
            "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb dcmtk; "
            "or set MEDSYNTH_ORTHANC to the executable): the push tests need a real PACS"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    cfg: dict[str, Any] = {
        "Name": f"medsynth-test-{aet}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": check_called_aet,
        "UnknownSopClassAccepted": False,
        "StorageCompression": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "Plugins": [],
    }
    if dicomweb:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise RuntimeError("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
        cfg["Plugins"] = [plugin]
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    if lua is not None:
        script = workdir / "filter.lua"
        script.write_text(lua, encoding="utf-8")
        cfg["LuaScripts"] = [str(script)]
    cfg.update(extra or {})
    config = workdir / "orthanc.json"
    config.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
    child_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen([exe, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=child_env)
    log.close()
    o = Orthanc(proc, workdir, aet, dicom_port, http_port, dict(users or {}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            o.get_json("/system")
            return o
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    tail = (workdir / "orthanc.log").read_text(errors="replace")[-2000:]
    o.stop()
    raise RuntimeError(f"Orthanc did not start (exit {proc.poll()}):\n{tail}")
