"""The denoiser: MONAI's 2D ``DiffusionModelUNet`` wrapped so its inputs are those of a model pack.

:class:`Denoiser` takes ``sample`` float32 [B, C, H, W] (model space; C = ``image_channels``, 1 or 3), ``timestep`` int64 [B],
``class_labels`` int64 [B] (``num_labels`` = the null class) and, when it uses the position
condition, ``position`` float32 [B] in [0, 1]. The position is fed to the UNet as a second,
constant input channel (so the exported ONNX graph keeps ``sample`` and ``position`` separate).
Its output is [B, C, H, W]: ε or v according to the schedule's prediction type.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from medsynth.training.config import ModelConfig, ScheduleConfig


class Denoiser(nn.Module):
    """(x_t, t, class[, position]) → model output; see the module docstring for shapes."""

    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.uses_position = config.use_position
        self.image_channels = config.image_channels
        self.num_labels = num_labels
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=config.image_channels + (1 if config.use_position else 0),
            out_channels=config.image_channels,
            num_res_blocks=config.num_res_blocks,
            channels=tuple(config.channels),
            attention_levels=tuple(config.attention_levels),
            norm_num_groups=config.resolved_norm_groups(),
            num_head_channels=list(config.resolved_head_channels()),
            num_class_embeds=num_labels + 1,
            use_flash_attention=config.use_flash_attention,
        )

    @property
    def null_class(self) -> int:
        return self.num_labels

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = sample
        if self.uses_position:
            if position is None:
                raise ValueError("this denoiser needs a position input")
            # [B] → [B, 1, H, W]; centred to [-1, 1] like the image channel.
            pos = (position.to(sample.dtype) * 2.0 - 1.0).reshape(-1, 1, 1, 1) * torch.ones_like(sample[:, :1])
            x = torch.cat([sample, pos], dim=1)
        return self.unet(x, timesteps=timestep, class_labels=class_labels)


def build_denoiser(config: ModelConfig, num_labels: int) -> Denoiser:
    """A freshly initialised :class:`Denoiser` (MONAI zero-initialises the output convolution)."""
    return Denoiser(config, num_labels)


def ddpm_scheduler(schedule: ScheduleConfig) -> DDPMScheduler:
    """MONAI's DDPM scheduler for training (noise, velocity targets)."""
    return DDPMScheduler(**schedule.scheduler_kwargs())


def ddim_scheduler(schedule: ScheduleConfig, steps: int) -> DDIMScheduler:
    """MONAI's DDIM scheduler set to ``steps`` inference steps (for preview grids)."""
    sched = DDIMScheduler(**schedule.scheduler_kwargs(), clip_sample=True)
    sched.set_timesteps(num_inference_steps=min(steps, schedule.num_train_timesteps))
    return sched


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    schedule: ScheduleConfig,
    labels: torch.Tensor,
    positions: torch.Tensor | None,
    shape: tuple[int, int],
    steps: int,
    generator: torch.Generator,
    device: torch.device,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Sample [B, C, H, W] images in model space with MONAI's DDIM (η = 0).

    ``labels`` int64 [B]; ``positions`` float32 [B] or None; ``guidance`` > 1 mixes conditional and
    unconditional (null class) predictions (classifier-free guidance).
    """
    sched = ddim_scheduler(schedule, steps)
    b = int(labels.shape[0])
    x = torch.randn((b, model.image_channels, *shape), generator=generator).to(device)
    labels = labels.to(device)
    pos = positions.to(device) if positions is not None else None
    null = torch.full_like(labels, model.null_class)
    for t in sched.timesteps:
        tt = torch.full((b,), int(t), dtype=torch.long, device=device)
        out = model(x, tt, labels, pos)
        if guidance != 1.0:
            unc = model(x, tt, null, pos)
            out = unc + guidance * (out - unc)
        x, _ = sched.step(out, int(t), x)
    return x.clamp(-1.0, 1.0)
