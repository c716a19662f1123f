"""Training runs rebuilt from a latent pack's ONNX files, so a pack can be trained further.

A latent pack (format 2) holds the EMA weights of its autoencoder (split into ``encoder.onnx`` and
``decoder.onnx``) and of its latent denoiser (``model.onnx``), and ``pack.json`` holds both training
configs. :func:`runs_from_pack` writes the two run folders that ``medsynth train-latent`` and
``medsynth export`` read::

    AE_RUN/   autoencoder_config.json, autoencoder_run.json, checkpoint.*   (step = the pack's)
    LDM_RUN/  latent_config.json, latent_run.json, checkpoint.*             (step = the pack's)

Weights are matched to the ONNX initializers by re-exporting each freshly built module (every
tensor set to distinct random values) with the exporter the pack was made with and pairing
initializers by value; the rebuilt modules are then checked against the pack's ONNX graphs on
random inputs (the export tolerances). Both the training weights and the EMA start from the pack's
EMA weights; AdamW starts fresh (the pack holds no optimizer state), so continuing a recovered run
is a fine-tune of the pack, not a bitwise continuation of the run that made it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from medsynth.errors import CheckpointError, ModelPackError, OutputError
from medsynth.latent.autoencoder import AE_CONFIG_NAME, Decoder, Encoder, build_autoencoder
from medsynth.latent.config import autoencoder_from_json, denoiser_from_json, save_json, to_json
from medsynth.latent.denoiser import LATENT_CONFIG_NAME, LATENT_RUN_NAME, LatentDenoiser
from medsynth.latent.export import TOLERANCE, _export, _parity
from medsynth.pack import ModelPack, load_pack
from medsynth.training.checkpoint import save_checkpoint


@dataclass(frozen=True)
class RecoveredRuns:
    autoencoder_run: Path
    latent_run: Path
    autoencoder_steps: int
    denoiser_steps: int
    max_abs_error: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"autoencoder_run": str(self.autoencoder_run), "latent_run": str(self.latent_run),
                "autoencoder_steps": self.autoencoder_steps, "denoiser_steps": self.denoiser_steps,
                "max_abs_error": self.max_abs_error}


def _initializers(path: Path) -> dict[str, npt.NDArray[Any]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def load_onnx_weights(module: torch.nn.Module, onnx_path: Path, args: tuple[torch.Tensor, ...],
                      inputs: list[str], output: str) -> set[str]:
    """Set the tensors of ``module``'s state dict that the graph of ``onnx_path`` uses from its
    initializers; the others keep their values. Returns the state-dict keys that were set.

    ``module`` must have the architecture the ONNX file was exported from; ``args`` are example
    inputs for the re-export."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    g = torch.Generator().manual_seed(1234)
    marked = {k: torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
              for k, v in state.items()}
    module.load_state_dict(marked)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reexport.onnx"
        _export(module, args, inputs, output, ref)
        fresh = _initializers(ref)
    target = _initializers(onnx_path)
    by_size: dict[int, list[str]] = {}
    for name, arr in fresh.items():
        by_size.setdefault(int(arr.size), []).append(name)
    new_state = dict(state)
    done: set[str] = set()
    for key, mark in marked.items():
        if not mark.is_floating_point():
            continue
        flat = mark.detach().numpy().astype(np.float32).ravel()
        found = None
        for name in by_size.get(int(flat.size), []):
            arr = fresh[name].astype(np.float32)
            if np.array_equal(arr.ravel(), flat):
                found = (name, False)
                break
            if arr.ndim == 2 and np.array_equal(arr.T.ravel(), flat):
                found = (name, True)
                break
        if found is None:
            continue  # not used by this graph (the other half of an autoencoder)
        if found[0] not in target or target[found[0]].size != flat.size:
            raise CheckpointError(f"{key}: the pack's graph has no tensor {found[0]} of that size (exported by "
                                  "another medsynth or torch version?)", onnx_path)
        value = target[found[0]].astype(np.float32)
        value = value.T if found[1] else value
        new_state[key] = torch.from_numpy(np.ascontiguousarray(value).reshape(mark.shape)).to(mark.dtype)
        done.add(key)
    module.load_state_dict(new_state)
    return done


def _check_new(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError("run folder already exists and is not empty; choose a new folder", path)


def runs_from_pack(pack: str | Path | ModelPack, ae_run: str | Path, latent_run: str | Path) -> RecoveredRuns:
    """Write an autoencoder run and a latent-denoiser run holding ``pack``'s weights (see module doc).

    Nothing is written when a weight cannot be matched or the rebuilt modules differ from the
    pack's ONNX graphs by more than the export tolerances."""
    mp = pack if isinstance(pack, ModelPack) else load_pack(pack)
    meta = mp.metadata
    if meta.latent is None or meta.latent.encoder is None:
        raise ModelPackError("not a latent pack with an encoder (format 2); only those can be trained further", mp.root)
    training = meta.training or {}
    try:
        ae_cfg = autoencoder_from_json(training["autoencoder"]["config"]).validate()
        ld_cfg = denoiser_from_json(training["denoiser"]["config"]).validate()
        ae_steps, ld_steps = int(training["autoencoder"]["steps"]), int(training["denoiser"]["steps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackError(f"pack.json has no usable training configs ({exc})", mp.root / "pack.json") from None
    ae_run, latent_run = Path(ae_run), Path(latent_run)
    for folder in (ae_run, latent_run):
        _check_new(folder)
    c, (h, w) = meta.latent.channels, meta.latent.shape
    H, W = meta.matrix
    n_lab = len(meta.labels)
    g = torch.Generator().manual_seed(0)

    def den_args(b: int) -> tuple[torch.Tensor, ...]:
        prev = torch.randn((b, c, h, w), generator=g)
        prev[0] = 0.0
        return (torch.randn((b, c, h, w), generator=g), torch.randint(0, ld_cfg.schedule.num_train_timesteps, (b,), generator=g),
                torch.randint(0, n_lab + 1, (b,), generator=g), torch.rand((b,), generator=g), prev)

    def dec_args(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn((b, c, h, w), generator=g),)

    def enc_args(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((b, 1, H, W), generator=g) * 2 - 1,)

    torch.manual_seed(0)
    ae = build_autoencoder(ae_cfg)
    enc, dec = Encoder(ae).eval(), Decoder(ae).eval()
    den = LatentDenoiser(ld_cfg, c, n_lab).eval()
    errors: dict[str, float] = {}
    jobs: list[tuple[str, torch.nn.Module, Any, list[str], str]] = [
        ("encoder.onnx", enc, enc_args, ["image"], "latent"),
        ("decoder.onnx", dec, dec_args, ["latent"], "image"),
        ("model.onnx", den, den_args, ["sample", "timestep", "class_labels", "position", "previous"], "prediction"),
    ]
    covered: dict[str, set[str]] = {}
    for name, module, make, inputs, output in jobs:
        covered[name] = load_onnx_weights(module, mp.root / name, make(2), inputs, output)
    for name, module, make, inputs, output in jobs:  # after all three: the encoder and decoder share ``ae``
        errors[name] = _parity(module, mp.root / name, make, inputs, output)
        if errors[name] > TOLERANCE[name]:
            raise CheckpointError(f"{name}: the rebuilt module differs from the pack by {errors[name]:.3g} "
                                  f"(> {TOLERANCE[name]}); no runs written", mp.root / name)
    # the log-σ head of the encoder is not in the pack (encoder.onnx outputs the mean); it restarts as a
    # small constant σ (weight 0, log-variance −10), which only a further autoencoder training would use
    with torch.no_grad():
        for k, v in ae.named_parameters():
            if k.startswith("quant_conv_log_sigma."):
                v.fill_(-10.0 if k.endswith("bias") else 0.0)
    need = {f"ae.{k}" for k, v in ae.state_dict().items()
            if v.is_floating_point() and not k.startswith("quant_conv_log_sigma.")}
    missing = sorted(need - covered["encoder.onnx"] - covered["decoder.onnx"])
    missing += sorted({k for k, v in den.state_dict().items() if v.is_floating_point()} - covered["model.onnx"])
    if missing:
        raise CheckpointError(f"{len(missing)} weights are not in the pack's graphs (first: {missing[0]}); "
                              "no runs written", mp.root)
    shift = [float(v) for v in enc.shift.ravel()]
    std = [float(v) for v in enc.std.ravel()]
    if not np.allclose(shift, dec.shift.ravel().numpy()) or not np.allclose(std, dec.std.ravel().numpy()):
        raise CheckpointError("encoder.onnx and decoder.onnx normalise the latent differently", mp.root)
    for folder in (ae_run, latent_run):
        _check_new(folder)  # again: recovery takes a while
        folder.mkdir(parents=True, exist_ok=True)
    origin = {"model_id": meta.model_id, "pack": str(mp.root), "identity_sha256": mp.identity,
              "autoencoder_steps": ae_steps, "denoiser_steps": ld_steps,
              "note": "weights recovered from the pack's ONNX (EMA); optimizer state restarts"}
    seconds = training.get("autoencoder", {}).get("train_seconds", 0.0)
    save_json(ae_run / AE_CONFIG_NAME, to_json(ae_cfg))
    save_json(ae_run / "autoencoder_run.json", {"dataset": {"recovered_from": origin}, "recovered_from": origin})
    save_checkpoint(ae_run, ae_steps, float(seconds), ae, ae, torch.optim.AdamW(ae.parameters(), lr=ae_cfg.lr),
                    {"kind": "autoencoder", "recovered_from": origin})
    sources = [dict(s) for s in meta.data_sources]
    manifest = {"preset": meta.presets[0], "matrix": list(meta.matrix), "physical_range": list(meta.physical_range),
                "unit": meta.unit, "pixel_spacing_mm": list(meta.pixel_spacing_mm), "labels": list(meta.labels),
                "sources": sources}
    save_json(latent_run / LATENT_CONFIG_NAME, to_json(ld_cfg))
    save_json(latent_run / LATENT_RUN_NAME, {
        "dataset": None, "autoencoder_run": str(ae_run), "scale_factor": float(meta.latent.scale_factor),
        "latent_shape": [c, h, w], "labels": list(meta.labels), "manifest": manifest,
        "position_ranges": {k: list(v["position"]) for k, v in meta.conditioning.items() if "position" in v},
        "latent_channel_mean": shift, "latent_channel_std": std, "recovered_from": origin,
    })
    seconds = training.get("denoiser", {}).get("train_seconds", 0.0)
    save_checkpoint(latent_run, ld_steps, float(seconds), den, den, torch.optim.AdamW(den.parameters(), lr=ld_cfg.lr),
                    {"kind": "latent-denoiser", "last_loss": training.get("denoiser", {}).get("final_loss"),
                     "recovered_from": origin})
    return RecoveredRuns(ae_run, latent_run, ae_steps, ld_steps, errors)
