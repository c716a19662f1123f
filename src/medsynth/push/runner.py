"""The push loop shared by C-STORE and STOW-RS: resume, batches, retries with back-off, report."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from medsynth.errors import ConfigError, InputError
from medsynth.push.collect import Instance, collect
from medsynth.push.model import (
    STATE_FILENAME,
    DimseTarget,
    InstanceResult,
    InstanceStatus,
    PushConfig,
    PushReport,
)
from medsynth.push.outcome import BatchOutcome, RemoteRefused
from medsynth.push.state import PushState

MAX_BACKOFF_S = 30.0


class Sender(Protocol):
    protocol: str

    def echo(self) -> str | None: ...

    def send(self, batch: Sequence[Instance], progress: Callable[[int], None]) -> BatchOutcome: ...


def _validate(config: PushConfig) -> None:
    if not 1 <= config.associations <= 64:
        raise ConfigError(f"associations must be 1..64, got {config.associations}")
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
    if config.retries < 0:
        raise ConfigError(f"retries must be 0 or more, got {config.retries}")
    if not config.timeout_s > 0:
        raise ConfigError(f"timeout must be positive, got {config.timeout_s}")
    if config.backoff_s < 0:
        raise ConfigError(f"back-off must be 0 or more, got {config.backoff_s}")
    t = config.target
    if isinstance(t, DimseTarget):
        if not 0 < t.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {t.port}")
        for name, aet in (("called", t.called_aet), ("calling", t.calling_aet)):
            if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or not aet.strip():
                raise ConfigError(f"{name} AE title must be 1-16 ASCII characters, got {aet!r}")


def make_sender(config: PushConfig) -> Sender:
    if isinstance(config.target, DimseTarget):
        from medsynth.push.dimse import DimseSender

        return DimseSender(config.target, config.timeout_s)
    from medsynth.push.stow import StowSender

    return StowSender(config.target, config.timeout_s)


def _batches(instances: Sequence[Instance], config: PushConfig) -> list[list[Instance]]:
    if isinstance(config.target, DimseTarget):
        from medsynth.push.dimse import plan_batches

        return plan_batches(instances, config.batch_size)
    return [list(instances[i : i + config.batch_size]) for i in range(0, len(instances), config.batch_size)]


def _sleep_backoff(config: PushConfig, attempt: int) -> None:
    time.sleep(min(MAX_BACKOFF_S, config.backoff_s * (2**attempt)))


def push_folder(
    folder: str | Path,
    config: PushConfig,
    *,
    progress: bool = True,
    sender: Sender | None = None,
) -> PushReport:
    """Push every DICOM instance of ``folder`` to ``config.target``.

    Reads ``folder/manifest.json`` when the DICOM writer left one (else scans for DICOM files, skipping
    DICOMDIR), skips instances this destination acknowledged in an earlier run (state file
    ``folder/.medsynth-push-state.json`` or ``config.state_path`` — the only file written, atomically,
    after every batch), C-ECHOes first (DIMSE), then sends batches (one association or one HTTP request
    each; ``config.associations`` of them at once, one thread and sender each), retrying what a transient
    failure left unanswered with exponential back-off. A permanent refusal stops every association.

    Never raises for remote problems: they end up in the report (``report.ok`` is False). Raises
    ConfigError for invalid settings, InputError when ``folder`` is not a folder, OutputError when the
    state file cannot be written.
    """
    _validate(config)
    folder = Path(folder)
    found = collect(folder)
    if not found.instances and not found.problems:
        raise InputError("no DICOM files found", folder)
    root = folder.resolve()
    snd = sender if sender is not None else make_sender(config)
    dest = config.target.key()
    state_path = config.state_path if config.state_path is not None else root / STATE_FILENAME
    state = PushState(state_path)
    acked = state.acknowledged(dest) if config.resume else set()

    report = PushReport(folder=str(root), destination=config.target.describe(), protocol=snd.protocol,
                        instances=[], state_file=str(state_path))
    results: dict[str, InstanceResult] = {}
    for rel, why in found.problems:
        report.instances.append(InstanceResult(rel, "", "", "", InstanceStatus.FAILED, None, why))
    todo: list[Instance] = []
    for inst in found.instances:
        r = InstanceResult(inst.rel, inst.sop_instance_uid, inst.sop_class_uid, inst.transfer_syntax_uid)
        if inst.sop_instance_uid in acked:
            r.status = InstanceStatus.ALREADY_PRESENT
            r.reason = "acknowledged by this destination in an earlier run"
        else:
            todo.append(inst)
        results[inst.sop_instance_uid] = r
        report.instances.append(r)

    def fail_rest(pending: Sequence[Instance], reason: str) -> None:
        for inst in pending:
            r = results[inst.sop_instance_uid]
            if r.status is not InstanceStatus.SENT:
                r.status, r.reason = InstanceStatus.FAILED, reason

    lock = threading.Lock()
    refused: list[RemoteRefused] = []
    senders: list[Sender] = [snd]

    def run_batch(batch: list[Instance], s: Sender, advance: Callable[[int], None]) -> None:
        """Send one batch (retrying what is left unanswered); state saved after every answer."""
        pending = list(batch)
        attempt = 0
        while pending:
            if refused:
                return
            with lock:
                for inst in pending:
                    results[inst.sop_instance_uid].attempts += 1
            outcome = s.send(pending, advance)
            with lock:
                newly: list[str] = []
                for uid, ack in outcome.acks.items():
                    r = results[uid]
                    r.status, r.status_code, r.reason, r.warning = ack.status, ack.code, ack.reason, ack.warning
                    if ack.status is InstanceStatus.SENT:
                        newly.append(uid)
                if newly:
                    state.add(dest, newly)
                    state.save()
            pending = [i for i in pending if i.sop_instance_uid not in outcome.acks]
            if not pending:
                break
            reason = outcome.transient or "no answer from the remote"
            if attempt >= config.retries:
                with lock:
                    fail_rest(pending, f"{reason} (gave up after {attempt + 1} attempts)")
                advance(len(pending))
                break
            _sleep_backoff(config, attempt)
            attempt += 1

    with _progress_bar(progress, len(todo), config.target.describe()) as advance:
        try:
            if todo and config.echo:
                _echo_with_retries(snd, config)
            batches = _batches(todo, config)
            if config.associations == 1 or len(batches) == 1:
                for batch in batches:
                    run_batch(batch, snd, advance)
            else:
                _run_parallel(batches, config, snd, sender is not None, senders, run_batch, advance, lock, refused)
            if refused:
                raise refused[0]
        except RemoteRefused as err:
            unsent = [i for i in todo if results[i.sop_instance_uid].status is InstanceStatus.FAILED
                      and not results[i.sop_instance_uid].reason]
            fail_rest(unsent, err.reason)
            report.errors.append(err.reason)
        finally:
            for s in senders:
                close = getattr(s, "close", None)
                if callable(close):
                    close()
    report.finished = time.time()
    return report


def _run_parallel(batches: list[list[Instance]], config: PushConfig, snd: Sender, shared: bool,
                  senders: list[Sender], run_batch: Callable[[list[Instance], Sender, Callable[[int], None]], None],
                  advance: Callable[[int], None], lock: threading.Lock, refused: list[RemoteRefused]) -> None:
    """``config.associations`` threads take batches from a queue, each with its own sender (one
    association per batch, as with one thread); a RemoteRefused stops every thread before its next
    batch. A caller-given sender is shared (it must be thread-safe)."""
    import queue

    work: queue.Queue[list[Instance]] = queue.Queue()
    for b in batches:
        work.put(b)
    safe_advance = _locked(advance, lock)

    def worker(s: Sender) -> None:
        while not refused:
            try:
                batch = work.get_nowait()
            except queue.Empty:
                return
            try:
                run_batch(batch, s, safe_advance)
            except RemoteRefused as err:
                with lock:
                    refused.append(err)
                return

    n = min(config.associations, len(batches))
    own = [snd] + [snd if shared else make_sender(config) for _ in range(n - 1)]
    senders[:] = list(dict.fromkeys(own))
    threads = [threading.Thread(target=worker, args=(s,), name=f"medsynth-push-{k}", daemon=True)
               for k, s in enumerate(own)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _locked(advance: Callable[[int], None], lock: threading.Lock) -> Callable[[int], None]:
    def call(n: int) -> None:
        with lock:
            advance(n)
    return call


def _echo_with_retries(snd: Sender, config: PushConfig) -> None:
    for attempt in range(config.retries + 1):
        why = snd.echo()
        if why is None:
            return
        if attempt == config.retries:
            raise RemoteRefused(f"C-ECHO failed: {why} (gave up after {attempt + 1} attempts)")
        _sleep_backoff(config, attempt)


class _progress_bar:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar on stderr (or nothing), yielding an ``advance(n)`` callable."""

    def __init__(self, enabled: bool, total: int, what: str) -> None:
        self.enabled = enabled and total > 0
        self.total = total
        self.what = what
        self._progress: object | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        p = Progress(TextColumn("[bold]push[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
        p.start()
        task = p.add_task(self.what, total=self.total)
        self._progress = p

        def advance(n: int) -> None:
            p.advance(task, n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()  # type: ignore[attr-defined]
