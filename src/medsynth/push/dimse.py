"""DICOM C-ECHO and C-STORE with pynetdicom: one association per batch, every wait bounded."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

from medsynth.push.collect import Instance
from medsynth.push.model import MAX_CONTEXTS, DimseTarget, InstanceStatus
from medsynth.push.outcome import Ack, BatchOutcome, RemoteRefused

_ILE = "1.2.840.10008.1.2"
_ELE = "1.2.840.10008.1.2.1"
_EBE = "1.2.840.10008.1.2.2"
_UNCOMPRESSED = {_ILE, _ELE, _EBE}
_VERIFICATION = "1.2.840.10008.1.1"


def context_key(inst: Instance) -> tuple[str, tuple[str, ...]]:
    """(SOP class, proposed transfer syntaxes) for one instance.

    Uncompressed files are offered as Explicit and Implicit VR Little Endian (plus their own syntax):
    pynetdicom converts between uncompressed syntaxes, so a remote that only takes Implicit VR still
    gets them. Compressed files are offered only in their own syntax (no transcoding here).
    """
    ts = inst.transfer_syntax_uid
    syntaxes = tuple(dict.fromkeys([ts, _ELE, _ILE])) if ts in _UNCOMPRESSED else (ts,)
    return inst.sop_class_uid, syntaxes


def plan_batches(instances: Sequence[Instance], batch_size: int) -> list[list[Instance]]:
    """Consecutive batches of at most ``batch_size`` instances and at most 128 distinct contexts."""
    batches: list[list[Instance]] = []
    cur: list[Instance] = []
    keys: set[tuple[str, tuple[str, ...]]] = set()
    for inst in instances:
        k = context_key(inst)
        if cur and (len(cur) >= batch_size or (k not in keys and len(keys) >= MAX_CONTEXTS)):
            batches.append(cur)
            cur, keys = [], set()
        cur.append(inst)
        keys.add(k)
    if cur:
        batches.append(cur)
    return batches


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


class DimseSender:
    """Sends batches to one C-STORE SCP; every network wait is bounded by ``timeout_s``."""

    protocol = "c-store"

    def __init__(self, target: DimseTarget, timeout_s: float) -> None:
        from pynetdicom import AE

        self.target = target
        self.timeout_s = timeout_s
        self.ae = AE(ae_title=target.calling_aet)
        self.ae.acse_timeout = timeout_s
        self.ae.dimse_timeout = timeout_s
        self.ae.network_timeout = timeout_s
        self.ae.connection_timeout = timeout_s

    # -- association ----------------------------------------------------------------------------------
    def _connect_error(self) -> str:
        """Why the TCP connection failed (only called after pynetdicom could not connect)."""
        # pynetdicom only logs the socket error; one plain connect attempt recovers it for the report.
        try:
            with socket.create_connection((self.target.host, self.target.port), timeout=self.timeout_s):
                return "connection closed by the remote before the association request"
        except OSError as err:
            return f"cannot connect to {self.target.host}:{self.target.port} ({err.strerror or err})"

    def _associate(self, contexts: list[Any]) -> Any:
        """An established association, or raise RemoteRefused / return a transient reason string."""
        from pynetdicom import evt

        opened: list[bool] = []
        heard: list[bool] = []  # any ACSE PDU from the peer (tells a peer abort from our ACSE timeout)

        def _on_open(event: Any) -> None:
            opened.append(True)
            # Disable Nagle's algorithm: pynetdicom writes each C-STORE as several small PDUs and
            # Nagle + the peer's delayed ACK then cost ~30 ms per instance (measured against Orthanc).
            sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _on_acse(_event: Any) -> None:
            heard.append(True)

        t = self.target
        assoc = self.ae.associate(
            t.host, t.port, contexts=contexts, ae_title=t.called_aet,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_ACSE_RECV, _on_acse)],
        )
        if assoc.is_established:
            return assoc
        if not opened:
            return self._connect_error()
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            text = f"association rejected by {t.called_aet}@{t.host}:{t.port}"
            if rsp is not None:
                text += f" ({rsp.result_str.lower()}, {rsp.source_str}: {rsp.reason_str})"
                if rsp.result == 0x02:  # rejected-transient: worth retrying
                    return text
            raise RemoteRefused(text)
        if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
            return assoc  # no context accepted: the caller reports it per instance
        if assoc.is_aborted and heard:
            return f"association aborted by {t.called_aet}@{t.host}:{t.port} during negotiation"
        return f"no association response from {t.host}:{t.port} within {self.timeout_s:g} s"

    def echo(self) -> str | None:
        """C-ECHO. Returns None when verified, a transient reason otherwise; raises RemoteRefused."""
        from pynetdicom.presentation import build_context

        res = self._associate([build_context(_VERIFICATION)])
        if isinstance(res, str):
            return res
        if not res.is_established:  # Verification itself not accepted: the remote may still store
            return None
        try:
            status = res.send_c_echo()
        finally:
            if res.is_established:
                res.release()
        if "Status" not in status:
            return f"no C-ECHO response from {self.target.host}:{self.target.port} within {self.timeout_s:g} s"
        return None

    # -- storage ---------------------------------------------------------------------------------------
    def send(self, batch: Sequence[Instance], progress: Callable[[int], None]) -> BatchOutcome:
        """C-STORE every instance of ``batch`` in one association."""
        from pynetdicom.presentation import build_context
        from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

        keys = list(dict.fromkeys(context_key(i) for i in batch))
        contexts = [build_context(sop, list(ts)) for sop, ts in keys]
        res = self._associate(contexts)
        out = BatchOutcome()
        if isinstance(res, str):
            out.transient = res
            return out
        assoc = res
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        refused = {cx.abstract_syntax: cx.status for cx in assoc.rejected_contexts}
        try:
            for inst in batch:
                k = context_key(inst)
                if not any((k[0], ts) in accepted for ts in k[1]):
                    why = refused.get(k[0], "not accepted")
                    out.acks[inst.sop_instance_uid] = Ack(
                        InstanceStatus.FAILED, None,
                        f"remote refused {_uid_name(inst.sop_class_uid)} in "
                        f"{_uid_name(inst.transfer_syntax_uid)} (presentation context: {why.lower()})",
                    )
                    progress(1)
                    continue
                if not assoc.is_established:
                    out.transient = "association aborted by the remote"
                    break
                try:
                    status = assoc.send_c_store(inst.path)
                except (ValueError, AttributeError) as err:  # cannot encode / no matching context
                    out.acks[inst.sop_instance_uid] = Ack(InstanceStatus.FAILED, None, f"cannot send: {err}")
                    progress(1)
                    continue
                if "Status" not in status:
                    # No response: the remote aborted, the connection dropped or the DIMSE timer expired.
                    out.transient = (
                        "association aborted by the remote" if assoc.is_aborted
                        else f"no C-STORE response within {self.timeout_s:g} s"
                    )
                    break
                code = int(status.Status)
                category = code_to_category(code)
                desc = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1] or category
                comment = str(status.get("ErrorComment", "") or "")
                text = f"0x{code:04X} {desc}" + (f": {comment}" if comment else "")
                if category == "Success":
                    out.acks[inst.sop_instance_uid] = Ack(InstanceStatus.SENT, code)
                elif category == "Warning":
                    out.acks[inst.sop_instance_uid] = Ack(InstanceStatus.SENT, code, warning=text)
                else:
                    out.acks[inst.sop_instance_uid] = Ack(InstanceStatus.FAILED, code, f"C-STORE status {text}")
                progress(1)
        finally:
            if assoc.is_established:
                assoc.release()
        return out
