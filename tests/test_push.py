"""`medsynth push` against a real Orthanc (C-STORE and DICOMweb STOW-RS), started on loopback.

Also: a pynetdicom SCP in this process for per-instance failure statuses and an abort mid-batch,
and a small HTTP relay in front of Orthanc's STOW-RS endpoint that answers 503 once (retries) and
records the Authorization header (bearer tokens; Orthanc itself only does basic auth).
"""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from _orthanc import Orthanc, free_port, start_orthanc
from medsynth.cli.main import cli
from medsynth.push import STATE_FILENAME, DimseTarget, InstanceStatus, PushConfig, StowTarget, push_folder
from medsynth.push.options import resolve_auth

USER, PASSWORD = "pacsadmin", "Sup3r-S3cret-pw-4711"
TOKEN = "tok-9f8e7d6c5b4a-never-print-me"


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the session: DICOMweb on, basic auth on for HTTP, called AE title checked."""
    try:
        o = start_orthanc(tmp_path_factory.mktemp("orthanc"), aet="MEDSYNTHPACS", check_called_aet=True,
                          dicomweb=True, users={USER: PASSWORD})
    except RuntimeError as err:
        pytest.fail(str(err))
    yield o
    o.stop()


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    orthanc.clear()
    return orthanc


def _new_uids(ds: Any, study: str, series: str) -> None:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """pydicom test files: 4 CT (Explicit VR LE), 1 MR, 1 JPEG 2000 CR, a DICOMDIR and a text file."""
    d = tmp_path / "mixed"
    (d / "ct").mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(4):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        _new_uids(ds, study, series)
        ds.InstanceNumber = k + 1
        ds.save_as(d / "ct" / f"ct{k}.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), d / "mr.dcm")
    shutil.copy(get_testdata_file("JPEG2000.dcm"), d / "IMG0001")  # no extension: found by content
    shutil.copy(get_testdata_file("DICOMDIR"), d / "DICOMDIR")
    (d / "notes.txt").write_text("not DICOM", encoding="utf-8")
    return d


@pytest.fixture
def writer_folder(tmp_path: Path) -> Path:
    """A study written by medsynth's own DICOM writer (manifest.json + DICOMDIR)."""
    from medsynth.dicom_io.geometry import VolumeGeometry
    from medsynth.dicom_io.writer import WriterOptions, write_volume
    from medsynth.presets import get_preset

    vol = np.random.default_rng(3).uniform(-1000.0, 1500.0, (5, 48, 40))  # HU, [z, y, x]
    geom = VolumeGeometry.axial((48, 40), (0.8, 0.8), 2.0, 5)
    out = tmp_path / "gen"
    write_volume(vol, geom, get_preset("ct-pelvis"), out, WriterOptions(seed=5))
    return out


def _dimse_args(o: Orthanc, folder: Path, *extra: str) -> list[str]:
    return ["push", str(folder), "--host", "127.0.0.1", "--port", str(o.dicom_port),
            "--called-aet", o.aet, "--timeout", "10", "--no-progress", *extra]


def _files_by_uid(folder: Path) -> dict[str, Path]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and p.name not in ("DICOMDIR", STATE_FILENAME) and p.suffix not in (".txt", ".json"):
            out[str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
    return out


def _assert_stored_identically(o: Orthanc, originals: dict[str, Path]) -> None:
    """Every original is in Orthanc with the same UIDs and the same decoded pixels."""
    stored = o.instance_uids()
    assert set(stored) == set(originals)
    for uid, path in originals.items():
        import io

        back = dcmread(io.BytesIO(o.get_bytes(f"/instances/{stored[uid]}/file")))
        orig = dcmread(path)
        for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"):
            assert back[kw].value == orig[kw].value, (path, kw)
        assert np.array_equal(back.pixel_array, orig.pixel_array), path


# --------------------------------------------------------------------------------------- C-STORE
def test_cstore_writer_study_roundtrip_and_resume(pacs: Orthanc, writer_folder: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    before = sorted(p.name for p in writer_folder.iterdir())
    res = CliRunner().invoke(cli, _dimse_args(pacs, writer_folder, "--report", str(report_path), "--batch-size", "2"))
    assert res.exit_code == 0, res.output
    originals = _files_by_uid(writer_folder)
    assert len(originals) == 5
    _assert_stored_identically(pacs, originals)
    rep = json.loads(report_path.read_text())
    assert rep["counts"] == {"total": 5, "sent": 5, "already_present": 0, "failed": 0, "warnings": 0}
    assert all(i["status"] == "sent" and i["status_code"] == 0 for i in rep["instances"])
    assert "sent" in res.output and "MEDSYNTHPACS" in res.output
    # the state file is the only thing added to the user's folder
    assert sorted(p.name for p in writer_folder.iterdir()) == sorted([*before, STATE_FILENAME])
    state = json.loads((writer_folder / STATE_FILENAME).read_text())
    key = f"dicom://MEDSYNTHPACS@127.0.0.1:{pacs.dicom_port}"
    assert sorted(state["destinations"][key]["acknowledged"]) == sorted(originals)

    # resume: forget two acknowledgements and empty the PACS; only those two are sent again
    forget = sorted(originals)[:2]
    state["destinations"][key]["acknowledged"] = sorted(set(originals) - set(forget))
    (writer_folder / STATE_FILENAME).write_text(json.dumps(state))
    pacs.clear()
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, writer_folder), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["counts"]["sent"] == 2 and rep["counts"]["already_present"] == 3
    assert set(pacs.instance_uids()) == set(forget)
    # --no-resume sends everything again
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, writer_folder), "--no-resume", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["sent"] == 5
    assert set(pacs.instance_uids()) == set(originals)


def test_cstore_mixed_folder_contexts_and_dicomdir_skipped(pacs: Orthanc, mixed_folder: Path, tmp_path: Path) -> None:
    state = tmp_path / "elsewhere" / "state.json"
    state.parent.mkdir()
    cfg = PushConfig(DimseTarget("127.0.0.1", pacs.dicom_port, pacs.aet), timeout_s=10, state_path=state)
    report = push_folder(mixed_folder, cfg, progress=False)
    assert report.ok, report.to_json()
    # DICOMDIR and notes.txt are not instances; 3 SOP classes, J2K sent as-is (no transcoding)
    assert len(report.instances) == 6
    assert {r.sop_class_uid for r in report.instances} == {
        "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"}
    assert not (mixed_folder / STATE_FILENAME).exists() and state.is_file()
    _assert_stored_identically(pacs, _files_by_uid(mixed_folder))
    back = dcmread(__import__("io").BytesIO(pacs.get_bytes(
        f"/instances/{pacs.instance_uids()[str(dcmread(mixed_folder / 'IMG0001').SOPInstanceUID)]}/file")))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"


def test_cstore_manifest_limits_what_is_sent(pacs: Orthanc, writer_folder: Path) -> None:
    manifest = json.loads((writer_folder / "manifest.json").read_text())
    keep = manifest["files"][:2]
    (writer_folder / "manifest.json").write_text(json.dumps({**manifest, "files": keep}))
    report = push_folder(writer_folder, PushConfig(DimseTarget("127.0.0.1", pacs.dicom_port, pacs.aet), timeout_s=10),
                         progress=False)
    assert report.ok
    assert set(pacs.instance_uids()) == {f["sop_instance_uid"] for f in keep}


def test_wrong_called_aet_is_refused_without_retries(pacs: Orthanc, mixed_folder: Path, tmp_path: Path) -> None:
    args = ["push", str(mixed_folder), "--host", "127.0.0.1", "--port", str(pacs.dicom_port),
            "--called-aet", "NOTTHEPACS", "--backoff", "2", "--no-progress", "--report", str(tmp_path / "r.json")]
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, args)
    assert time.monotonic() - t0 < 5  # permanent rejection: no back-off
    assert res.exit_code == 1
    assert "Called AE title not recognised" in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: 6 of 6 instances failed")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["counts"]["failed"] == 6 and not rep["ok"]
    assert all("rejected permanent" in i["reason"] for i in rep["instances"])
    assert pacs.get_json("/instances") == []
    assert not (mixed_folder / STATE_FILENAME).exists() or not json.loads(
        (mixed_folder / STATE_FILENAME).read_text())["destinations"]


def test_closed_port_fails_fast_and_clearly(mixed_folder: Path) -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["push", str(mixed_folder), "--host", "127.0.0.1", "--port", str(port),
                                   "--called-aet", "X", "--retries", "2", "--backoff", "0.05", "--no-progress"])
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 1
    assert "Connection refused" in res.output and "gave up after 3 attempts" in res.output
    assert "Traceback" not in res.output


def test_unresponsive_remote_times_out(mixed_folder: Path) -> None:
    """A port that accepts TCP but never answers the association request: bounded by --timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # never accept(): the kernel completes the handshake, nobody answers
    try:
        t0 = time.monotonic()
        cfg = PushConfig(DimseTarget("127.0.0.1", srv.getsockname()[1], "SILENT"), timeout_s=1.0, retries=1,
                         backoff_s=0.05)
        report = push_folder(mixed_folder, cfg, progress=False)
        assert time.monotonic() - t0 < 15
        assert not report.ok
        assert "no association response" in report.errors[0]
    finally:
        srv.close()


def test_remote_rejects_a_sop_class(pacs: Orthanc, mixed_folder: Path) -> None:
    """Orthanc refuses a storage SOP class it does not know (UnknownSopClassAccepted false)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.999.1"
    _new_uids(ds, generate_uid(), generate_uid())
    ds.save_as(mixed_folder / "private.dcm")
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, mixed_folder), "--json"])
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert rep["counts"]["sent"] == 6 and rep["counts"]["failed"] == 1
    bad = next(i for i in rep["instances"] if i["status"] == "failed")
    assert bad["path"] == "private.dcm" and "abstract syntax not supported" in bad["reason"]
    assert str(ds.SOPInstanceUID) not in pacs.instance_uids()
    # re-run: the six are skipped, the refused one is tried again (and refused again)
    rep2 = json.loads(CliRunner().invoke(cli, [*_dimse_args(pacs, mixed_folder), "--json"]).stdout)
    assert rep2["counts"] == {"total": 7, "sent": 0, "already_present": 6, "failed": 1, "warnings": 0}


def test_unreadable_file_is_reported_and_others_still_sent(pacs: Orthanc, mixed_folder: Path) -> None:
    (mixed_folder / "broken.dcm").write_bytes(b"\x00" * 50)
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, mixed_folder), "--json"])
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert rep["counts"]["sent"] == 6
    assert [i["path"] for i in rep["instances"] if i["status"] == "failed"] == ["broken.dcm"]
    assert len(pacs.get_json("/instances")) == 6


# -------------------------------------------------------------- in-process SCP: statuses and aborts
@pytest.fixture
def flaky_scp() -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom SCP that aborts the association on its first C-STORE and refuses PatientID REFUSE."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    received: list[str] = []

    def on_store(event: Any) -> Any:
        ds = event.dataset
        if not received:
            received.append("ABORTED")
            event.assoc.abort()
            return 0xA700
        if ds.PatientID == "REFUSE":
            from pydicom import Dataset

            status = Dataset()
            status.Status = 0xA701
            status.ErrorComment = "quota exceeded"
            return status
        received.append(str(ds.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="FLAKY")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, received
    finally:
        server.shutdown()


def test_abort_is_retried_and_failure_status_reported(flaky_scp: tuple[int, list[str]], mixed_folder: Path) -> None:
    port, received = flaky_scp
    ds = dcmread(mixed_folder / "ct" / "ct0.dcm")
    ds.PatientID = "REFUSE"
    ds.save_as(mixed_folder / "ct" / "ct0.dcm")
    cfg = PushConfig(DimseTarget("127.0.0.1", port, "FLAKY"), timeout_s=5, retries=2, backoff_s=0.05)
    report = push_folder(mixed_folder, cfg, progress=False)
    by_path = {r.path: r for r in report.instances}
    refused = by_path["ct/ct0.dcm"]
    assert refused.status is InstanceStatus.FAILED and refused.status_code == 0xA701
    assert "Out of Resources" in refused.reason and "quota exceeded" in refused.reason
    assert refused.attempts == 2  # the first association was aborted before it got an answer
    # pynetdicom's default storage contexts are uncompressed only: the JPEG 2000 file is refused
    j2k = by_path["IMG0001"]
    assert j2k.status is InstanceStatus.FAILED and "transfer syntax" in j2k.reason.lower()
    sent = [r for r in report.instances if r.status is InstanceStatus.SENT]
    assert len(sent) == 4 and set(received[1:]) == {r.sop_instance_uid for r in sent}
    assert received[0] == "ABORTED"


# ---------------------------------------------------------------------------------------- STOW-RS
def test_stow_basic_auth_roundtrip_secret_never_shown(
    pacs: Orthanc, writer_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MEDSYNTH_STOW_USER", USER)
    monkeypatch.setenv("MEDSYNTH_STOW_PASSWORD", PASSWORD)
    report_path = tmp_path / "stow.json"
    url = f"{pacs.url}/dicom-web/studies"
    res = CliRunner().invoke(cli, ["push", str(writer_folder), "--stow", url, "--report", str(report_path),
                                   "--batch-size", "3", "--json"])
    assert res.exit_code == 0, res.output
    _assert_stored_identically(pacs, _files_by_uid(writer_folder))
    rep = json.loads(report_path.read_text())
    assert rep["protocol"] == "stow-rs" and rep["counts"]["sent"] == 5
    assert all(i["status_code"] == 200 for i in rep["instances"])
    assert "basic auth as 'pacsadmin' from environment" in rep["destination"]
    for text in (res.output, report_path.read_text(), (writer_folder / STATE_FILENAME).read_text(), caplog.text):
        assert PASSWORD not in text

    # wrong password: HTTP 401 is a refusal (no retries), reported, the secret still never shown
    monkeypatch.setenv("MEDSYNTH_STOW_PASSWORD", "wrong-" + PASSWORD)
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["push", str(writer_folder), "--stow", url, "--no-resume", "--backoff", "3",
                                   "--no-progress"])
    assert time.monotonic() - t0 < 5
    assert res.exit_code == 1
    assert "HTTP 401" in res.output and PASSWORD not in res.output and "Traceback" not in res.output


def test_stow_url_with_credentials_is_refused_without_echo(writer_folder: Path) -> None:
    res = CliRunner().invoke(cli, ["push", str(writer_folder), "--stow", f"http://{USER}:{PASSWORD}@127.0.0.1:1/x"])
    assert res.exit_code == 2
    assert "must not contain credentials" in res.output and PASSWORD not in res.output


class _Relay(http.server.BaseHTTPRequestHandler):
    """Answers the first POST with 503, relays later ones to Orthanc with Orthanc's basic auth."""

    target: Orthanc
    seen_auth: list[str]
    posts: list[int]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen_auth.append(self.headers.get("Authorization", ""))
        self.posts.append(len(body))
        if len(self.posts) == 1:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        import base64

        conn = http.client.HTTPConnection("127.0.0.1", self.target.http_port, timeout=30)
        auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        conn.request("POST", "/dicom-web/studies", body=body, headers={
            "Content-Type": self.headers["Content-Type"], "Accept": "application/dicom+json", "Authorization": auth})
        rsp = conn.getresponse()
        data = rsp.read()
        self.send_response(rsp.status)
        self.send_header("Content-Type", rsp.getheader("Content-Type", "application/dicom+json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_stow_503_is_retried_and_bearer_token_from_file(pacs: Orthanc, mixed_folder: Path, tmp_path: Path) -> None:
    handler = type("Relay", (_Relay,), {"target": pacs, "seen_auth": [], "posts": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        auth_file = tmp_path / "creds"
        auth_file.write_text(f"# bearer token\ntoken={TOKEN}\n")
        report_path = tmp_path / "r.json"
        res = CliRunner().invoke(cli, ["push", str(mixed_folder), "--stow",
                                       f"http://127.0.0.1:{srv.server_address[1]}/dicom-web/studies",
                                       "--auth-file", str(auth_file), "--backoff", "0.05", "--report", str(report_path)])
        assert res.exit_code == 0, res.output
        assert handler.seen_auth == [f"Bearer {TOKEN}"] * 2  # 503, then the retry
        rep = json.loads(report_path.read_text())
        assert rep["counts"]["sent"] == 6 and all(i["attempts"] == 2 for i in rep["instances"])
        assert TOKEN not in res.output and TOKEN not in report_path.read_text()
        _assert_stored_identically(pacs, _files_by_uid(mixed_folder))
    finally:
        srv.shutdown()
        srv.server_close()


def test_stow_to_closed_port_is_transient_then_fails(mixed_folder: Path) -> None:
    cfg = PushConfig(StowTarget(f"http://127.0.0.1:{free_port()}/dicom-web/studies"), retries=1, backoff_s=0.05,
                     timeout_s=2)
    t0 = time.monotonic()
    report = push_folder(mixed_folder, cfg, progress=False)
    assert time.monotonic() - t0 < 10
    assert report.count(InstanceStatus.FAILED) == 6
    assert all("gave up after 2 attempts" in r.reason for r in report.instances)


# ------------------------------------------------------------------------------------ option checks
def test_auth_resolution_and_option_errors(tmp_path: Path, mixed_folder: Path) -> None:
    assert resolve_auth(None, {}) is None
    a = resolve_auth(None, {"MEDSYNTH_STOW_USER": "u", "MEDSYNTH_STOW_PASSWORD": "p"})
    assert a is not None and a.header() == "Basic dTpw" and "p" not in repr(a).split("username")[0]
    assert "secret" not in repr(a)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"token": TOKEN}))
    b = resolve_auth(f)
    assert b is not None and b.header() == f"Bearer {TOKEN}" and TOKEN not in repr(b) and TOKEN not in str(b)
    runner = CliRunner()
    res = runner.invoke(cli, ["push", str(mixed_folder), "--host", "127.0.0.1"])
    assert res.exit_code == 2 and "missing --port, --called-aet" in res.output
    res = runner.invoke(cli, ["push", str(mixed_folder)])
    assert res.exit_code == 2 and "no destination" in res.output
    res = runner.invoke(cli, ["push", str(mixed_folder), "--stow", "http://h/x", "--host", "h"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(cli, ["push", str(mixed_folder), "--host", "h", "--port", "1", "--called-aet", "A" * 17])
    assert res.exit_code == 2 and "AE title" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    res = runner.invoke(cli, ["push", str(empty), "--host", "h", "--port", "1", "--called-aet", "A"])
    assert res.exit_code == 1 and "no DICOM files found" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in empty.iterdir()) == ["readme.txt"]  # nothing written
    res = runner.invoke(cli, ["push", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output


def test_push_options_for_other_commands(tmp_path: Path) -> None:
    """The decorator other commands (generate --send) use: --send plus the same options."""
    import click

    from medsynth.push import push_config_from_options, push_options

    seen: list[Any] = []

    @click.command()
    @click.option("--batch-size", type=int, default=8)  # the host command's own option
    @push_options(send_flag=True)
    def fake_generate(batch_size: int, **kwargs: Any) -> None:
        seen.append((batch_size, push_config_from_options(kwargs), kwargs.pop("push_report", None)))
        assert kwargs == {}  # every push option was consumed

    runner = CliRunner()
    res = runner.invoke(fake_generate, [])
    assert res.exit_code == 0, res.output
    assert seen[-1] == (8, None, None)
    res = runner.invoke(fake_generate, ["--batch-size", "4", "--send", "--host", "pacs", "--port", "104",
                                        "--called-aet", "ARCHIVE", "--send-batch-size", "7", "--send-retries", "0",
                                        "--send-timeout", "5", "--send-report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    batch, cfg, report = seen[-1]
    assert batch == 4 and report == tmp_path / "r.json"
    assert cfg.target == DimseTarget("pacs", 104, "ARCHIVE", "MEDSYNTH")
    assert (cfg.batch_size, cfg.retries, cfg.timeout_s, cfg.resume) == (7, 0, 5.0, True)
    res = runner.invoke(fake_generate, ["--host", "pacs"])  # destination without --send: refused
    assert res.exit_code != 0


def test_generate_send_pushes_what_it_wrote(pacs: Orthanc, tmp_path: Path) -> None:
    """`medsynth generate --send` (tiny random-weight pack) ends with the study in Orthanc."""
    from _packs import make_tiny_pack

    pack, _ = make_tiny_pack(tmp_path / "ct-body", size=16, uses_position=True, model_id="ct-body")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["generate", "-m", "ct-pelvis", "--model", str(pack), "--slices", "3", "--steps", "2",
                                   "-o", str(out), "--json", "--send", "--host", "127.0.0.1", "--port",
                                   str(pacs.dicom_port), "--called-aet", pacs.aet, "--send-report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["push"]["counts"]["sent"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(pacs.instance_uids()) == {f["sop_instance_uid"] for f in manifest["files"]}
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    # --send with a non-DICOM format is refused before anything is sampled
    res = CliRunner().invoke(cli, ["generate", "-m", "ct-pelvis", "--model", str(pack), "--format", "png", "-o",
                                   str(tmp_path / "png"), "--send", "--stow", f"{pacs.url}/dicom-web/studies"])
    assert res.exit_code == 2 and "--send needs --format dicom" in res.output
    assert not (tmp_path / "png").exists()


# --------------------------------------------------------------------------------------- parallel associations
def test_parallel_associations_store_everything_and_resume(pacs: Orthanc, writer_folder: Path) -> None:
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, writer_folder), "--associations", "3", "--batch-size", "1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["counts"]["sent"] == 5 and rep["counts"]["failed"] == 0
    originals = _files_by_uid(writer_folder)
    _assert_stored_identically(pacs, originals)
    state = json.loads((writer_folder / STATE_FILENAME).read_text())
    assert sorted(state["destinations"][f"dicom://MEDSYNTHPACS@127.0.0.1:{pacs.dicom_port}"]["acknowledged"]) == sorted(
        originals)
    res = CliRunner().invoke(cli, [*_dimse_args(pacs, writer_folder), "--associations", "3", "--json"])
    assert json.loads(res.stdout)["counts"]["already_present"] == 5


def test_parallel_associations_keep_retry_and_failure_semantics(flaky_scp: tuple[int, list[str]],
                                                                mixed_folder: Path) -> None:
    """An aborted association is retried, a failure status is reported per instance, the state file lists
    exactly the acknowledged instances — with 3 associations as with one."""
    port, received = flaky_scp
    ds = dcmread(mixed_folder / "ct" / "ct0.dcm")
    ds.PatientID = "REFUSE"
    ds.save_as(mixed_folder / "ct" / "ct0.dcm")
    cfg = PushConfig(DimseTarget("127.0.0.1", port, "FLAKY"), timeout_s=5, retries=2, backoff_s=0.05,
                     batch_size=1, associations=3)
    report = push_folder(mixed_folder, cfg, progress=False)
    by_path = {r.path: r for r in report.instances}
    assert by_path["ct/ct0.dcm"].status is InstanceStatus.FAILED and by_path["ct/ct0.dcm"].status_code == 0xA701
    sent = {r.sop_instance_uid for r in report.instances if r.status is InstanceStatus.SENT}
    assert len(sent) == 4 and set(received[1:]) == sent and received[0] == "ABORTED"
    assert sum(r.attempts for r in report.instances) == 6 + 1  # one batch was aborted and sent again
    state = json.loads((mixed_folder / STATE_FILENAME).read_text())
    assert set(state["destinations"][f"dicom://FLAKY@127.0.0.1:{port}"]["acknowledged"]) == sent


def test_parallel_associations_stop_on_a_permanent_refusal(pacs: Orthanc, mixed_folder: Path) -> None:
    cfg = PushConfig(DimseTarget("127.0.0.1", pacs.dicom_port, "NOTTHEPACS"), timeout_s=5, backoff_s=2,
                     batch_size=1, associations=4, echo=False)
    t0 = time.monotonic()
    report = push_folder(mixed_folder, cfg, progress=False)
    assert time.monotonic() - t0 < 5  # no back-off, the other associations stop
    assert not report.ok and len(report.errors) == 1 and "rejected" in report.errors[0]
    assert all(r.status is InstanceStatus.FAILED for r in report.instances)
    assert pacs.get_json("/instances") == []
