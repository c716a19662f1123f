"""Entry point of the standalone (frozen) medsynth: the torch-free commands, no Python needed.

The standalone build ships every medsynth module but leaves out torch, MONAI and onnx (they would
multiply its size), so ``generate``, ``models``, ``to-dicom``, ``push``, ``prepare`` and ``evaluate``
work and the training commands (``train``, ``export``, ``train-autoencoder``, ``train-latent``, and any
later one that imports torch) cannot. Those fail here with one line naming the missing library and
exit status 2, instead of an ImportError traceback. Which commands those are is not listed anywhere:
whatever a command imports that the build left out is caught when it is imported.
"""

from __future__ import annotations

import multiprocessing
import sys

import click

from medsynth.cli import main as cli_main

#: top-level packages the spec leaves out of the build (EXCLUDES in medsynth.spec imports this)
LEFT_OUT: tuple[str, ...] = (
    "torch", "torchvision", "torchaudio", "triton", "monai", "onnx", "onnxscript", "onnx_ir",
    "safetensors", "einops", "sympy", "networkx", "functorch",
)
EXIT_UNAVAILABLE = 2


def _command_name(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> None:
    """Run the medsynth CLI; a command that needs a left-out library ends with one line and exit 2."""
    multiprocessing.freeze_support()  # no-op unless a frozen child process is being started (Windows)
    args = sys.argv[1:] if argv is None else argv
    try:
        cli_main.cli.main(args=args, prog_name="medsynth")
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in LEFT_OUT:
            raise
        name = _command_name(args)
        click.echo(f"Error: medsynth {name} needs {top}, which the standalone build leaves out: use the Python "
                   "package for training (pip install 'medsynth[train]').", err=True)
        sys.exit(EXIT_UNAVAILABLE)
