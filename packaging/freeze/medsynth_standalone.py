"""Entry point of the standalone (frozen) medsynth: the torch-free commands, no Python needed.

The standalone build ships ``generate``, ``models``, ``to-dicom``, ``push``, ``prepare`` and
``evaluate``. ``train`` and ``export`` need torch and MONAI, which the build leaves out on purpose
(they would multiply its size); here they are replaced by commands that say so in one line and exit
with status 2, instead of an ImportError traceback.
"""

from __future__ import annotations

import multiprocessing
from typing import NoReturn

import click

from medsynth.cli import main as cli_main

#: commands that need the Python package with the ``train`` extra
NEEDS_TORCH: tuple[str, ...] = ("train", "export")
HINT = "not in the standalone build (needs torch): use the Python package, pip install 'medsynth[train]'"


def _unavailable(name: str) -> click.Command:
    def callback(**_: object) -> NoReturn:
        raise click.UsageError(f"medsynth {name} is {HINT}")

    return click.Command(
        name,
        callback=callback,
        help=f"Not available here: medsynth {name} is {HINT}.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=True,
    )


train = _unavailable("train")
export = _unavailable("export")


def main() -> None:
    """Run the medsynth CLI with ``train``/``export`` swapped for their one-line refusals."""
    multiprocessing.freeze_support()  # no-op unless a frozen child process is being started (Windows)
    for name in NEEDS_TORCH:
        if name in cli_main.COMMANDS:
            cli_main.COMMANDS[name] = f"{__name__}:{name}"
            cli_main.SHORT_HELP[name] = f"(not in the standalone build: needs torch) {cli_main.SHORT_HELP.get(name, '')}"
    cli_main.cli(prog_name="medsynth")

