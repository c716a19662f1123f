"""Model packs: an ONNX denoiser plus everything sampling needs, in one folder.

A pack is a folder::

    PACK/
      pack.json       PackMetadata (this module), the single source of truth for sampling
      model.onnx      fp32 denoiser, one file, dynamic batch
      model.fp16.onnx optional fp16 variant for CUDA
      MODEL_CARD.md   human-readable card: data, licences, training, measured quality

The denoiser's inputs are ``sample`` float32 [B, 1, H, W] (model space), ``timestep`` int64 [B],
``class_labels`` int64 [B] (``null_class`` = unconditional, for classifier-free guidance) and,
when ``uses_position``, ``position`` float32 [B] in [0, 1]. Its output ``prediction`` is
float32 [B, 1, H, W]: epsilon, v or x0 according to ``prediction_type``.

``files`` maps each ONNX file name to its sha256; loading a pack verifies them, so a tampered or
foreign file is refused. This module is torch-free and onnxruntime-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medsynth.errors import ModelPackError

PACK_FORMAT_VERSION = 2  # 1: pixel-space denoiser; 2: adds ``latent`` (latent diffusion) and ``conditioning``
PredictionType = Literal["epsilon", "v_prediction", "sample"]
ScheduleName = Literal["linear_beta", "scaled_linear_beta", "cosine"]


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """The training noise schedule, named as in MONAI's ``DDPMScheduler``."""

    schedule: ScheduleName = "scaled_linear_beta"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195


@dataclass(frozen=True)
class LatentSpec:
    """Latent diffusion (pack format 2): ``model.onnx`` denoises latents [B, channels, *shape];
    ``decoder`` maps unscaled latents (scaled latent / ``scale_factor``) to model-space images
    [B, 1, *matrix]; ``encoder`` maps images to unscaled latent means. With ``previous_slice`` the
    denoiser has a fifth input ``previous`` [B, channels, *shape]: the scaled clean latent of the
    slice below (zeros for the first slice of a series)."""

    channels: int
    shape: tuple[int, int]
    downsample: int
    scale_factor: float
    decoder: str = "decoder.onnx"
    encoder: str = "encoder.onnx"
    previous_slice: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatentSpec:
        return cls(channels=int(d["channels"]), shape=(int(d["shape"][0]), int(d["shape"][1])),
                   downsample=int(d["downsample"]), scale_factor=float(d["scale_factor"]),
                   decoder=str(d.get("decoder", "decoder.onnx")), encoder=str(d.get("encoder", "encoder.onnx")),
                   previous_slice=bool(d.get("previous_slice", True)))


@dataclass(frozen=True)
class PackMetadata:
    """Everything sampling needs, plus attribution and provenance (``pack.json``)."""

    model_id: str
    presets: tuple[str, ...]
    modality: str
    matrix: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    physical_range: tuple[float, float]
    unit: str
    schedule: NoiseScheduleConfig
    prediction_type: PredictionType
    labels: tuple[str, ...]
    null_class: int
    uses_position: bool
    default_guidance: float
    default_sampler: str
    default_steps: int
    files: dict[str, str]  # ONNX file name -> sha256
    software_version: str
    training: dict[str, Any] = field(default_factory=dict)  # config, steps, time, hardware
    data_sources: tuple[dict[str, Any], ...] = ()  # name, sha256, licence, attribution
    quality: dict[str, Any] = field(default_factory=dict)  # numbers from `medsynth evaluate`
    parity: dict[str, Any] = field(default_factory=dict)  # ONNX-vs-torch max abs error
    format_version: int = 1
    latent: LatentSpec | None = None
    # conditioning support, per label: {"position": [lo, hi]} (positions seen in training)
    conditioning: dict[str, Any] = field(default_factory=dict)
    slice_spacing_mm: float | None = None  # the slice spacing the model was trained at (volumes)
    channels: int = 1  # image channels of ``sample`` and ``prediction`` (3: RGB); pack.json omits 1

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("presets", "matrix", "pixel_spacing_mm", "physical_range", "labels", "data_sources"):
            d[k] = list(d[k])
        if self.channels == 1:  # grey packs keep their pack.json (and identity) as before
            d.pop("channels")
        if self.latent is None:
            for k in ("latent", "conditioning", "slice_spacing_mm"):
                if not d[k]:
                    d.pop(k)
        else:
            d["latent"] = self.latent.to_json()
        return d

    def validate(self, path: Path | None = None) -> PackMetadata:
        """Refuse values sampling cannot use (types were checked by :meth:`from_json`)."""
        def bad(msg: str) -> ModelPackError:
            return ModelPackError(f"invalid pack.json: {msg}", path)

        if not all(16 <= m <= 4096 for m in self.matrix):
            raise bad(f"matrix {self.matrix} out of range 16..4096")
        if not all(0 < s <= 50 and math.isfinite(s) for s in self.pixel_spacing_mm):
            raise bad(f"pixel spacing {self.pixel_spacing_mm} mm out of range")
        lo, hi = self.physical_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise bad(f"physical range {self.physical_range} is not increasing")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise bad("labels must be a non-empty list of distinct names")
        if self.null_class != len(self.labels):
            raise bad(f"null_class {self.null_class} must equal the number of labels ({len(self.labels)})")
        if self.channels not in (1, 3):
            raise bad(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise bad(f"unknown prediction_type {self.prediction_type!r}")
        sc = self.schedule
        if sc.schedule not in ("linear_beta", "scaled_linear_beta", "cosine") or not 1 <= sc.num_train_timesteps <= 100000 \
                or not 0 < sc.beta_start < sc.beta_end < 1:
            raise bad(f"noise schedule {sc} is not usable")
        if not 1 <= self.default_steps <= sc.num_train_timesteps:
            raise bad(f"default_steps {self.default_steps} out of range")
        for name in self.files:
            if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
                raise bad(f"file name {name!r} is not a plain name inside the pack")
        if self.latent is not None:
            z = self.latent
            if z.channels < 1 or z.downsample < 1 or not (math.isfinite(z.scale_factor) and z.scale_factor > 0):
                raise bad("latent channels, downsample and scale_factor must be positive")
            if (z.shape[0] * z.downsample, z.shape[1] * z.downsample) != tuple(self.matrix):
                raise bad(f"latent shape {z.shape} × {z.downsample} does not give the matrix {self.matrix}")
            if z.decoder not in self.files:
                raise bad(f"latent decoder {z.decoder} is not listed in files")
        return self

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path | None = None) -> PackMetadata:
        try:
            return cls(
                model_id=str(d["model_id"]),
                presets=tuple(d["presets"]),
                modality=str(d["modality"]),
                matrix=(int(d["matrix"][0]), int(d["matrix"][1])),
                pixel_spacing_mm=(float(d["pixel_spacing_mm"][0]), float(d["pixel_spacing_mm"][1])),
                physical_range=(float(d["physical_range"][0]), float(d["physical_range"][1])),
                unit=str(d["unit"]),
                schedule=NoiseScheduleConfig(**d["schedule"]),
                prediction_type=d["prediction_type"],
                labels=tuple(d["labels"]),
                null_class=int(d["null_class"]),
                uses_position=bool(d["uses_position"]),
                default_guidance=float(d["default_guidance"]),
                default_sampler=str(d["default_sampler"]),
                default_steps=int(d["default_steps"]),
                files={str(k): str(v) for k, v in d["files"].items()},
                software_version=str(d["software_version"]),
                training=dict(d.get("training", {})),
                data_sources=tuple(d.get("data_sources", ())),
                quality=dict(d.get("quality", {})),
                parity=dict(d.get("parity", {})),
                format_version=int(d.get("format_version", 1)),
                latent=LatentSpec.from_json(d["latent"]) if d.get("latent") else None,
                conditioning=dict(d.get("conditioning") or {}),
                slice_spacing_mm=float(d["slice_spacing_mm"]) if d.get("slice_spacing_mm") is not None else None,
                channels=int(d.get("channels", 1)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelPackError(f"malformed pack.json ({exc!r})", path) from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelPack:
    """A loaded, verified pack: its folder and metadata."""

    root: Path
    metadata: PackMetadata

    def onnx_path(self, fp16: bool = False) -> Path:
        name = "model.fp16.onnx" if fp16 else "model.onnx"
        if name not in self.metadata.files:
            raise ModelPackError(f"pack has no {name}", self.root)
        return self.root / name

    @property
    def model_sha256(self) -> str:
        return self.metadata.files["model.onnx"]

    @property
    def identity(self) -> str:
        """sha256 over the canonical pack.json (which lists every file's sha256): the pack's identity,
        so an edited schedule, label list or range is a different pack."""
        return identity_sha256(self.metadata)

    @property
    def is_latent(self) -> bool:
        return self.metadata.latent is not None


def identity_sha256(metadata: PackMetadata) -> str:
    """sha256 of pack.json's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(metadata.to_json(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_pack_metadata(root: Path, metadata: PackMetadata) -> None:
    (root / "pack.json").write_text(json.dumps(metadata.to_json(), indent=2) + "\n", encoding="utf-8")


def load_pack(root: str | Path, verify: bool = True) -> ModelPack:
    """Open a pack folder; with ``verify`` every ONNX file's sha256 is checked against pack.json."""
    root = Path(root)
    meta_path = root / "pack.json"
    if not meta_path.is_file():
        raise ModelPackError("not a model pack (no pack.json)", root)
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackError(f"pack.json is not valid JSON ({exc})", meta_path) from None
    if not isinstance(raw, dict):
        raise ModelPackError("pack.json must hold a JSON object", meta_path)
    meta = PackMetadata.from_json(raw, meta_path).validate(meta_path)
    if meta.format_version > PACK_FORMAT_VERSION:
        raise ModelPackError(f"pack format {meta.format_version} is newer than this medsynth understands", root)
    if "model.onnx" not in meta.files:
        raise ModelPackError("pack.json lists no model.onnx", meta_path)
    if verify:
        for name, digest in meta.files.items():
            f = root / name  # names were checked by validate(): plain names inside the pack
            if not f.is_file():
                raise ModelPackError(f"missing {name}", root)
            actual = sha256_file(f)
            if actual != digest:
                raise ModelPackError(
                    f"{name} sha256 {actual[:12]}… does not match pack.json ({digest[:12]}…): tampered or foreign file",
                    f,
                )
    return ModelPack(root, meta)


ENV_MODEL_DIR = "MEDSYNTH_MODEL_DIR"


def user_model_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """``$MEDSYNTH_MODEL_DIR``: a folder of packs searched before the bundled ones when no
    ``--model-dir`` is given (set once on a workstation, every script picks it up)."""
    value = (os.environ if environ is None else environ).get(ENV_MODEL_DIR, "").strip()
    return Path(value) if value else None


def bundled_packs_dir() -> Path:
    """The folder of packs shipped inside the installed package."""
    return Path(__file__).resolve().parent / "packs"
