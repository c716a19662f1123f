"""``medsynth export``: a training run's EMA weights → a verified model pack (see :mod:`medsynth.pack`).

Steps: read the run (config, dataset manifest, checkpoint), rebuild the :class:`Denoiser` with the
EMA weights, export ``model.onnx`` (single file, dynamic batch), check it against PyTorch on random
inputs (fp32 max abs error ≤ 1e-4 or nothing is written), optionally write and check
``model.fp16.onnx``, then write ``pack.json`` and ``MODEL_CARD.md``. Everything is written into a
temporary sibling folder that is renamed to PACK at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsynth import __version__
from medsynth.errors import ConfigError, ExportError, OutputError
from medsynth.export.onnx_export import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Exporter,
    check_parity,
    convert_fp16,
    export_onnx,
)
from medsynth.pack import PackMetadata, save_pack_metadata, sha256_file
from medsynth.presets import PRESETS, get_preset
from medsynth.training.checkpoint import WEIGHTS_NAME, load_checkpoint, load_state_strict, read_run
from medsynth.training.config import TrainConfig
from medsynth.training.model import Denoiser, build_denoiser
from medsynth.training.trainer import iter_log

MIN_OPSET = 20
DEFAULT_OPSET = 23  # opset 23 lets torch.export emit ONNX's Attention op (onnxruntime ≥ 1.23 runs it)


@dataclass(frozen=True)
class ExportSummary:
    """What ``medsynth export`` wrote (``--json`` prints :meth:`to_json`)."""

    pack_dir: Path
    files: dict[str, str]
    parity: dict[str, Any]
    export_seconds: float
    metadata: PackMetadata
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "pack_dir": str(self.pack_dir),
            "files": self.files,
            "parity": self.parity,
            "export_seconds": round(self.export_seconds, 3),
            "model_id": self.metadata.model_id,
            "presets": list(self.metadata.presets),
            "labels": list(self.metadata.labels),
            "uses_position": self.metadata.uses_position,
            "prediction_type": self.metadata.prediction_type,
            "notes": list(self.notes),
        }


def export_run(
    run_dir: str | Path,
    pack_dir: str | Path,
    *,
    fp16: bool = True,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    guidance: float | None = None,
    model_id: str | None = None,
    force: bool = False,
) -> ExportSummary:
    """Export the EMA weights of ``run_dir`` into the model pack ``pack_dir``; see module docstring."""
    t0 = time.perf_counter()
    run_dir, pack_dir = Path(run_dir), Path(pack_dir)
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset must be ≥ {MIN_OPSET}, got {opset}")
    if guidance is not None and guidance < 1.0:
        raise ConfigError(f"--guidance must be ≥ 1 (1 = no classifier-free guidance), got {guidance}")
    if pack_dir.exists() and not force:
        raise OutputError("already exists; add --force to replace it", pack_dir)
    config, info = read_run(run_dir)
    ckpt = load_checkpoint(run_dir, need_optimizer=False)
    manifest = info["manifest"]
    labels = tuple(str(x) for x in manifest["labels"])
    preset = get_preset(str(manifest["preset"]))
    model = build_denoiser(config.model, len(labels))
    load_state_strict(model, ckpt.ema, "EMA", run_dir / WEIGHTS_NAME)
    model.eval()
    matrix = (int(preset.matrix[0]), int(preset.matrix[1]))
    T = config.schedule.num_train_timesteps

    parent = pack_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{pack_dir.name}.partial-", dir=parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a pack is meant to be shared
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror})", pack_dir) from None
    notes: list[str] = []
    try:
        with torch.no_grad():
            result = export_onnx(model, tmp / "model.onnx", matrix, T, opset, exporter)
        if result.fallback_reason:
            notes.append(f"fell back to the {result.exporter} exporter ({result.fallback_reason})")
        parity = check_parity(model, tmp / "model.onnx", matrix, T)
        parity.update({"tolerance": FP32_TOLERANCE, "exporter": result.exporter, "opset": result.opset,
                       "attention_op": result.uses_attention_op, "export_seconds": round(result.seconds, 3),
                       "torch": torch.__version__})
        if parity["max_abs_error"] > FP32_TOLERANCE:
            raise ExportError(f"ONNX output differs from PyTorch by {parity['max_abs_error']:.3g} "
                              f"(> {FP32_TOLERANCE}); no pack written", run_dir)
        files = {"model.onnx": sha256_file(tmp / "model.onnx")}
        if fp16:
            fp16_parity = _write_fp16(model, tmp, matrix, T, opset, result.exporter, notes)
            parity["fp16"] = fp16_parity
            files["model.fp16.onnx"] = sha256_file(tmp / "model.fp16.onnx")
        meta = _metadata(config, info, ckpt.step, ckpt.train_seconds, ckpt.extra, run_dir, labels, preset.name,
                         files, parity, guidance, model_id)
        save_pack_metadata(tmp, meta)
        (tmp / "MODEL_CARD.md").write_text(model_card(meta), encoding="utf-8")
        _replace_dir(tmp, pack_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportSummary(pack_dir, files, parity, time.perf_counter() - t0, meta, tuple(notes))


def _write_fp16(model: Denoiser, tmp: Path, matrix: tuple[int, int], T: int, opset: int, exporter: str,
                notes: list[str]) -> dict[str, Any]:
    """Write model.fp16.onnx from the fp32 export and check it on the CPU provider."""
    src = tmp / "model.onnx"
    dst = tmp / "model.fp16.onnx"
    try:
        convert_fp16(src, dst)
    except ExportError as first:
        if exporter == "legacy":
            raise
        # The fp16 converter mishandles some torch.export graphs: convert a traced export instead.
        legacy = tmp / ".model.legacy.onnx"
        export_onnx(model, legacy, matrix, T, opset, "legacy")
        try:
            convert_fp16(legacy, dst)
        finally:
            legacy.unlink(missing_ok=True)
        notes.append(f"model.fp16.onnx converted from the legacy (traced) export ({first.message})")
    p = check_parity(model, dst, matrix, T)
    p["tolerance"] = FP16_TOLERANCE
    if p["max_abs_error"] > FP16_TOLERANCE * max(1.0, p["output_max_abs"]):
        raise ExportError(f"fp16 ONNX output differs from PyTorch by {p['max_abs_error']:.3g}; no pack written",
                          dst)
    return p


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _metadata(
    config: TrainConfig,
    info: dict[str, Any],
    step: int,
    train_seconds: float,
    extra: dict[str, Any],
    run_dir: Path,
    labels: tuple[str, ...],
    preset_name: str,
    files: dict[str, str],
    parity: dict[str, Any],
    guidance: float | None,
    model_id: str | None,
) -> PackMetadata:
    import monai

    preset = get_preset(preset_name)
    manifest = info["manifest"]
    last = None
    for entry in iter_log(run_dir):
        last = entry
    training = {
        "config": config.to_json(),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "hardware": extra.get("hardware", "unknown"),
        "device": extra.get("device", "unknown"),
        "precision": extra.get("precision", "unknown"),
        "final_loss": last.get("loss") if last else extra.get("last_loss"),
        "dataset_slices": info.get("num_slices"),
        "slices_per_label": dict(zip(labels, info.get("slices_per_label", []), strict=False)),
        "dataset_preset": preset.name,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "weights": "EMA",
    }
    sources = tuple(
        {"name": s.get("name"), "sha256": s.get("sha256"), "licence": s.get("licence", ""),
         "label": s.get("label"), "slices": s.get("slices"), "series": s.get("series", 1)}
        for s in manifest.get("sources", [])
    )
    if guidance is None:
        guidance = 2.0 if config.optim.label_dropout > 0 else 1.0
    return PackMetadata(
        model_id=model_id or preset.pack_family,
        presets=tuple(p.name for p in PRESETS.values() if p.pack_family == preset.pack_family),
        modality=preset.modality.value,
        matrix=preset.matrix,
        pixel_spacing_mm=preset.pixel_spacing_mm,
        physical_range=(preset.intensity.physical_low, preset.intensity.physical_high),
        unit=preset.intensity.unit,
        schedule=config.schedule.to_pack(),
        prediction_type=config.schedule.prediction_type,
        labels=labels,
        null_class=len(labels),
        uses_position=config.model.use_position,
        channels=config.model.image_channels,
        default_guidance=float(guidance),
        default_sampler="dpmpp_2m",
        default_steps=25,
        files=files,
        software_version=__version__,
        training=training,
        data_sources=sources,
        quality={},
        parity=parity,
    )


def model_card(meta: PackMetadata) -> str:
    """MODEL_CARD.md: the facts of pack.json for people; ``Quality`` is filled by `medsynth evaluate`."""
    tr = meta.training
    cfg = tr.get("config", {})
    model_cfg, sched_cfg, optim_cfg = cfg.get("model", {}), cfg.get("schedule", {}), cfg.get("optim", {})
    secs = float(tr.get("train_seconds", 0.0))
    duration = f"{secs / 3600:.1f} h" if secs >= 3600 else f"{secs / 60:.1f} min"
    lines = [
        f"# Model card: {meta.model_id}",
        "",
        "A denoising diffusion model (MONAI `DiffusionModelUNet`, 2D) that makes **synthetic** "
        f"{meta.modality} slices of {meta.matrix[0]}×{meta.matrix[1]} pixels at "
        f"{meta.pixel_spacing_mm[0]}×{meta.pixel_spacing_mm[1]} mm, for the presets "
        f"{', '.join(f'`{p}`' for p in meta.presets)}.",
        "",
        "## Intended use",
        "",
        "Test data for PACS, viewers and pipelines, and data augmentation research. Not for diagnosis, "
        "and not a substitute for real patient data in clinical validation. Outputs are marked synthetic.",
        "",
        "## Conditioning and sampling",
        "",
        f"- Labels: {', '.join(f'`{lbl}`' for lbl in meta.labels)} (class index = position in this list; "
        f"null class {meta.null_class} = unconditional, for classifier-free guidance)",
        f"- Slice position condition: {'yes (0 = first/inferior .. 1 = last)' if meta.uses_position else 'no'}",
        f"- Prediction: `{meta.prediction_type}`; schedule `{meta.schedule.schedule}`, "
        f"{meta.schedule.num_train_timesteps} steps, β {meta.schedule.beta_start}–{meta.schedule.beta_end}",
        f"- Defaults: sampler `{meta.default_sampler}`, {meta.default_steps} steps, guidance {meta.default_guidance}",
        f"- Intensities: model space [-1, 1] ↔ {meta.physical_range[0]}…{meta.physical_range[1]} {meta.unit}",
        "",
        "## Training data",
        "",
        "| source | label | slices | licence | sha256 |",
        "|---|---|---|---|---|",
    ]
    for s in meta.data_sources:
        lines.append(f"| {s.get('name')} | {s.get('label')} | {s.get('slices')} | {s.get('licence') or 'unknown'} | "
                     f"`{str(s.get('sha256'))[:16]}…` |")
    lines += [
        "",
        f"{tr.get('dataset_slices')} slices in all; per label: "
        + ", ".join(f"{k} {v}" for k, v in (tr.get("slices_per_label") or {}).items()) + ".",
        "",
        "## Training",
        "",
        f"- UNet channels {model_cfg.get('channels')}, attention {model_cfg.get('attention_levels')}, "
        f"{model_cfg.get('num_res_blocks')} residual block(s) per level",
        f"- {tr.get('steps')} steps, batch {optim_cfg.get('batch_size')}, AdamW lr {optim_cfg.get('lr')}, "
        f"loss {optim_cfg.get('loss')}, label dropout {optim_cfg.get('label_dropout')}, "
        f"EMA {optim_cfg.get('ema_decay')} (exported weights: EMA), seed {optim_cfg.get('seed')}",
        f"- Final training loss {tr.get('final_loss')}; {duration} of training on {tr.get('hardware')} "
        f"({tr.get('device')}, {tr.get('precision')})",
        f"- Software: medsynth {meta.software_version}, torch {tr.get('torch')}, MONAI {tr.get('monai')}; "
        f"schedule `{sched_cfg.get('schedule')}`",
        "",
        "## Export",
        "",
        f"- ONNX opset {meta.parity.get('opset')} ({meta.parity.get('exporter')} exporter"
        f"{', ONNX Attention op' if meta.parity.get('attention_op') else ''}); dynamic batch",
        f"- Parity with PyTorch (fp32, onnxruntime {meta.parity.get('onnxruntime')}): max abs error "
        f"{meta.parity.get('max_abs_error', float('nan')):.2e} (tolerance {meta.parity.get('tolerance')})",
    ]
    if "fp16" in meta.parity:
        lines.append(f"- fp16 variant for CUDA: max abs error {meta.parity['fp16']['max_abs_error']:.2e} on CPU")
    for name, digest in meta.files.items():
        lines.append(f"- `{name}` sha256 `{digest}`")
    lines += [
        "",
        "## Quality",
        "",
    ]
    if meta.quality:
        lines += [f"- {k}: {v}" for k, v in meta.quality.items()]
    else:
        lines.append("Not measured yet: run `medsynth evaluate` against held-out real slices to fill this section.")
    lines += [
        "",
        "## Limitations",
        "",
        "Trained on few scans and few optimisation steps on a CPU: expect plausible intensity "
        "statistics and body outlines before fine anatomy. Always look at samples before use. Samples may "
        "resemble training slices; check memorisation with `medsynth evaluate`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(pack_dir: Path) -> None:
    """Re-render MODEL_CARD.md from pack.json (e.g. after `medsynth evaluate` filled ``quality``)."""
    meta = PackMetadata.from_json(json.loads((pack_dir / "pack.json").read_text(encoding="utf-8")))
    (pack_dir / "MODEL_CARD.md").write_text(model_card(meta), encoding="utf-8")
