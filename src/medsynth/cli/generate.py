"""``medsynth generate``: sample synthetic slices from a model pack and write DICOM, NIfTI or PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medsynth.cli._common import echo_json, handle_errors
from medsynth.cli.cohort import cohort_option
from medsynth.cli.derived import derived_options
from medsynth.cli.identity_options import identity_options
from medsynth.push.options import push_options


def _shard(text: str | None) -> Any:
    """--shard I/N, else the Slurm array task's shard, else None; N = 1 means no sharding."""
    from medsynth.shard import resolve_shard

    return resolve_shard(text)


@click.command("generate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--modality", "-m", metavar="PRESET",
              help="Preset: ct-pelvis, ct-abdomen, ct-chest, mr-brain, mr-cardiac, xr-chest, micro-malaria (required unless --like/--variants-of).")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (must be empty or new, unless --force).")
@click.option("--patients", type=click.IntRange(1, 10000), default=1, show_default=True)
@click.option("--studies", type=click.IntRange(1, 10000), default=1, show_default=True, help="Studies per patient.")
@click.option("--series", type=click.IntRange(1, 10000), default=1, show_default=True, help="Series per study.")
@click.option("--slices", type=click.IntRange(1, 10000), default=32, show_default=True,
              help="Slices per series (2D presets such as xr-chest: one image per series).")
@click.option("--condition", metavar="LABEL", help="Condition label (default: the preset's, e.g. pelvis, t1, normal).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1),
              help="Same seed and device give the same pixels (default: random, recorded in the manifest).")
@click.option("--reproducible-uids", is_flag=True, help="Derive UIDs, identities and dates from --seed too.")
@click.option("--steps", type=click.IntRange(1, 100000), help="Denoising steps (default: the pack's).")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim", "dpmpp-2m"]), help="Sampler (default: the pack's).")
@click.option("--eta", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="DDIM noise η (0 = deterministic).")
@click.option("--guidance", type=click.FloatRange(0.0, 50.0),
              help="Classifier-free guidance scale w (1 = off; default: the pack's).")
@click.option("--model", "model", type=click.Path(file_okay=False, path_type=Path),
              help="Your own model pack folder (its sha256s are checked).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="A folder of packs searched before the bundled ones (default: $MEDSYNTH_MODEL_DIR).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads (default: physical cores).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Slices sampled together (memory grows with it).")
@click.option("--format", "fmt", type=click.Choice(["dicom", "nifti", "png"]), default="dicom", show_default=True)
@click.option("--transfer-syntax", "transfer_syntax", default="explicit", show_default=True,
              type=click.Choice(["explicit", "implicit", "rle", "jpeg-ls", "jpeg2000", "jpeg2000-lossy", "jpeg-baseline"]),
              help="DICOM file encoding: explicit/implicit VR little endian, RLE, JPEG-LS or JPEG 2000 lossless, "
                   "JPEG 2000 lossy (ratio 10; new UIDs); jpeg-baseline is refused (generated pixels are 12-bit).")
@click.option("--shard", metavar="I/N",
              help="Write shard I of N (0-based: the patients p with p % N == I); default from "
                   "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT in a Slurm array job (0/1 = no sharding). "
                   "Needs --seed and --reproducible-uids (not with --cohort); combine with medsynth merge-shards.")
@click.option("--multiframe", is_flag=True,
              help="Write each CT/MR series as ONE multi-frame object (Legacy Converted Enhanced CT/MR Image "
                   "Storage: per-frame positions in functional groups) instead of one file per slice.")
@click.option("--preview", is_flag=True, help="Also write preview.png, a contact sheet of the first slices.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder (a previous run's files are replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON (no progress bar).")
@push_options(send_flag=True)
@handle_errors
@identity_options
@cohort_option
@derived_options
def generate(modality: str, out_dir: Path, patients: int, studies: int, series: int, slices: int,
             condition: str | None, seed: int | None, reproducible_uids: bool, steps: int | None,
             sampler: str | None, eta: float, guidance: float | None, model: Path | None,
             model_dir: Path | None, device: str, threads: int | None, batch_size: int, fmt: str,
             transfer_syntax: str, shard: str | None, multiframe: bool, preview: bool, force: bool, as_json: bool, **push_kwargs: Any) -> None:
    """Sample synthetic slices with onnxruntime (no torch) and write a synthetic study.

    Sampler, steps and guidance default to the model pack's own settings. Slices are written as
    each batch finishes; the run ends with DICOMDIR (DICOM) and manifest.json.

    \b
    Examples:
      medsynth generate --modality ct-pelvis -o out/
      medsynth generate -m mr-brain --condition flair --patients 3 --slices 24 --seed 1 -o out/
      medsynth generate -m ct-chest --format nifti --preview -o out/ --json
      medsynth generate -m ct-pelvis --model my_pack/ --sampler ddim --steps 50 -o out/
      medsynth generate -m ct-chest --transfer-syntax jpeg2000 -o out/
      medsynth generate -m ct-chest --slices 64 --multiframe -o out/   # one Enhanced (Legacy Converted) CT object
      medsynth generate -m mr-brain --patients 5 --sex F --age 40-60 --study-dates 2023-01-01:2023-12-31 -o out/
      medsynth generate -m ct-chest --name-prefix TESTPAT --id-prefix TP --uid-root 1.2.826.0.1.3680043.10.999 -o out/
      medsynth generate -m ct-chest --patients 100 --seed 1 --reproducible-uids --shard 0/4 -o run/shard0/
      medsynth generate -m ct-pelvis -o out/ --send --host pacs --port 104 --called-aet ARCHIVE
      medsynth generate --like ../shared/data/ct/upper_abdomen_dicom -o out/
      medsynth generate --cohort examples/cohort_hospital.toml -o hospital/ --no-progress
      medsynth generate --cohort examples/cohort_hospital.toml --shard 0/2 -o run/s0/   # then merge-shards
      medsynth generate --variants-of series/ --strength 0.5 --model ct-body-512 -o out/
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from medsynth.errors import ConfigError
    from medsynth.generate import GenerateConfig
    from medsynth.generate import generate as run_generate
    from medsynth.push.options import check_push, finish_push, push_config_from_options, run_push

    identity, uid_root = push_kwargs.pop("identity", None), push_kwargs.pop("uid_root", None)
    no_progress = push_kwargs.pop("no_progress", False)
    send_report = push_kwargs.pop("push_report", None)
    push_cfg = push_config_from_options(push_kwargs)  # checked before sampling; None without --send
    if push_cfg is not None and fmt != "dicom":
        raise ConfigError("--send needs --format dicom")
    cfg = GenerateConfig(
        modality=modality, out_dir=out_dir, patients=patients, studies=studies, series=series, slices=slices,
        condition=condition, seed=seed, sampler=sampler, steps=steps, eta=eta, guidance=guidance, model=model,
        model_dir=model_dir, device=device,  # type: ignore[arg-type]
        threads=threads, batch_size=batch_size, format=fmt,  # type: ignore[arg-type]
        preview=preview, force=force, reproducible_uids=reproducible_uids, transfer_syntax=transfer_syntax,
        shard=_shard(shard), identity=identity, uid_root=uid_root, multiframe=multiframe,
    )
    if as_json:
        summary = run_generate(cfg).to_json()
        if push_cfg is None:
            echo_json(summary)
            return
        report = run_push(out_dir, push_cfg, table_to_stderr=True, report_path=send_report, progress=False)
        echo_json({**summary, "push": report.to_json()})
        check_push(report, send_report)
        return
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[step]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False, disable=no_progress) as bar:
        task = bar.add_task("slices", total=None, step="")
        result = run_generate(
            cfg,
            on_slice=lambda done, total: bar.update(task, completed=done, total=total),
            on_step=lambda i, n: bar.update(task, step=f"step {i}/{n}"),
        )
        bar.update(task, step="")
    table = Table(title=f"medsynth generate: {result.preset}", show_header=False)
    rows = [
        ("output", f"{result.out_dir} ({result.format}, {result.files} files)"),
        ("series / slices", f"{result.series} / {result.slices}"),
        ("model", f"{result.model_id} (sha256 {result.model_sha256[:12]}…)"),
        ("sampler", f"{result.sampler}, {result.steps} steps, guidance {result.guidance:g}, eta {result.eta:g}"),
        ("condition / seed", f"{result.condition} / {result.seed}"),
        ("device", f"{result.provider}" + (f", {result.threads} threads" if result.threads else "")),
        ("time", f"{result.seconds:.1f} s, {result.seconds_per_slice:.3f} s/slice, first slice {result.first_slice_s:.2f} s"),
        ("manifest", str(result.manifest)),
    ]
    if result.preview:
        rows.append(("preview", str(result.preview)))
    for note in result.notes:
        rows.append(("note", note))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    if push_cfg is not None:
        finish_push(result.out_dir, push_cfg, json_out=False, report_path=send_report, progress=not no_progress)
