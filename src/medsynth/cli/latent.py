"""`medsynth train-autoencoder` and `medsynth train-latent`: the two stages of a latent-diffusion pack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medsynth.cli._common import echo_json, handle_errors

_COMMON = [
    click.option("--steps", type=click.IntRange(1), default=None, help="Step budget (default: the config's; raise it to continue)."),
    click.option("--max-minutes", type=click.FloatRange(0.1), default=None,
                 help="Stop cleanly with a checkpoint after this many minutes (resume later)."),
    click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads."),
    click.option("--seed", type=int, default=None, help="Seed of every random draw (default 0)."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
]


def _common(f):  # type: ignore[no-untyped-def]
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


@click.command("train-autoencoder", epilog="""\b
Examples:
  medsynth prepare ct/ -m ct-pelvis --matrix 512 --pixel-spacing 0.8 --slice-spacing 0 -o data/ct512
  medsynth train-autoencoder data/ct512 -o ~/runs/ct-ae --steps 600 --max-minutes 60
  medsynth train-autoencoder data/ct512 -o ~/runs/ct-ae --steps 1200      # resumes, continues
  medsynth train-autoencoder data/ct512 -o ~/runs/ct-ae --steps 2200 --decoder-only-steps 1000   # sharper decoder, same latents
""")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder (resumed when it holds a checkpoint).")
@click.option("--channels", default=None, help="Channels per level, e.g. 32,64,64,64 (4 levels = 8× per side).")
@click.option("--crop", type=click.IntRange(16), default=None, help="Training crop size in pixels (default 96).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Crops per step (default 8).")
@click.option("--whole-slice-steps", type=click.IntRange(0), default=None,
              help="The last N steps train on whole slices (so normalisation sees whole-slice statistics), the learning rate falling to a tenth over them; the EMA restarts with them.")
@click.option("--decoder-only-steps", type=click.IntRange(0), default=None,
              help="Then N more steps (whole slices) train the decoder alone, the encoder frozen: sharpens a pack's "
                   "decoder without moving the latent space its denoiser was trained on.")
@_common
@handle_errors
def train_autoencoder_cmd(dataset: Path, run_dir: Path, channels: str | None, crop: int | None,
                          batch_size: int | None, whole_slice_steps: int | None, decoder_only_steps: int | None,
                          steps: int | None, max_minutes: float | None,
                          threads: int | None, seed: int | None, as_json: bool) -> None:
    """Train the autoencoder (MONAI AutoencoderKL, L1 + KL) of a latent-diffusion pack on random
    crops of DATASET's full-resolution slices; checkpoints often and resumes from RUN."""
    from dataclasses import replace

    from medsynth.errors import ConfigError
    from medsynth.latent.autoencoder import train_autoencoder
    from medsynth.latent.config import AutoencoderConfig

    cfg = AutoencoderConfig()
    try:
        if channels:
            cfg = replace(cfg, channels=tuple(int(c) for c in channels.split(",")))
    except ValueError:
        raise ConfigError(f"--channels must be comma-separated integers, got {channels!r}") from None
    changes: dict[str, Any] = {k: v for k, v in {"crop": crop, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    cfg = replace(cfg, **changes)
    summary = train_autoencoder(dataset, run_dir, cfg if (channels or crop or batch_size or seed is not None) else None,
                                steps=steps, whole_slice_steps=whole_slice_steps,
                                decoder_only_steps=decoder_only_steps, max_minutes=max_minutes,
                                threads=threads, show_progress=not as_json)
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(f"autoencoder {run_dir}: step {summary.steps_done}/{summary.steps_target}, L1 {summary.last_loss}")


@click.command("train-latent", epilog="""\b
Examples:
  medsynth prepare ct/ -m ct-pelvis --labels-file labels.csv --matrix 512 --pixel-spacing 0.8 -o data/ct512-5mm
  medsynth train-latent data/ct512-5mm --autoencoder ~/runs/ct-ae -o ~/runs/ct-ldm --steps 6000 --max-minutes 60
  medsynth train-latent data/ct512-5mm --autoencoder ~/runs/ct-ae -o ~/runs/ct-ldm --steps 12000 --previous-dropout-from 6000:0.5
  medsynth export ~/runs/ct-ldm --autoencoder ~/runs/ct-ae -o packs/ct-body-512
""")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False))
@click.option("--autoencoder", "ae_run", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The autoencoder run (`medsynth train-autoencoder`).")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder (resumed when it holds a checkpoint).")
@click.option("--channels", default=None, help="UNet channels per level (default 64,128,128).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Latents per step (default 8).")
@click.option("--previous-dropout-from", "dropout_from", default=None, metavar="STEP:P",
              help="From STEP on, train pairs without their previous slice with probability P (first slices of a "
                   "series are sampled that way); kept in the run's config, so the run replays in one call.")
@_common
@handle_errors
def train_latent_cmd(dataset: Path, ae_run: Path, run_dir: Path, channels: str | None, batch_size: int | None,
                     dropout_from: str | None, steps: int | None, max_minutes: float | None, threads: int | None,
                     seed: int | None, as_json: bool) -> None:
    """Train the latent denoiser (MONAI DiffusionModelUNet, v-prediction, conditioned on label, slice
    position and the previous slice's latent) on DATASET encoded by the autoencoder."""
    from dataclasses import replace

    from medsynth.errors import ConfigError
    from medsynth.latent.config import LatentDenoiserConfig
    from medsynth.latent.denoiser import train_latent

    cfg = LatentDenoiserConfig()
    try:
        if channels:
            ch = tuple(int(c) for c in channels.split(","))
            cfg = replace(cfg, channels=ch, attention_levels=tuple(i == len(ch) - 1 for i in range(len(ch))))
    except ValueError:
        raise ConfigError(f"--channels must be comma-separated integers, got {channels!r}") from None
    phase: tuple[int, float] | None = None
    if dropout_from:
        try:
            at, p = dropout_from.split(":")
            phase = (int(at), float(p))
        except ValueError:
            raise ConfigError(f"--previous-dropout-from must be STEP:P (e.g. 6000:0.5), got {dropout_from!r}") from None
        if phase[0] < 0 or not 0.0 <= phase[1] <= 1.0:
            raise ConfigError(f"--previous-dropout-from needs STEP ≥ 0 and P in [0, 1], got {dropout_from!r}")
    changes: dict[str, Any] = {k: v for k, v in {"batch_size": batch_size, "seed": seed}.items() if v is not None}
    cfg = replace(cfg, **changes)
    summary = train_latent(dataset, ae_run, run_dir, cfg if (channels or batch_size or seed is not None) else None,
                           steps=steps, max_minutes=max_minutes, threads=threads, show_progress=not as_json,
                           previous_dropout_from=phase)
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(f"latent denoiser {run_dir}: step {summary.steps_done}/{summary.steps_target}, loss {summary.last_loss}")


@click.command("runs-from-pack", epilog="""\b
Examples:
  medsynth runs-from-pack ct-body-512 --autoencoder-out ~/runs/ct-ae -o ~/runs/ct-ldm
  medsynth train-latent data/my-ct-5mm --autoencoder ~/runs/ct-ae -o ~/runs/ct-ldm --steps 8000 --max-minutes 60
  medsynth export ~/runs/ct-ldm --autoencoder ~/runs/ct-ae -o packs/my-ct-body --model-id my-ct-body
""")
@click.argument("pack")
@click.option("--autoencoder-out", "ae_run", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="New folder for the autoencoder run.")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="New folder for the latent-denoiser run.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@handle_errors
def runs_from_pack_cmd(pack: str, ae_run: Path, run_dir: Path, as_json: bool) -> None:
    """Rebuild the training runs of a latent pack (PACK: a folder, or a bundled model id) from its ONNX
    weights, so `train-latent` can train it further, e.g. on your own scans (same labels). The
    rebuilt modules are checked against the pack's graphs; the optimizer restarts."""
    from medsynth.latent.recover import runs_from_pack
    from medsynth.pack import bundled_packs_dir

    folder = Path(pack)
    if not folder.is_dir() and (bundled_packs_dir() / pack).is_dir():
        folder = bundled_packs_dir() / pack
    summary = runs_from_pack(folder, ae_run, run_dir)
    if as_json:
        echo_json(summary.to_json())
    else:
        worst = max(summary.max_abs_error.values())
        click.echo(f"autoencoder run {ae_run} (step {summary.autoencoder_steps}), latent run {run_dir} "
                   f"(step {summary.denoiser_steps}); max |ONNX − rebuilt| {worst:.2g}")
