"""``generate --like`` and ``generate --variants-of``: options added to ``medsynth generate``.

:func:`derived_options` adds ``--like``, ``--variants-of`` and ``--strength``; when one of the
first two is given, the command runs :func:`medsynth.like.generate_like` or
:func:`medsynth.variants.make_variants` instead of plain sampling (thin CLI: parse, call, print).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from medsynth.cli._common import echo_json

F = TypeVar("F", bound=Callable[..., Any])


def derived_options(func: F) -> F:
    """Decorator for ``generate``: the ``--like`` / ``--variants-of`` / ``--strength`` options and
    their dispatch; without them the wrapped command runs unchanged (``--modality`` then required)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        like: Path | None = kwargs.pop("like", None)
        variants_of: Path | None = kwargs.pop("variants_of", None)
        strength: float | None = kwargs.pop("strength", None)
        if like is None and variants_of is None:
            if strength is not None:
                raise click.UsageError("--strength needs --variants-of")
            if kwargs.get("modality") is None:
                raise click.UsageError("Missing option '--modality' / '-m' (or pass --like / --variants-of)")
            return func(*args, **kwargs)
        if like is not None and variants_of is not None:
            raise click.UsageError("--like and --variants-of cannot be combined")
        if kwargs.get("push_send"):
            raise click.UsageError("--send is not available with --like / --variants-of; run `medsynth push` after")
        if variants_of is not None:
            if strength is None:
                raise click.UsageError("--variants-of needs --strength S (0 < S < 1)")
            return _variants(variants_of, strength, kwargs)
        return _like(like, kwargs)  # type: ignore[arg-type]

    opts = [
        click.option("--like", "like", type=click.Path(exists=True, path_type=Path), metavar="SERIES_OR_STUDY_DIR",
                     help="Synthetic study shaped like this real DICOM series/study: its technique and geometry "
                          "(PS3.15 Basic Profile; nothing identifying), pixels from the matching pack; "
                          "like_report.json lists what was kept."),
        click.option("--variants-of", "variants_of", type=click.Path(exists=True, path_type=Path), metavar="SERIES",
                     help="SDEdit variants of a real DICOM series with a latent pack (needs --strength); "
                          "written as derived synthetic images, nearest-source SSIM in variants_report.json."),
        click.option("--strength", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
                     help="With --variants-of: how far from the source, 0 < S < 1 (noise level t = S·T)."),
    ]
    out: Any = wrapper
    for opt in reversed(opts):
        out = opt(out)
    return out  # type: ignore[no-any-return]


def _chosen(kw: dict[str, Any], name: str) -> Any:
    """``kw[name]`` when the user gave the option, None when it is click's default."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or name not in kw:
        return None
    source = ctx.get_parameter_source(name)
    return None if source in (None, click.core.ParameterSource.DEFAULT) else kw[name]


class _LazyBar:
    """A rich progress bar shown from the first finished slice on (none before an early error)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar: Any = None
        self.task: Any = None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> _LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _like(source: Path, kw: dict[str, Any]) -> None:
    from medsynth.like import LikeConfig, generate_like

    cfg = LikeConfig(source=source, out_dir=kw["out_dir"], modality=kw.get("modality"), condition=kw.get("condition"),
                     seed=kw.get("seed"), sampler=kw.get("sampler"), steps=kw.get("steps"), guidance=kw.get("guidance"),
                     model=kw.get("model"), model_dir=kw.get("model_dir"), device=kw.get("device", "auto"),
                     threads=kw.get("threads"), batch_size=kw.get("batch_size", 8), force=kw.get("force", False),
                     reproducible_uids=kw.get("reproducible_uids", False), transfer_syntax=_chosen(kw, "transfer_syntax"),
                     patients=kw.get("patients", 1))
    if kw.get("as_json"):
        echo_json(generate_like(cfg).to_json())
        return
    with _LazyBar("slices") as bar:
        result = generate_like(cfg, on_slice=bar.update)
    click.echo(f"wrote {result.files} files ({result.series} series like the source, preset {result.preset}, "
               f"pack {result.model_id}) to {result.out_dir}; kept attributes: {result.report}")
    for note in result.notes:
        click.echo(f"note: {note}")


def _variants(source: Path, strength: float, kw: dict[str, Any]) -> None:
    from medsynth.variants import VariantsConfig, make_variants

    cfg = VariantsConfig(source=source, out_dir=kw["out_dir"], strength=strength, modality=kw.get("modality"),
                         condition=kw.get("condition"), seed=kw.get("seed"), steps=kw.get("steps"),
                         guidance=kw.get("guidance"), model=kw.get("model"), model_dir=kw.get("model_dir"),
                         device=kw.get("device", "auto"), threads=kw.get("threads"), force=kw.get("force", False),
                         reproducible_uids=kw.get("reproducible_uids", False))
    if kw.get("as_json"):
        echo_json(make_variants(cfg).to_json())
        return
    with _LazyBar("variants") as bar:
        result = make_variants(cfg, on_slice=bar.update)
    mean = sum(result.nearest_ssim) / len(result.nearest_ssim)
    click.echo(f"wrote {result.slices} variants (strength {result.strength:g}, from timestep {result.start_timestep}, "
               f"{result.steps} steps, pack {result.model_id}) to {result.out_dir}; mean nearest-source SSIM "
               f"{mean:.3f}; report {result.report}")
