"""`medsynth export`: a training run → a verified ONNX model pack."""

from __future__ import annotations

from pathlib import Path

import click

from medsynth.cli._common import echo_json, handle_errors


@click.command(
    "export",
    epilog="""\b
Examples:
  medsynth export runs/ct -o packs/ct-body
  medsynth export runs/ct -o packs/ct-body --no-fp16 --exporter legacy --json
""",
)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("-o", "--output", "pack_dir", required=True, type=click.Path(path_type=Path),
              help="Pack folder to write (model.onnx, model.fp16.onnx, pack.json, MODEL_CARD.md).")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also write the fp16 variant for CUDA.")
@click.option("--opset", type=int, default=23, show_default=True, help="ONNX opset (≥ 20; 23 has Attention).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True,
              help="torch.export-based (dynamo), the tracer (legacy, faster), or dynamo with fallback.")
@click.option("--guidance", type=float, help="Default classifier-free guidance (default 2.0 if trained with label "
                                             "dropout, else 1.0).")
@click.option("--model-id", help="Model id in pack.json (default: the preset's model id).")
@click.option("--autoencoder", "ae_run", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Latent diffusion: RUN is a `train-latent` run and this its autoencoder run (pack format 2).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Latent packs: default sampler steps (12).")
@click.option("--force", is_flag=True, help="Replace an existing pack folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@handle_errors
def export(run_dir: Path, pack_dir: Path, fp16: bool, opset: int, exporter: str, guidance: float | None,
           model_id: str | None, ae_run: Path | None, steps: int | None, force: bool, as_json: bool) -> None:
    """Export RUN (from `medsynth train`) to an ONNX model pack PACK.

    Exports the EMA weights as one ONNX file with a dynamic batch, checks it against PyTorch on
    random inputs (max abs error ≤ 1e-4, or nothing is written), adds an fp16 variant, and writes
    pack.json (schedule, labels, defaults, data attribution, sha256 of every model file) and
    MODEL_CARD.md.
    """
    from rich.console import Console

    from medsynth.export.pack_writer import export_run

    if ae_run is not None:
        from medsynth.latent.export import export_latent_pack

        with Console(stderr=True).status("exporting denoiser, decoder and encoder; checking ONNX parity…"):
            lsum = export_latent_pack(ae_run, run_dir, pack_dir, model_id=model_id, force=force,
                                      guidance=guidance if guidance is not None else 1.5, steps=steps or 12)
        if as_json:
            echo_json(lsum.to_json())
        else:
            click.echo(f"wrote {pack_dir} ({', '.join(lsum.files)}) in {lsum.seconds:.1f} s")
        return

    with Console(stderr=True).status("exporting and checking ONNX parity…"):
        summary = export_run(run_dir, pack_dir, fp16=fp16, opset=opset, exporter=exporter,  # type: ignore[arg-type]
                             guidance=guidance, model_id=model_id, force=force)
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(f"wrote {pack_dir} ({', '.join(summary.files)}); ONNX-vs-torch max abs error "
                   f"{summary.parity['max_abs_error']:.2e}; {summary.export_seconds:.1f} s")
        for note in summary.notes:
            click.echo(f"note: {note}", err=True)
