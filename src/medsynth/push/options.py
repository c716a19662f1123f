"""Click options shared by ``medsynth push`` and ``medsynth generate --send``, and the final output.

Usage in another command::

    @click.command()
    @push_options(send_flag=True)          # adds --send plus the destination/tuning options
    def generate(..., **kwargs):
        cfg = push_config_from_options(kwargs)   # pops the push options; None unless --send
        ...write the study to out_dir...
        if cfg is not None:
            finish_push(out_dir, cfg, json_out=False, report_path=None)   # table; raises PushError
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from medsynth.errors import ConfigError, PushError
from medsynth.push.model import (
    DimseTarget,
    InstanceStatus,
    PushConfig,
    PushReport,
    StowAuth,
    StowTarget,
)

F = TypeVar("F", bound=Callable[..., Any])

ENV_USER = "MEDSYNTH_STOW_USER"
ENV_PASSWORD = "MEDSYNTH_STOW_PASSWORD"
ENV_TOKEN = "MEDSYNTH_STOW_TOKEN"

# Every option's python name starts with "push_" so it never collides with a host command's own
# parameters; with ``send_flag`` (generate) the tuning options are spelled --send-*, since generate
# has its own --batch-size.
_DEST: list[tuple[str, dict[str, Any]]] = [
    ("host", dict(metavar="HOST", help="C-STORE: PACS host name or address.")),
    ("port", dict(type=click.IntRange(1, 65535), metavar="PORT", help="C-STORE: PACS DICOM port (e.g. 4242, 104, 11112).")),
    ("called-aet", dict(metavar="AET", help="C-STORE: the PACS's AE title.")),
    ("calling-aet", dict(default="MEDSYNTH", show_default=True, metavar="AET",
                         help="C-STORE: our AE title (the PACS may need to know it).")),
    ("stow", dict(metavar="URL",
                  help="DICOMweb STOW-RS endpoint instead of C-STORE, e.g. http://host:8042/dicom-web/studies. "
                       f"Credentials: ${ENV_USER} + ${ENV_PASSWORD} (basic), ${ENV_TOKEN} (bearer) or --auth-file.")),
    ("auth-file", dict(type=click.Path(dir_okay=False, path_type=Path),
                       help="STOW-RS credentials file: JSON {\"token\": ...} or {\"username\": ..., \"password\": ...}, "
                            "or lines token=... / username=... and password=...")),
    ("insecure", dict(is_flag=True, help="STOW-RS over https: do not verify the server certificate.")),
]
_TUNING: list[tuple[str, dict[str, Any]]] = [
    ("batch-size", dict(type=click.IntRange(min=1), default=50, show_default=True,
                        help="Instances per association (C-STORE) or per request (STOW-RS).")),
    ("associations", dict(type=click.IntRange(1, 64), default=1, show_default=True,
                          help="Batches sent in parallel, each on its own association (or HTTP request).")),
    ("retries", dict(type=click.IntRange(min=0), default=3, show_default=True,
                     help="Extra attempts after a transient failure (exponential back-off).")),
    ("backoff", dict(type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="First back-off in seconds; doubles per attempt, at most 30 s.")),
    ("timeout", dict(type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                     help="Seconds to wait for any network step (connect, association, response).")),
    ("state", dict(type=click.Path(dir_okay=False, path_type=Path),
                   help="Resume state file (default: DIR/.medsynth-push-state.json).")),
]
PUSH_OPTION_NAMES = tuple("push_" + n.replace("-", "_") for n, _ in _DEST + _TUNING) + ("push_resume",)


def push_options(send_flag: bool = False) -> Callable[[F], F]:
    """Decorator adding the destination and tuning options (plus ``--send`` when ``send_flag``).

    The values reach the command as ``push_*`` keyword arguments; pass the kwargs dict to
    :func:`push_config_from_options`.
    """
    pre = "send-" if send_flag else ""

    def deco(func: F) -> F:
        opts = [click.option(f"--{n}", "push_" + n.replace("-", "_"), **kw) for n, kw in _DEST]
        opts += [click.option(f"--{pre}{n}", "push_" + n.replace("-", "_"), **kw) for n, kw in _TUNING]
        opts.append(click.option(f"--{pre}resume/--no-{pre}resume", "push_resume", default=True, show_default=True,
                                 help="Skip instances this destination acknowledged in an earlier run."))
        if send_flag:
            opts.insert(0, click.option("--send", "push_send", is_flag=True,
                                        help="After writing, push the output folder to a PACS "
                                             "(C-STORE: --host/--port/--called-aet; STOW-RS: --stow; "
                                             "see `medsynth push --help`)."))
            opts.append(click.option("--send-report", "push_report", type=click.Path(dir_okay=False, path_type=Path),
                                     help="With --send: write the JSON push report to this file."))
        for opt in reversed(opts):
            func = opt(func)
        return func

    return deco


def _read_auth_file(path: Path) -> StowAuth:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read credentials file ({err.strerror})", path) from None
    values: dict[str, str] = {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError
        values = {str(k).lower(): str(v) for k, v in data.items() if v is not None}
    except ValueError:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                # never quote the line: it may be the secret itself
                raise ConfigError("credentials file lines must look like key=value", path) from None
            k, v = line.split("=", 1)
            values[k.strip().lower()] = v.strip()
    user = values.get("username", values.get("user", ""))
    return _auth_from(values.get("token", ""), user, values.get("password", ""), f"file {path.name}", path)


def _auth_from(token: str, user: str, password: str, source: str, path: Path | None = None) -> StowAuth:
    if token and (user or password):
        raise ConfigError(f"STOW-RS credentials from {source}: give a token or a user and password, not both", path)
    if token:
        return StowAuth("bearer", secret=token, source=source)
    if user and not password:
        raise ConfigError(f"STOW-RS credentials from {source}: a user name without a password", path)
    if password and not user:
        raise ConfigError(f"STOW-RS credentials from {source}: a password without a user name", path)
    return StowAuth("basic", username=user, secret=password, source=source)


def resolve_auth(auth_file: Path | None, environ: dict[str, str] | None = None) -> StowAuth | None:
    """Credentials from ``--auth-file`` or else the environment, or None when neither has any."""
    if auth_file is not None:
        return _read_auth_file(auth_file)
    env = os.environ if environ is None else environ
    token, user, password = env.get(ENV_TOKEN, ""), env.get(ENV_USER, ""), env.get(ENV_PASSWORD, "")
    if not (token or user or password):
        return None
    return _auth_from(token, user, password, "environment")


def push_config_from_options(kwargs: dict[str, Any], *, require: bool = True) -> PushConfig | None:
    """Pop the ``push_*`` options from a click ``kwargs`` dict and build a PushConfig.

    With ``--send`` among them (generate), returns None unless it was given. Otherwise a destination
    is required when ``require``. (``push_report``, if present, is left for the caller.)
    """
    opts = {name: kwargs.pop(name, None) for name in PUSH_OPTION_NAMES}
    host, port, called, stow = opts["push_host"], opts["push_port"], opts["push_called_aet"], opts["push_stow"]
    if "push_send" in kwargs and not kwargs.pop("push_send"):
        if host or stow:
            raise ConfigError("--host/--stow given without --send")
        return None
    if stow and (host or port or called):
        raise ConfigError("give either --stow URL or --host/--port/--called-aet, not both")
    target: DimseTarget | StowTarget
    if stow:
        from medsynth.push.stow import check_url

        check_url(stow)
        target = StowTarget(stow, resolve_auth(opts["push_auth_file"]), verify_tls=not opts["push_insecure"])
    elif host or port or called:
        missing = [n for n, v in (("--host", host), ("--port", port), ("--called-aet", called)) if not v]
        if missing:
            raise ConfigError(f"C-STORE needs --host, --port and --called-aet; missing {', '.join(missing)}")
        target = DimseTarget(str(host), int(port), str(called), str(opts["push_calling_aet"] or "MEDSYNTH"))
    else:
        if not require:
            return None
        raise ConfigError("no destination: give --host/--port/--called-aet (C-STORE) or --stow URL (STOW-RS)")

    def num(name: str, default: float) -> float:
        v = opts[name]
        return float(default if v is None else v)

    return PushConfig(
        target=target,
        batch_size=int(num("push_batch_size", 50)),
        associations=int(num("push_associations", 1)),
        retries=int(num("push_retries", 3)),
        backoff_s=num("push_backoff", 1.0),
        timeout_s=num("push_timeout", 30.0),
        resume=bool(True if opts["push_resume"] is None else opts["push_resume"]),
        state_path=opts["push_state"],
    )


# -- output ---------------------------------------------------------------------------------------------
_MAX_FAILED_ROWS = 50


def print_report(report: PushReport, *, stderr: bool = False) -> None:
    """The final rich table: counts, then every failed instance with its reason."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=stderr)
    d = report.to_json()
    c = d["counts"]
    summary = Table(title=f"medsynth push → {report.destination}", show_header=True)
    summary.add_column("result")
    summary.add_column("instances", justify="right")
    summary.add_row("[green]sent[/]", str(c["sent"]))
    summary.add_row("already present (earlier run)", str(c["already_present"]))
    summary.add_row("[red]failed[/]" if c["failed"] else "failed", str(c["failed"]))
    if c["warnings"]:
        summary.add_row("[yellow]sent with warnings[/]", str(c["warnings"]))
    rate = d["instances_per_s"]
    summary.caption = f"{report.duration_s:.1f} s" + (f", {rate:g} instances/s" if rate else "")
    console.print(summary)
    if c["already_present"]:
        console.print(
            f"[yellow]hint:[/] {c['already_present']} instances were not sent again because this destination "
            f"acknowledged them in an earlier run (recorded in {report.state_file or 'the state file'}); "
            "medsynth cannot see whether the PACS still has them. If it lost them, run again with --no-resume.",
            markup=True, highlight=False)
    for err in report.errors:
        console.print(f"[red]remote:[/] {err}", markup=True, highlight=False)
    failed = [r for r in report.instances if r.status is InstanceStatus.FAILED]
    noted = failed + [r for r in report.instances if r.warning and r.status is InstanceStatus.SENT]
    if noted:
        t = Table(title="failed / warnings", show_lines=False)
        # whole names on one line (folded only beyond 64 characters): never cut to their common prefix
        width = min(max(len(r.path) for r in noted[:_MAX_FAILED_ROWS]), 64)
        t.add_column("file", overflow="fold", min_width=width)
        t.add_column("status", no_wrap=True)
        t.add_column("reason", overflow="fold")
        for r in noted[:_MAX_FAILED_ROWS]:
            t.add_row(r.path, r.status.value, r.reason or r.warning)
        if len(noted) > _MAX_FAILED_ROWS:
            t.caption = f"... and {len(noted) - _MAX_FAILED_ROWS} more (see --report)"
        console.print(t)


def write_report(report: PushReport, path: Path) -> None:
    """Write the JSON report atomically (temporary file beside it, then rename)."""
    from medsynth.outputs import atomic_write_json

    atomic_write_json(Path(path), report.to_json())


def run_push(
    folder: Path, config: PushConfig, *, table_to_stderr: bool, report_path: Path | None, progress: bool = True
) -> PushReport:
    """Push, print the final table and write the JSON report (if asked); never raises for remote failures."""
    from medsynth.push.runner import push_folder

    report = push_folder(folder, config, progress=progress)
    print_report(report, stderr=table_to_stderr)
    if report_path is not None:
        write_report(report, report_path)
    return report


def check_push(report: PushReport, report_path: Path | None = None) -> None:
    """Raise PushError (exit code 1, one line) when anything failed."""
    if report.ok:
        return
    c = report.to_json()["counts"]
    raise PushError(
        f"{c['failed']} of {c['total']} instances failed"
        + (f" ({report.errors[0]})" if report.errors else "")
        + (f"; details in {report_path}" if report_path else "; see the table above")
    )


def finish_push(
    folder: Path, config: PushConfig, *, json_out: bool, report_path: Path | None, progress: bool = True
) -> PushReport:
    """What ``medsynth push`` does after parsing: push, table (stderr with ``json_out``), report, JSON.

    Raises PushError when anything failed.
    """
    report = run_push(folder, config, table_to_stderr=json_out, report_path=report_path, progress=progress)
    if json_out:  # printed here, not through medsynth.cli: the library never imports the CLI
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    check_push(report, report_path)
    return report
