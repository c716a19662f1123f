"""`medsynth push`: send a DICOM folder to a PACS over C-STORE or DICOMweb STOW-RS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medsynth.cli._common import handle_errors
from medsynth.push.options import push_options


@click.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@push_options()
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON report (every instance with its status and reason) to this file.")
@click.option("--json", "json_out", is_flag=True, help="Print the JSON report on stdout (the table goes to stderr).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@handle_errors
def push(folder: Path, report_path: Path | None, json_out: bool, no_progress: bool, **kwargs: Any) -> None:
    """Send every DICOM file of FOLDER to a PACS, then print what was sent, skipped and failed.

    Uses FOLDER/manifest.json when medsynth wrote the folder, else every DICOM file below it
    (DICOMDIR is skipped). C-STORE: a C-ECHO first, then one association per --batch-size
    instances. STOW-RS: one multipart POST per batch. Transient failures are retried with
    back-off; instances the destination acknowledged are recorded in
    FOLDER/.medsynth-push-state.json (or --state), so a re-run only sends the rest.
    Exits non-zero when any instance failed.

    \b
    Examples:
      medsynth push out/ --host 127.0.0.1 --port 4242 --called-aet ORTHANC
      MEDSYNTH_STOW_TOKEN=... medsynth push out/ --stow https://pacs/dicom-web/studies --report push.json
    """
    from medsynth.errors import ConfigError
    from medsynth.push.options import finish_push, push_config_from_options

    config = push_config_from_options(kwargs)
    if config is None:
        raise ConfigError("no destination: give --host/--port/--called-aet or --stow URL")
    finish_push(folder, config, json_out=json_out, report_path=report_path, progress=not no_progress)
