"""Training diffusion models on prepared datasets (needs the ``train`` extra: torch, MONAI).

Importing this package is cheap; torch is imported by :mod:`medsynth.training.trainer` and
:mod:`medsynth.training.model` only.
"""

from medsynth.training.config import ModelConfig, OptimConfig, ScheduleConfig, TrainConfig, load_config_file

__all__ = ["ModelConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "load_config_file"]
