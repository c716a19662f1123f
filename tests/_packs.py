"""Test helper: a tiny model pack built from a MONAI DiffusionModelUNet with random weights.

MONAI zero-initialises the UNet's output convolution (an untrained model outputs zeros, which would
make every comparison pass trivially), so every parameter is re-drawn from a seeded normal
distribution. The network is wrapped to the pack signature (``sample``, ``timestep``,
``class_labels``[, ``position`` as a second constant input channel]) and exported with
``torch.onnx.export`` (legacy exporter: seconds, not the dynamo exporter's tens of seconds).
Imports torch: tests and benchmarks only, never product code.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from medsynth import __version__
from medsynth.pack import NoiseScheduleConfig, PackMetadata, save_pack_metadata, sha256_file


class TinyDenoiser(nn.Module):
    """(sample [B,1,H,W], timestep [B], class_labels [B][, position [B]]) → [B,1,H,W]."""

    def __init__(self, num_labels: int, uses_position: bool, channels: tuple[int, ...] = (8, 16, 16)) -> None:
        super().__init__()
        self.uses_position = uses_position
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=2 if uses_position else 1,
            out_channels=1,
            num_res_blocks=1,
            channels=channels,
            attention_levels=(False, False, True),
            norm_num_groups=8,
            num_head_channels=8,
            num_class_embeds=num_labels + 1,
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = sample
        if self.uses_position:
            assert position is not None
            pos = (position.to(sample.dtype) * 2.0 - 1.0).reshape(-1, 1, 1, 1) * torch.ones_like(sample)
            x = torch.cat([sample, pos], dim=1)
        return self.unet(x, timesteps=timestep, class_labels=class_labels)


def randomise(model: nn.Module, seed: int, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def make_tiny_pack(
    root: Path,
    *,
    size: int = 16,
    labels: tuple[str, ...] = ("pelvis", "abdomen", "chest"),
    prediction_type: str = "v_prediction",
    uses_position: bool = False,
    schedule: NoiseScheduleConfig | None = None,
    default_sampler: str = "ddim",
    default_steps: int = 10,
    default_guidance: float = 1.0,
    model_id: str = "tiny-test",
    presets: tuple[str, ...] = ("ct-pelvis", "ct-abdomen", "ct-chest"),
    modality: str = "CT",
    physical_range: tuple[float, float] = (-1024.0, 2047.0),
    unit: str = "HU",
    seed: int = 0,
) -> tuple[Path, TinyDenoiser]:
    """Write a verified pack to ``root`` (created) and return it with its torch model (eval mode)."""
    torch.manual_seed(seed)
    model = TinyDenoiser(len(labels), uses_position)
    randomise(model, seed)
    model.eval()
    root.mkdir(parents=True, exist_ok=True)
    b = 2
    args: tuple[Any, ...] = (
        torch.randn(b, 1, size, size),
        torch.full((b,), 500, dtype=torch.long),
        torch.zeros(b, dtype=torch.long),
    )
    names = ["sample", "timestep", "class_labels"]
    if uses_position:
        args = (*args, torch.rand(b))
        names.append("position")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(root / "model.onnx"), input_names=names, output_names=["prediction"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "prediction"]}, opset_version=17, dynamo=False,
        )
    meta = PackMetadata(
        model_id=model_id,
        presets=presets,
        modality=modality,
        matrix=(size, size),
        pixel_spacing_mm=(6.0, 6.0),
        physical_range=physical_range,
        unit=unit,
        schedule=schedule or NoiseScheduleConfig(),
        prediction_type=prediction_type,  # type: ignore[arg-type]
        labels=labels,
        null_class=len(labels),
        uses_position=uses_position,
        default_guidance=default_guidance,
        default_sampler=default_sampler,
        default_steps=default_steps,
        files={"model.onnx": sha256_file(root / "model.onnx")},
        software_version=__version__,
        training={"note": "random weights, for tests"},
    )
    save_pack_metadata(root, meta)
    (root / "MODEL_CARD.md").write_text(f"# {model_id}\n\nRandom weights for tests.\n", encoding="utf-8")
    return root, model
