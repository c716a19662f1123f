"""Export an autoencoder run + a latent-denoiser run into a format-2 (latent) model pack.

The pack holds ``model.onnx`` (the latent denoiser: inputs ``sample`` [B,C,h,w], ``timestep`` [B],
``class_labels`` [B], ``position`` [B], ``previous`` [B,C,h,w]; output ``prediction``),
``decoder.onnx`` (``latent`` [B,C,h,w] unscaled → ``image`` [B,1,H,W] in model space) and
``encoder.onnx`` (``image`` → ``latent`` mean, unscaled), where "unscaled" means scaled latent /
``scale_factor``; for runs with per-channel latent normalisation the decoder and encoder graphs carry
that affine themselves and ``scale_factor`` is 1, each parity-checked against PyTorch on
random inputs (a pack is refused when the max abs error exceeds the tolerance), plus ``pack.json``
(format 2, with the latent scale factor and the per-label conditioning support) and
``MODEL_CARD.md``. Built in a temporary folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth import __version__
from medsynth.errors import ExportError, OutputError
from medsynth.export.pack_writer import _replace_dir
from medsynth.latent.autoencoder import Decoder, Encoder, load_autoencoder
from medsynth.latent.config import to_json
from medsynth.latent.denoiser import load_latent_denoiser
from medsynth.pack import LatentSpec, PackMetadata, save_pack_metadata, sha256_file
from medsynth.presets import PRESETS, get_preset
from medsynth.training.checkpoint import load_checkpoint

TOLERANCE = {"model.onnx": 1e-4, "decoder.onnx": 1e-3, "encoder.onnx": 1e-3}
OPSET = 20


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], output: str,
            path: Path) -> None:
    axes = {n: {0: "batch"} for n in [*inputs, output]}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, dynamic_axes=axes, input_names=inputs,
                          output_names=[output], opset_version=OPSET)


def _parity(module: torch.nn.Module, path: Path, make_args: Any, inputs: list[str], output: str) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    err = 0.0
    for b in (1, 3):
        args = make_args(b)
        with torch.no_grad():
            ref = module(*args).numpy()
        out = sess.run([output], {n: a.numpy() for n, a in zip(inputs, args, strict=True)})[0]
        if out.shape != ref.shape:
            raise ExportError(f"ONNX output shape {out.shape} differs from torch {ref.shape}", path)
        err = max(err, float(np.max(np.abs(out.astype(np.float64) - ref))))
    return err


@dataclass(frozen=True)
class LatentExportSummary:
    pack_dir: Path
    files: dict[str, str]
    parity: dict[str, Any]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"pack_dir": str(self.pack_dir), "files": self.files, "parity": self.parity,
                "seconds": round(self.seconds, 1)}


def export_latent_pack(
    ae_run: str | Path,
    latent_run: str | Path,
    pack_dir: str | Path,
    *,
    model_id: str | None = None,
    guidance: float = 1.5,
    steps: int = 12,
    force: bool = False,
    extra_training: dict[str, Any] | None = None,
) -> LatentExportSummary:
    """Export the EMA weights of both runs into a latent pack at ``pack_dir``."""
    t0 = time.perf_counter()
    ae_run, latent_run, pack_dir = Path(ae_run), Path(latent_run), Path(pack_dir)
    if pack_dir.exists() and not force:
        raise OutputError("already exists; add --force to replace it", pack_dir)
    ae_cfg, ae = load_autoencoder(ae_run)
    cfg, info, den = load_latent_denoiser(latent_run)
    manifest = info["manifest"]
    preset = get_preset(str(manifest["preset"]))
    matrix = (int(manifest["matrix"][0]), int(manifest["matrix"][1]))
    c, h, w = (int(x) for x in info["latent_shape"])
    labels = tuple(str(x) for x in info["labels"])
    n_lab = len(labels)
    parent = pack_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pack_dir.name}.partial-", dir=parent))
    tmp.chmod(0o755)
    g = torch.Generator().manual_seed(0)

    def den_args(b: int) -> tuple[torch.Tensor, ...]:
        prev = torch.randn((b, c, h, w), generator=g)
        prev[0] = 0.0  # exercise the no-previous-slice path too
        return (torch.randn((b, c, h, w), generator=g), torch.randint(0, cfg.schedule.num_train_timesteps, (b,), generator=g),
                torch.randint(0, n_lab + 1, (b,), generator=g), torch.rand((b,), generator=g), prev)

    def dec_args(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn((b, c, h, w), generator=g) / float(info["scale_factor"]),)

    def enc_args(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((b, 1, *matrix), generator=g) * 2 - 1,)

    # per-channel latent normalisation (runs since it exists) goes into the encoder and decoder graphs
    norm = (info.get("latent_channel_mean"), info.get("latent_channel_std"))
    den_inputs = ["sample", "timestep", "class_labels", "position", "previous"]
    jobs: list[tuple[str, torch.nn.Module, Any, list[str], str]] = [
        ("model.onnx", den, den_args, den_inputs, "prediction"),
        ("decoder.onnx", Decoder(ae, *norm).eval(), dec_args, ["latent"], "image"),
        ("encoder.onnx", Encoder(ae, *norm).eval(), enc_args, ["image"], "latent"),
    ]
    parity: dict[str, Any] = {"onnxruntime_provider": "CPUExecutionProvider", "opset": OPSET, "torch": torch.__version__}
    files: dict[str, str] = {}
    try:
        for name, module, make, inputs, output in jobs:
            _export(module, make(2), inputs, output, tmp / name)
            err = _parity(module, tmp / name, make, inputs, output)
            parity[name] = {"max_abs_error": err, "tolerance": TOLERANCE[name]}
            if err > TOLERANCE[name]:
                raise ExportError(f"{name}: ONNX differs from PyTorch by {err:.3g} (> {TOLERANCE[name]}); no pack written",
                                  latent_run)
            files[name] = sha256_file(tmp / name)
        ck_ae = load_checkpoint(ae_run, need_optimizer=False)
        ck_den = load_checkpoint(latent_run, need_optimizer=False)
        import monai

        training = {
            "autoencoder": {"config": to_json(ae_cfg), "steps": ck_ae.step, "train_seconds": round(ck_ae.train_seconds, 1)},
            "denoiser": {"config": to_json(cfg), "steps": ck_den.step, "train_seconds": round(ck_den.train_seconds, 1),
                         "final_loss": ck_den.extra.get("last_loss")},
            "steps": ck_den.step,
            "train_seconds": round(ck_ae.train_seconds + ck_den.train_seconds, 1),
            "dataset_slices": int(sum(int(s.get("slices", 0)) for s in manifest.get("sources", []))),
            "torch": torch.__version__, "monai": monai.__version__, "weights": "EMA",
            **({"continued_from": {k: v for k, v in info["recovered_from"].items() if k != "pack"}}
               if info.get("recovered_from") else {}),
            **(extra_training or {}),
        }
        sources = tuple({"name": s.get("name"), "sha256": s.get("sha256"), "licence": s.get("licence", ""),
                         "label": s.get("label"), "slices": s.get("slices")} for s in manifest.get("sources", []))
        conditioning = {k: {"position": v} for k, v in info.get("position_ranges", {}).items()}
        spacing = manifest.get("pixel_spacing_mm", preset.pixel_spacing_mm)
        meta = PackMetadata(
            model_id=model_id or preset.model_id,
            presets=tuple(p.name for p in PRESETS.values() if p.pack_family == preset.pack_family),
            modality=preset.modality.value, matrix=matrix,
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
            physical_range=(float(manifest["physical_range"][0]), float(manifest["physical_range"][1])),
            unit=str(manifest["unit"]), schedule=cfg.schedule, prediction_type=cfg.prediction_type,
            labels=labels, null_class=n_lab, uses_position=True, default_guidance=float(guidance),
            default_sampler="dpmpp_2m", default_steps=int(steps), files=files, software_version=__version__,
            training=training, data_sources=sources, parity=parity, format_version=2,
            latent=LatentSpec(channels=c, shape=(h, w), downsample=ae_cfg.downsample,
                              scale_factor=float(info["scale_factor"]), previous_slice=True),
            conditioning=conditioning, slice_spacing_mm=float(preset.slice_thickness_mm),
        ).validate()
        save_pack_metadata(tmp, meta)
        (tmp / "MODEL_CARD.md").write_text(latent_model_card(meta), encoding="utf-8")
        _replace_dir(tmp, pack_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LatentExportSummary(pack_dir, files, parity, time.perf_counter() - t0)


_CARD_SOURCES = 24  # more sources than this are summarised per label in the card


def _selected_by(meta: PackMetadata) -> str:
    """How a user gets this pack: the default of its presets, or ``--model ID``."""
    default = [p for p in meta.presets if p in PRESETS and PRESETS[p].model_id == meta.model_id]
    return "the default of these presets" if default else f"select it with `--model {meta.model_id}`"


def _ae_phases(aec: dict[str, Any]) -> str:
    """The autoencoder's whole-slice and decoder-only phases, as the card's training line says them."""
    whole, dec = int(aec.get("whole_slice_steps") or 0), int(aec.get("decoder_only_steps") or 0)
    return "".join([f", then {whole} steps on whole slices" if whole else "",
                    f", then {dec} decoder-only steps on whole slices (encoder frozen, so the latents the denoiser "
                    "learned did not move)" if dec else ""])


def latent_model_card(meta: PackMetadata, images: tuple[str, ...] = ()) -> str:
    """MODEL_CARD.md of a latent pack from its pack.json; ``quality`` (from benchmarks/eval_latent.py)
    is rendered when present; ``images`` are PNG names inside the pack to show."""
    tr = meta.training
    ae, den = tr.get("autoencoder", {}), tr.get("denoiser", {})
    aec, dc = ae.get("config", {}), den.get("config", {})
    z = meta.latent
    assert z is not None
    hours = float(tr.get("train_seconds", 0.0)) / 3600
    planar = not meta.slice_spacing_mm  # a 2D pack (X-ray): one image per series, no previous slice
    field = f"{meta.matrix[0] * meta.pixel_spacing_mm[0] / 10:.1f} × {meta.matrix[1] * meta.pixel_spacing_mm[1] / 10:.1f} cm"
    what = (f"{meta.modality} images of {meta.matrix[0]}×{meta.matrix[1]} pixels at {meta.pixel_spacing_mm[0]} mm "
            f"({field})" if planar else
            f"{meta.modality} series of {meta.matrix[0]}×{meta.matrix[1]} slices at {meta.pixel_spacing_mm[0]} mm pixels "
            f"and {meta.slice_spacing_mm} mm slice spacing")
    how = ("conditioned on the label (classifier-free guidance); each image is sampled on its own (the previous-slice "
           "input stays empty)" if planar else
           "conditioned on the body region, the slice position and the previous slice's latent, so a series is "
           "sampled inferior → superior as one body")
    lines = [
        f"# Model card: {meta.model_id}",
        "",
        f"A **latent diffusion** model that makes synthetic {what}, for "
        f"{', '.join(f'`{p}`' for p in meta.presets)} ({_selected_by(meta)}). An autoencoder "
        f"(MONAI `AutoencoderKL`, {z.downsample}× per side, {z.channels} latent channels) and a latent denoiser "
        f"(MONAI `DiffusionModelUNet`) {how}.",
        "",
        "## Intended use",
        "",
        "Test data for PACS, viewers and pipelines; research on augmentation. Not for diagnosis. Every output is "
        "marked synthetic (SyntheticData YES, Contributing Equipment 109100).",
        "",
        "## Conditioning and sampling",
        "",
        f"- Labels: {', '.join(f'`{lbl}`' for lbl in meta.labels)}; null class {meta.null_class} (guidance)",
        *([] if planar else ["- Position support per label (a series of that label spans it): "
                             + ", ".join(f"{k} {v['position'][0]:.2f}–{v['position'][1]:.2f}"
                                         for k, v in meta.conditioning.items())]),
        f"- Prediction `{meta.prediction_type}`, schedule `{meta.schedule.schedule}` β {meta.schedule.beta_start}–"
        f"{meta.schedule.beta_end} over {meta.schedule.num_train_timesteps} steps; latent scale factor {z.scale_factor:.4f}",
        f"- Defaults: `{meta.default_sampler}`, {meta.default_steps} steps, guidance {meta.default_guidance}",
        f"- Intensities: model space [-1, 1] ↔ {meta.physical_range[0]}…{meta.physical_range[1]} {meta.unit}",
        "",
        "## Training data (all real, de-identified, redistributable)",
        "",
        "| source | label | slices | licence | sha256 |",
        "|---|---|---|---|---|",
    ]
    if len(meta.data_sources) <= _CARD_SOURCES:
        for s in meta.data_sources:
            lines.append(f"| {s.get('name')} | {s.get('label')} | {s.get('slices')} | "
                         f"{s.get('licence') or 'see ../shared/data/README.md'} | `{str(s.get('sha256'))[:16]}…` |")
    else:  # many single images (X-ray): one row per label and licence; every file's sha256 is in pack.json
        groups: dict[tuple[str, str], list[int]] = {}
        for s in meta.data_sources:
            key = (str(s.get("label")), str(s.get("licence") or "see ../shared/data/README.md"))
            groups.setdefault(key, []).append(int(s.get("slices") or 0))
        for (label, licence), counts in groups.items():
            lines.append(f"| {len(counts)} files | {label} | {sum(counts)} | {licence} | in pack.json |")
    if tr.get("attribution"):
        lines += ["", f"Attribution: {tr['attribution']}"]
    held = tr.get("held_out")
    if held:
        lines += ["", f"Held out of all training (evaluation only): {held}."]
    lines += [
        "",
        "## Training",
        "",
        f"- Autoencoder: channels {aec.get('channels')}, {ae.get('steps')} steps: batches of {aec.get('batch_size')} "
        f"{aec.get('crop')}² crops{_ae_phases(aec)}, AdamW lr {aec.get('lr')}, L1 + {aec.get('kl_weight')}·KL, "
        f"{aec.get('precision')}; {float(ae.get('train_seconds', 0)) / 60:.0f} min",
        f"- Latent denoiser: channels {dc.get('channels')}, attention {dc.get('attention_levels')}, {den.get('steps')} steps "
        f"of batch {dc.get('batch_size')}, AdamW lr {dc.get('lr')}, EMA {dc.get('ema_decay')}, label dropout "
        f"{dc.get('label_dropout')}, previous-slice dropout {dc.get('previous_dropout')}"
        f"{''.join(f' ({b} from step {a})' for a, b in dc.get('previous_dropout_from') or [])}; "
        f"{float(den.get('train_seconds', 0)) / 60:.0f} min; final loss {den.get('final_loss')}",
        *([f"- Continued from the exported pack `{cont.get('model_id')}` (identity `{str(cont.get('identity_sha256'))[:12]}…`) "
           f"at denoiser step {cont.get('denoiser_steps')}: its runs rebuilt from the ONNX weights by `medsynth runs-from-pack` "
           "(EMA weights; AdamW restarted there)"] if (cont := tr.get("continued_from")) else []),
        f"- {hours:.1f} h in all on {tr.get('hardware', 'a 2-core CPU (no GPU was available)')}; torch {tr.get('torch')}, "
        f"MONAI {tr.get('monai')}; recipe `packaging/packs.toml [{meta.model_id}]`",
        "",
        "## Export",
        "",
    ]
    for name in ("model.onnx", "decoder.onnx", "encoder.onnx"):
        par = meta.parity.get(name, {})
        lines.append(f"- `{name}` sha256 `{meta.files.get(name, '')}`; ONNX vs PyTorch max abs error "
                     f"{par.get('max_abs_error', float('nan')):.2e} (tolerance {par.get('tolerance')})")
    lines += ["", "## Quality (patients held out of training, through `generate`)", ""]
    q = meta.quality
    if q:
        lines += [str(q.get("table", ""))] if q.get("table") else [f"- {k}: {v}" for k, v in q.items()]
    else:
        lines.append("Not measured yet: run `benchmarks/eval_latent.py`.")
    if images:
        lines += ["", "## What the samples look like", ""]
        lines += [f"![{name}]({name})" for name in images]
    lines += ["", "## Limitations", "", str(tr.get("limitations") or
              "Trained on a handful of scans for a short time on a CPU: look at the samples before relying on them."), ""]
    return "\n".join(lines)

