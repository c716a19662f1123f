"""``medsynth models``: list the model packs (bundled and in --model-dir) with their model cards."""

from __future__ import annotations

from pathlib import Path

import click

from medsynth.cli._common import echo_json, handle_errors


@click.command("models", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model-dir", "model_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Also list the packs in this folder (or this pack folder); repeatable.")
@click.option("--card/--no-card", default=True, show_default=True, help="Print each MODEL_CARD.md.")
@click.option("--json", "as_json", is_flag=True, help="Print every pack's pack.json fields and model card as JSON.")
@handle_errors
def models(model_dirs: tuple[Path, ...], card: bool, as_json: bool) -> None:
    """List model packs: which presets each serves, its labels, sampler defaults and model card.

    Every pack's ONNX files are checked against the sha256s in its pack.json; a pack that fails is
    listed with the reason.

    \b
    Examples:
      medsynth models
      medsynth models --model-dir my_packs/ --json
    """
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table

    from medsynth.generate import list_packs

    packs = list_packs(model_dirs)
    if as_json:
        echo_json({"packs": [p.to_json() for p in packs]})
        return
    console = Console()
    if not packs:
        console.print("No model packs found (bundled packs live in medsynth/packs/; see --model-dir).")
        return
    table = Table(title="medsynth model packs")
    for col in ("model", "presets", "labels", "matrix", "sampler", "source", "status"):
        table.add_column(col)
    for p in packs:
        m = p.metadata
        if p.error:
            table.add_row(p.root.name, "", "", "", "", p.source, f"[red]{p.error}[/red]")
            continue
        table.add_row(
            m["model_id"], ", ".join(m["presets"]), ", ".join(m["labels"]), "×".join(str(v) for v in m["matrix"]),
            f"{m['default_sampler']} {m['default_steps']} steps, w={m['default_guidance']:g}", p.source, "ok",
        )
    console.print(table)
    if card:
        for p in packs:
            if p.model_card:
                console.rule(f"{p.root.name} — MODEL_CARD.md")
                console.print(Markdown(p.model_card))
