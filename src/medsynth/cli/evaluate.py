"""`medsynth evaluate`: synthetic images measured against real ones (thin wrapper over medsynth.evaluation)."""

from __future__ import annotations

from pathlib import Path

import click

from medsynth.cli._common import echo_json, handle_errors


@click.command("evaluate")
@click.option("--real", "real", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Prepared dataset of real images (`medsynth prepare`): the reference.")
@click.option("--synthetic", "synthetic", default=None, type=click.Path(path_type=Path),
              help="Generated output folder (DICOM or NIfTI, `medsynth generate`) or a prepared dataset.")
@click.option("--pack", "pack", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Instead of --synthetic: a model pack; its images are made by `medsynth generate` itself "
                   "(pack defaults, one condition per real label) so the numbers describe what users get.")
@click.option("--images", "pack_images", default=64, show_default=True, type=click.IntRange(2, 100000),
              help="With --pack: how many images to generate.")
@click.option("--steps", "pack_steps", default=None, type=click.IntRange(1, 10000),
              help="With --pack: sampler steps (default: the pack's).")
@click.option("--discriminator", default="auto", show_default=True, type=click.Choice(["auto", "cnn", "logistic"]),
              help="Real-vs-synthetic discriminator: a small CNN (needs torch), logistic regression, or auto.")
@click.option("--train", "train", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Prepared training dataset of the model: enables the memorisation check.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Report folder to write (report.json, report.html, PNGs); must be empty or absent.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the real-set split and subsampling.")
@click.option("--max-images", default=500, show_default=True, type=click.IntRange(2, None),
              help="At most this many synthetic images (and real-A images) are measured.")
@click.option("--threshold", "threshold", default=0.95, show_default=True, type=click.FloatRange(0.0, 1.0,
              min_open=True), help="Memorisation: SSIM at or above which a synthetic image counts as a copy.")
@click.option("--force", is_flag=True, help="Replace an existing report folder.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of the table.")
@handle_errors
def evaluate(real: Path, synthetic: Path | None, pack: Path | None, pack_images: int, pack_steps: int | None,
             discriminator: str, train: Path | None, output: Path, seed: int, max_images: int,
             threshold: float, force: bool, as_json: bool) -> None:
    """Measure synthetic images against real ones: SSIM/MSE (nearest and random pairs), diversity,
    intensity histograms (KL, chi-square, CT tissue fractions), Fréchet distance on fixed features,
    radial power spectrum, adjacent-slice coherence, a real-vs-synthetic discriminator, a classifier
    test and train-on-synthetic / test-on-real (with real+synthetic augmentation) for labelled data,
    a per-condition breakdown and, with --train, memorisation. Every number
    has a 95 % bootstrap interval and is printed beside its real-vs-real baseline (the real set split
    into two halves by volume/patient, never by slice). Use real patients the model never saw.

    \b
    Examples:
      medsynth prepare ../shared/data/xr/pneumoniamnist_28.npz --modality xr-chest --split train -o data/xr-train
      medsynth prepare ../shared/data/xr/pneumoniamnist_28.npz --modality xr-chest --split test -o data/xr-test
      medsynth evaluate --real data/xr-test --pack src/medsynth/packs/xr-chest --images 128 --train data/xr-train -o report/
      medsynth generate --modality xr-chest --condition pneumonia -o gen/xr
      medsynth evaluate --real data/xr-test --synthetic gen/xr --train data/xr-train -o report/
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from medsynth.evaluation import EvaluationConfig
    from medsynth.evaluation import evaluate as run_evaluation
    from medsynth.evaluation.report import rich_table

    config = EvaluationConfig(seed=seed, max_query=max_images, memorisation_threshold=threshold,
                              discriminator=discriminator)  # type: ignore[arg-type]  # click.Choice
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=as_json) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        report = run_evaluation(real, synthetic, output, train=train, config=config, force=force,
                                progress=on_progress, pack=pack, pack_images=pack_images, pack_steps=pack_steps)
    if as_json:
        echo_json(report.data)
        return
    out = Console()
    out.print(rich_table(report.data))
    skipped = report.data["inputs"]["synthetic"]["skipped"]
    for note in skipped[:10]:
        err.print(f"[yellow]skipped[/yellow] {note}")
    if len(skipped) > 10:
        err.print(f"[yellow]skipped[/yellow] … and {len(skipped) - 10} more (see report.json)")
    out.print(f"Report: {output / 'report.html'}  ({report.data['elapsed_s']} s)")
