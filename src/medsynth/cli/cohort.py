"""``generate --cohort FILE``: the option added to ``medsynth generate`` (thin: parse, call, print)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from medsynth.cli._common import echo_json

F = TypeVar("F", bound=Callable[..., Any])

#: generate options a cohort file sets itself (given with --cohort, they would be ignored: refused)
_SET_BY_COHORT = ("modality", "condition", "seed", "steps", "like", "variants_of")


def cohort_option(func: F) -> F:
    """Decorator for ``generate``: ``--cohort FILE`` runs :func:`medsynth.cohort.generate_cohort`
    instead of one plain run; without it the wrapped command runs unchanged."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cohort_file: Path | None = kwargs.pop("cohort", None)
        if cohort_file is None:
            return func(*args, **kwargs)
        for name in _SET_BY_COHORT:
            if kwargs.get(name) is not None:
                raise click.UsageError(f"--{name.replace('_', '-')} cannot be combined with --cohort "
                                       "(the cohort file sets it)")
        if kwargs.get("push_send"):
            raise click.UsageError("--send is not available with --cohort; run `medsynth push OUT` after")
        from rich.console import Console

        from medsynth.cohort import cohort_summary_text, generate_cohort, load_cohort
        from medsynth.shard import resolve_shard

        shard = resolve_shard(kwargs.get("shard"))  # --shard I/N or the Slurm array task's
        cohort = load_cohort(cohort_file)
        if kwargs.get("multiframe"):  # --multiframe turns it on for a file that does not
            import dataclasses

            cohort = dataclasses.replace(cohort, multiframe=True)
        console = Console(stderr=True)
        if kwargs.get("no_progress") or kwargs.get("as_json"):
            summary = generate_cohort(cohort, kwargs["out_dir"], force=kwargs.get("force", False),
                                      threads=kwargs.get("threads"), shard=shard)
        else:
            with console.status("generating the cohort") as status:
                summary = generate_cohort(
                    cohort, kwargs["out_dir"], force=kwargs.get("force", False), threads=kwargs.get("threads"),
                    on_progress=status.update, shard=shard)
        if kwargs.get("as_json"):
            echo_json(summary)
        else:
            click.echo(cohort_summary_text(summary))
        return None

    opt = click.option("--cohort", "cohort", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml",
                       help="Generate a whole cohort described by a TOML file (patients, sex and age "
                            "distributions, multi-series CT/MR/X-ray studies, priors and currents; see "
                            "examples/cohort_hospital.toml); writes one folder per preset and cohort.json.")
    return opt(wrapper)  # type: ignore[return-value]
