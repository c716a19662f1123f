"""`medsynth train`: train a diffusion model on a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medsynth.cli._common import echo_json, handle_errors
from medsynth.errors import ConfigError

_CHOICE = click.Choice
#: packages of the [train] extra whose absence gets a one-line install hint instead of a traceback
_TRAIN_DEPENDENCIES = {"torch", "monai", "safetensors", "torchvision"}


@click.command(
    "train",
    epilog="""\b
Examples:
  medsynth train data/ct -o runs/ct --max-minutes 60
  medsynth train data/ct -o runs/ct --config train.toml --steps 5000 --json
  medsynth train data/ct -o runs/ct --resume --steps 8000   # continue a run exactly
  torchrun --standalone --nproc-per-node 4 --no-python medsynth train data/ct -o runs/ct --batch-size 64
""",
)
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder: config.json, checkpoints, train_log.jsonl, samples/*.png.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML (or JSON) file with [model], [schedule], [optim] tables; flags override it.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN from its checkpoint (bitwise exact).")
@click.option("--steps", type=int, help="Total optimisation steps (default 2000).")
@click.option("--batch-size", type=int, help="Images per step, over all torchrun processes (default 16).")
@click.option("--micro-batch", type=int,
              help="At most this many images per forward pass and process; gradients accumulate (default 0 = all).")
@click.option("--lr", type=float, help="AdamW learning rate (default 5e-4, linear warm-up).")
@click.option("--max-minutes", type=float, help="Stop cleanly with a checkpoint after this wall-clock time.")
@click.option("--prediction", type=_CHOICE(["v_prediction", "epsilon"]), help="What the UNet predicts (default v).")
@click.option("--loss", type=_CHOICE(["mse", "huber"]), help="Training loss (default mse).")
@click.option("--schedule", type=_CHOICE(["linear_beta", "scaled_linear_beta", "cosine"]),
              help="Noise schedule (default scaled_linear_beta).")
@click.option("--timesteps", type=int, help="Number of training timesteps (default 1000).")
@click.option("--channels", type=str, help="UNet channels per level, e.g. 32,64,64 (the default).")
@click.option("--attention-levels", type=str, help="Attention per level, e.g. false,false,true.")
@click.option("--position/--no-position", "use_position", default=None,
              help="Condition on the slice's relative position (off by default).")
@click.option("--label-dropout", type=float, help="Label dropout for classifier-free guidance (default 0.1).")
@click.option("--ema-decay", type=float, help="EMA decay (default 0.999, with warm-up).")
@click.option("--grad-clip", type=float, help="Gradient-norm clip (default 1.0; 0 = off).")
@click.option("--precision", type=_CHOICE(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast precision: auto = bf16 on CPU, bf16/fp16 on CUDA.")
@click.option("--device", type=_CHOICE(["auto", "cpu", "cuda"]), help="Where to train (auto = CUDA when present).")
@click.option("--augment/--no-augment", default=None, help="Contrast jitter and small shifts (no flips).")
@click.option("--seed", type=int, help="Seed of weights, batches and noise (default 0).")
@click.option("--threads", type=int, help="CPU threads for torch (default: all logical CPUs).")
@click.option("--sample-every", type=int, help="Steps between preview grids (0 = only at the end).")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints (always one at the end).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@handle_errors
def train(dataset: Path, run_dir: Path, config_file: Path | None, resume: bool, quiet: bool, as_json: bool,
          **flags: Any) -> None:
    """Train a diffusion model (MONAI DiffusionModelUNet, DDPM) on DATASET (from `medsynth prepare`).

    Saves the resolved configuration, safetensors checkpoints, a JSON-lines log and PNG preview
    grids sampled from the EMA weights into RUN. Ctrl-C or --max-minutes stop with a checkpoint;
    --resume continues where it stopped. Export the result with `medsynth export RUN -o PACK`.
    Under torchrun each process trains on its slice of every batch (DDP; gloo on CPU, nccl on
    CUDA), rank 0 writes RUN; a run resumes with any number of processes.
    """
    try:
        from medsynth.training.trainer import train as run_training
    except ModuleNotFoundError as err:  # the torch-free install (`pip install '.[cpu]'`) has no trainer
        missing = (err.name or "").split(".")[0]
        if missing not in _TRAIN_DEPENDENCIES:
            raise
        raise ConfigError(f"medsynth train needs PyTorch and MONAI ({missing} is not installed): "
                          "pip install torch==2.13.0 && pip install 'medsynth[train]'") from None

    keys = {
        "steps": "optim.steps", "batch_size": "optim.batch_size", "micro_batch": "optim.micro_batch", "lr": "optim.lr",
        "max_minutes": "optim.max_minutes", "prediction": "schedule.prediction_type", "loss": "optim.loss",
        "schedule": "schedule.schedule", "timesteps": "schedule.num_train_timesteps",
        "channels": "model.channels", "attention_levels": "model.attention_levels",
        "use_position": "model.use_position", "label_dropout": "optim.label_dropout",
        "ema_decay": "optim.ema_decay", "grad_clip": "optim.grad_clip", "precision": "optim.precision",
        "device": "optim.device", "augment": "optim.augment", "seed": "optim.seed", "threads": "optim.threads",
        "sample_every": "optim.sample_every", "checkpoint_every": "optim.checkpoint_every",
    }
    overrides = {keys[k]: v for k, v in flags.items() if v is not None}
    summary = run_training(dataset, run_dir, config_file=config_file, overrides=overrides, resume=resume,
                           progress=not quiet)
    if summary.rank != 0:  # under torchrun, rank 0 reports for the whole job
        return
    if as_json:
        echo_json(summary.to_json())
    else:
        loss = f"{summary.last_loss:.4f}" if summary.last_loss is not None else "-"
        click.echo(f"{summary.stopped}: step {summary.steps_done}/{summary.steps_target}, loss {loss}, "
                   f"{summary.images_per_second:.1f} img/s ({summary.precision} on {summary.device}); run in {run_dir}")
        for w in summary.warnings:
            click.echo(f"warning: {w}", err=True)
