"""Entry point: a lazy click group, so `medsynth --help` never imports torch, monai or onnxruntime.

Each command lives in its own module ``medsynth.cli.<module>`` as a click command object named in
``COMMANDS``; it is imported only when that command runs (or its own --help is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from medsynth import __version__

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "generate": "medsynth.cli.generate:generate",
    "models": "medsynth.cli.models:models",
    "evaluate": "medsynth.cli.evaluate:evaluate",
    "push": "medsynth.cli.push:push",
    "to-dicom": "medsynth.cli.to_dicom:to_dicom",
    "prepare": "medsynth.cli.prepare:prepare",
    "train": "medsynth.cli.train:train",
    "export": "medsynth.cli.export:export",
    "train-autoencoder": "medsynth.cli.latent:train_autoencoder_cmd",
    "train-latent": "medsynth.cli.latent:train_latent_cmd",
    "runs-from-pack": "medsynth.cli.latent:runs_from_pack_cmd",
    "merge-shards": "medsynth.cli.merge:merge_shards",
}

# one-line help shown in `medsynth --help` without importing the command's module
SHORT_HELP: dict[str, str] = {
    "to-dicom": "Write a volume or slices (NIfTI/NRRD/MHA/.npy) as a synthetic DICOM study.",
    "prepare": "Read DICOM/NIfTI/NRRD/X-ray images and write a training dataset.",
    "train": "Train a diffusion model (MONAI DiffusionModelUNet) on a prepared dataset.",
    "export": "Export a training run to a verified ONNX model pack.",
    "train-autoencoder": "Train the autoencoder of a latent-diffusion pack (MONAI AutoencoderKL).",
    "train-latent": "Train the latent denoiser of a latent-diffusion pack (series-coherent).",
    "runs-from-pack": "Rebuild a latent pack's training runs from its ONNX weights (to train it further).",
    "generate": "Sample synthetic slices with onnxruntime and write DICOM/NIfTI/PNG.",
    "models": "List the model packs with their model cards.",
    "push": "Send a DICOM folder to a PACS (C-STORE or DICOMweb STOW-RS).",
    "evaluate": "Measure synthetic images against real ones (SSIM, FID, memorisation...).",
    "merge-shards": "Merge the shard folders of one generate --shard run into one folder.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        cmd = getattr(importlib.import_module(module_name), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{target} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medsynth")
def cli(**_: Any) -> None:
    """medsynth: synthetic, de-identified CT, MR and X-ray DICOM from diffusion models.

    \b
    Examples:
      medsynth generate --modality ct-pelvis -o out/
      medsynth to-dicom scan.nii.gz --modality ct-abdomen -o out/
      medsynth <command> --help
    """


if __name__ == "__main__":  # pragma: no cover
    cli()
