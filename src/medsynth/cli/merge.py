"""``medsynth merge-shards``: combine the shard folders of one ``generate --shard i/n`` run."""

from __future__ import annotations

from pathlib import Path

import click

from medsynth.cli._common import echo_json, handle_errors


@click.command("merge-shards", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shards", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Merged folder (must be empty or new, unless --force).")
@click.option("--force", is_flag=True, help="Write into a non-empty folder (a previous run's files are replaced).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def merge_shards(shards: tuple[Path, ...], out_dir: Path, force: bool, no_progress: bool, as_json: bool) -> None:
    """Merge the shard folders SHARDS... of one sharded generate run into one folder.

    Checks that every shard finished and that all belong to the same run (seed, namespace, pack,
    shard count, each index once), then hard-links (or copies, across volumes) every file to the
    same path under --output and writes one manifest.json and one DICOMDIR: the folder one
    unsharded run would have written. The shard folders are left as they are. Shards of a cohort
    (generate --cohort FILE --shard I/N) are merged preset folder by folder, with one cohort.json.

    \b
    Examples:
      medsynth merge-shards run/shard0 run/shard1 run/shard2 run/shard3 -o run/merged
      medsynth merge-shards run/shard* -o merged/ --json
      medsynth merge-shards run/s0 run/s1 -o hospital/        # shards of generate --cohort
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medsynth.shard import merge_shards as run_merge

    if as_json or no_progress:
        result = run_merge(shards, out_dir, force=force)
    else:
        with Progress(TextColumn("merging"), BarColumn(), MofNCompleteColumn(), transient=True,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("merge", total=None)
            result = run_merge(shards, out_dir, force=force,
                               on_file=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(f"merged {result.shards} shards into {out_dir}: {result.patients} patients, {result.studies} "
                   f"studies, {result.series} series, {result.files} files ({result.linked} hard links)"
                   f"{', DICOMDIR' if result.dicomdir else ''}, manifest.json")
