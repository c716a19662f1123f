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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medsynth.errors import ModelPackError

PACK_FORMAT_VERSION = 1
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
    format_version: int = PACK_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("presets", "matrix", "pixel_spacing_mm", "physical_range", "labels", "data_sources"):
            d[k] = list(d[k])
        return d

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
    meta = PackMetadata.from_json(raw, meta_path)
    if meta.format_version > PACK_FORMAT_VERSION:
        raise ModelPackError(f"pack format {meta.format_version} is newer than this medsynth understands", root)
    if "model.onnx" not in meta.files:
        raise ModelPackError("pack.json lists no model.onnx", meta_path)
    if verify:
        for name, digest in meta.files.items():
            f = root / name
            if not f.is_file():
                raise ModelPackError(f"missing {name}", root)
            actual = sha256_file(f)
            if actual != digest:
                raise ModelPackError(
                    f"{name} sha256 {actual[:12]}… does not match pack.json ({digest[:12]}…): tampered or foreign file",
                    f,
                )
    return ModelPack(root, meta)


def bundled_packs_dir() -> Path:
    """The folder of packs shipped inside the installed package."""
    return Path(__file__).resolve().parent / "packs"
