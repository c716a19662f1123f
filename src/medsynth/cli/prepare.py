"""`medsynth prepare`: real scans → a training dataset (thin wrapper over medsynth.prepare)."""

from __future__ import annotations

from pathlib import Path

import click

from medsynth.cli._common import echo_json, handle_errors

_PRESETS = ["ct-pelvis", "ct-abdomen", "ct-chest", "mr-brain", "mr-cardiac", "xr-chest", "micro-malaria"]


@click.command("prepare")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--modality", "-m", "preset", required=True, type=click.Choice(_PRESETS),
              help="Preset the dataset is for (matrix, spacing, intensity mapping, labels).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Dataset folder to write (must be empty or absent, unless --force).")
@click.option("--label", default=None, help="Condition for every input (one of the preset's conditions).")
@click.option("--labels-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV (name,label[,z_range]) or JSON mapping input names to labels.")
@click.option("--label-from-folder", is_flag=True,
              help="Label = the nearest parent folder named after one of the preset's conditions.")
@click.option("--z-range", default=None,
              help="CT/MR slab to keep: fractions LOW:HIGH (0 = inferior, 1 = superior) or LPS z in mm "
                   "(-300:-120mm). Default: slices whose body cross-section is >= 30% (CT) / 20% (MR) "
                   "of the largest.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Split read from MedMNIST .npz files; micro-malaria: train or held-out (test) patients.")
@click.option("--n4", is_flag=True, help="MR: N4 bias-field correction (SimpleITK) before normalisation.")
@click.option("--slice-spacing", type=float, default=None,
              help="Slice spacing in mm (0 = native). Default: max(preset slice thickness, native).")
@click.option("--min-body-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="Automatic slice selection threshold (fraction of the largest body cross-section).")
@click.option("--matrix", type=int, default=None,
              help="Square matrix in pixels instead of the preset's (e.g. 512 for a latent-diffusion pack).")
@click.option("--pixel-spacing", type=float, default=None,
              help="In-plane pixel spacing in mm instead of the preset's (e.g. 0.8).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@handle_errors
def prepare(inputs: tuple[Path, ...], preset: str, output: Path, label: str | None, labels_file: Path | None,
            label_from_folder: bool, z_range: str | None, split: str, n4: bool, slice_spacing: float | None,
            min_body_fraction: float | None, matrix: int | None, pixel_spacing: float | None, force: bool,
            as_json: bool) -> None:
    """Read DICOM folders/files, NIfTI/NRRD/MHA volumes, PNG/JPEG X-rays or MedMNIST .npz files and
    write a training dataset: slices.npy (float32 [N,H,W] in [-1,1]), labels.npy, positions.npy,
    manifest.json and contact_sheet.png.

    \b
    Examples:
      medsynth prepare ../shared/data/ct/abdomen_pelvis_totalseg.nii.gz --modality ct-pelvis \\
          --label pelvis --z-range 0:0.45 -o data/ct-pelvis
      medsynth prepare scans/ --modality mr-brain --labels-file labels.csv -o data/mr-brain
      medsynth prepare ../shared/data/xr/pneumoniamnist_28.npz --modality xr-chest -o data/xr
      medsynth prepare ../shared/data/micro/malaria_nih_cells --modality micro-malaria --label-from-folder -o data/micro
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from medsynth.dicom_io.reader import discover_files
    from medsynth.prepare import PrepareConfig, ZRange, prepare_dataset

    if slice_spacing is not None and slice_spacing < 0:
        raise click.BadParameter("must be >= 0", param_hint="--slice-spacing")
    config = PrepareConfig(
        preset=preset, label=label, labels_file=labels_file, label_from_folder=label_from_folder,
        z_range=ZRange.parse(z_range) if z_range else None, split=split,  # type: ignore[arg-type]
        n4=n4, slice_spacing_mm=slice_spacing, min_body_fraction=min_body_fraction, force=force,
        matrix=(matrix, matrix) if matrix is not None else None, pixel_spacing_mm=pixel_spacing)
    err = Console(stderr=True)
    total = len(discover_files(inputs)[0])
    # the bar starts with the first file read: option and output errors come without an empty bar
    progress = Progress(TextColumn("reading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=as_json)
    task = progress.add_task("files", total=total)

    def on_file(_path: Path) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.advance(task)

    try:
        report = prepare_dataset(inputs, output, config, on_file=on_file)
    finally:
        progress.stop()
    if as_json:
        echo_json(report.to_json())
        return
    out = Console()
    table = Table(title=f"medsynth prepare → {report.output} ({report.preset})")
    table.add_column("source")
    table.add_column("label")
    table.add_column("slices", justify="right")
    table.add_column("notes")
    for s in report.sources:
        table.add_row(f"{s.name}: {s.display}", f"{s.label} ({s.label_origin})", str(s.slices), "; ".join(s.notes))
    for sk in report.skipped:
        table.add_row(str(sk.path), "[red]skipped[/red]", "0", sk.reason)
    out.print(table)
    per_label = ", ".join(f"{k} {v}" for k, v in sorted(report.per_label.items()))
    out.print(f"inputs {report.inputs} · files read {report.files_read} · series found {report.series_found} · "
              f"slices kept {report.slices_kept} ({per_label}) · skipped {len(report.skipped)}")
