"""``medsynth to-dicom``: write a NIfTI/NRRD/MHA/.npy volume or slice as a de-identified DICOM study."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from medsynth.cli._common import echo_json, handle_errors
from medsynth.errors import ConfigError


def _parse_spacing(value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--spacing {value!r}: expected three numbers X,Y,Z in mm, e.g. 0.8,0.8,3") from None
    if len(parts) != 3 or not all(0 < v < 1e4 for v in parts):
        raise ConfigError(f"--spacing {value!r}: expected three positive numbers X,Y,Z in mm, e.g. 0.8,0.8,3")
    return (parts[0], parts[1], parts[2])


def _parse_age(value: str) -> tuple[int, int]:
    try:
        lo, _, hi = value.partition("-")
        return (int(lo), int(hi or lo))
    except ValueError:
        raise ConfigError(f"--age {value!r}: expected years, e.g. 54 or 30-70") from None


def _parse_dates(value: str) -> tuple[dt.date, dt.date]:
    try:
        lo, _, hi = value.partition(":")
        return (dt.date.fromisoformat(lo), dt.date.fromisoformat(hi or lo))
    except ValueError:
        raise ConfigError(f"--study-dates {value!r}: expected YYYY-MM-DD or YYYY-MM-DD:YYYY-MM-DD") from None


@click.command("to-dicom", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=str))
@click.option("--modality", "-m", required=True, metavar="PRESET",
              help="Preset: ct-pelvis, ct-abdomen, ct-chest, mr-brain, mr-cardiac, xr-chest.")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder (must be empty or new, unless --force).")
@click.option("--force", is_flag=True, help="Write into a non-empty folder (a previous run's files are replaced).")
@click.option("--spacing", metavar="X,Y,Z", help="Voxel spacing in mm (column,row,slice); .npy input only.")
@click.option("--seed", type=click.IntRange(min=0), help="Make UIDs, identities and timestamps reproducible.")
@click.option("--uid-root", metavar="ROOT", help="UID prefix (default 2.25 UUID-derived UIDs).")
@click.option("--patients", type=click.IntRange(1, 10000), default=1, show_default=True)
@click.option("--studies", "studies", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Studies per patient.")
@click.option("--series", "series", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Series per study (each holds the whole input).")
@click.option("--name-prefix", default="SYNTHETIC", show_default=True, help="Family name of every patient.")
@click.option("--id-prefix", default="SYN", show_default=True, help="Start of PatientID and AccessionNumber.")
@click.option("--sex", type=click.Choice(["F", "M", "O", "random"]), default="random", show_default=True)
@click.option("--age", default="25-85", show_default=True, help="Age in years, or a MIN-MAX range.")
@click.option("--study-dates", default="2020-01-01:2024-12-31", show_default=True,
              help="Study date, or a FIRST:LAST range.")
@click.option("--synthetic", is_flag=True,
              help="The input is itself synthetic (e.g. from a generator): mark the output SyntheticData YES. "
                   "Without it the input is treated as a real scan and written as de-identified real data.")
@click.option("--dcm-names", is_flag=True,
              help="Name files IM000000.dcm (then no DICOMDIR: its File IDs cannot hold a '.').")
@click.option("--transfer-syntax", "transfer_syntax", default="explicit", show_default=True,
              type=click.Choice(["explicit", "implicit", "rle", "jpeg-ls", "jpeg2000", "jpeg2000-lossy", "jpeg-baseline"]),
              help="File encoding: explicit/implicit VR little endian, RLE, JPEG-LS or JPEG 2000 lossless, "
                   "JPEG 2000 lossy (ratio 10), JPEG baseline (8-bit input only).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@handle_errors
def to_dicom(input_path: str, modality: str, out_dir: str, force: bool, spacing: str | None,
             seed: int | None, uid_root: str | None, patients: int, studies: int, series: int,
             name_prefix: str, id_prefix: str, sex: str, age: str, study_dates: str, synthetic: bool,
             dcm_names: bool, transfer_syntax: str, as_json: bool) -> None:
    """Write INPUT (NIfTI/NRRD/MHA volume, or .npy [z,y,x] / [rows,cols] array) as DICOM.

    The input's geometry and values are kept (CT in HU, exact for integers); patient, study, dates
    and UIDs are made up; no text from the input's header or name is copied. A real scan becomes
    de-identified real data (De-identifying Equipment, SyntheticData NO, pixels not cleaned);
    --synthetic marks an already synthetic input as synthetic. Writes one file per slice, a
    DICOMDIR and manifest.json.

    \b
    Examples:
      medsynth to-dicom ../shared/data/ct/abdomen_pelvis_totalseg.nii.gz --modality ct-pelvis -o out/
      medsynth to-dicom slices.npy --spacing 0.8,0.8,3 -m ct-chest -o out/ --seed 1 --json
      medsynth to-dicom generated.nii.gz -m mr-brain -o out/ --synthetic
      medsynth to-dicom scan.nii.gz -m ct-chest -o out/ --transfer-syntax jpeg2000
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medsynth.dicom_io.identity import IdentityOptions, Sex
    from medsynth.dicom_io.volume_io import convert_file
    from medsynth.dicom_io.writer import WriterOptions
    from medsynth.presets import get_preset

    get_preset(modality)  # unknown preset: one-line error before any file is read
    identity = IdentityOptions(name_prefix=name_prefix, id_prefix=id_prefix, sex=Sex(sex),
                               age_years=_parse_age(age), study_dates=_parse_dates(study_dates))
    options = WriterOptions(patients=patients, studies_per_patient=studies, series_per_study=series,
                            identity=identity, uid_root=uid_root, seed=seed, dcm_names=dcm_names,
                            transfer_syntax=transfer_syntax)  # type: ignore[arg-type]  # parsed by WriterOptions
    columns = (TextColumn("writing DICOM"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # the bar appears only once the input is read: an error is never printed after an empty "0/?" bar
    progress = Progress(*columns, transient=True, console=Console(stderr=True))
    task = progress.add_task("write", total=None)

    def start(total: int) -> None:
        progress.update(task, total=total)
        progress.start()

    try:
        manifest: dict[str, Any] = convert_file(
            input_path, modality, out_dir, options, force=force, spacing_mm=_parse_spacing(spacing),
            on_start=start, on_slice=lambda n: progress.update(task, completed=n), synthetic=synthetic,
        )
    finally:
        progress.stop()
    summary = {
        "output": out_dir,
        "preset": manifest["preset"],
        "modality": manifest["modality"],
        "files": len(manifest["files"]),
        "patients": manifest["patients"],
        "studies": manifest["studies"],
        "series": len(manifest["series"]),
        "dicomdir": manifest["dicomdir"],
        "transfer_syntax": manifest["transfer_syntax"],
        "manifest": "manifest.json",
        "seed": manifest["seed"],
        "study_instance_uids": sorted({f["study_instance_uid"] for f in manifest["files"]}),
        "provenance": manifest["provenance"],
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {summary['files']} {summary['modality']} files in {summary['series']} series "
                   f"to {out_dir} ({'DICOMDIR, ' if summary['dicomdir'] else ''}manifest.json)")
