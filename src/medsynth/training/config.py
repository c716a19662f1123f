"""Training configuration: three frozen dataclasses (model, schedule, optimisation), TOML/JSON I/O.

A configuration file (TOML or JSON) has up to three tables, each optional, every key optional::

    [model]
    channels = [32, 64, 64]
    attention_levels = [false, false, true]
    use_position = false

    [schedule]
    schedule = "scaled_linear_beta"     # linear_beta | scaled_linear_beta | cosine
    prediction_type = "v_prediction"    # v_prediction | epsilon

    [optim]
    steps = 2000
    batch_size = 16
    lr = 5e-4

Command-line flags override the file; the resolved configuration is saved as ``RUN/config.json``
(which is itself a valid ``--config`` file). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from medsynth.errors import ConfigError
from medsynth.pack import NoiseScheduleConfig, ScheduleName

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport when installed
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

LossName = Literal["mse", "huber"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DeviceName = Literal["auto", "cpu", "cuda"]
TrainPrediction = Literal["epsilon", "v_prediction"]


@dataclass(frozen=True)
class ModelConfig:
    """MONAI ``DiffusionModelUNet`` (2D) hyper-parameters.

    ``channels`` are the feature maps per level (the image side must be divisible by
    ``2 ** (len(channels) - 1)``); ``norm_num_groups`` must divide every entry (0 = the largest
    divisor ≤ 32 of all channels). ``use_position`` feeds the slice's relative position as a
    second, constant input channel. ``num_head_channels`` is capped at each level's width.
    ``image_channels`` is the UNet's image input and output channels (1 grey, 3 RGB).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 0
    use_flash_attention: bool = True
    use_position: bool = False
    image_channels: int = 1  # channels of the image the UNet denoises (3: RGB); set from the dataset

    def resolved_norm_groups(self) -> int:
        if self.norm_num_groups > 0:
            return self.norm_num_groups
        g = 0
        for c in self.channels:
            g = math.gcd(g, c)
        return max(d for d in range(1, min(32, g) + 1) if g % d == 0)

    def validate(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"model.channels must be positive integers, got {list(self.channels)}")
        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(
                f"model.attention_levels has {len(self.attention_levels)} entries but model.channels has "
                f"{len(self.channels)}"
            )
        groups = self.resolved_norm_groups()
        if any(c % groups for c in self.channels):
            raise ConfigError(f"model.norm_num_groups={groups} does not divide every channel count {list(self.channels)}")
        if self.num_head_channels < 1:
            raise ConfigError("model.num_head_channels must be ≥ 1")
        if self.num_res_blocks < 1:
            raise ConfigError("model.num_res_blocks must be ≥ 1")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"model.image_channels must be 1 (grey) or 3 (RGB), got {self.image_channels}")
        for c, att, h in zip(self.channels, self.attention_levels, self.resolved_head_channels(), strict=True):
            if att and c % h:
                raise ConfigError(f"model.num_head_channels={h} must divide the {c} channels of an attention level")

    def resolved_head_channels(self) -> tuple[int, ...]:
        """Channels per attention head at each level: ``num_head_channels``, capped at the level's width."""
        return tuple(min(self.num_head_channels, c) for c in self.channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class ScheduleConfig:
    """The DDPM noise schedule (named as in MONAI's ``DDPMScheduler``) and what the UNet predicts.

    ``beta_start``/``beta_end`` apply to the linear schedules; ``cosine`` ignores them.
    """

    schedule: ScheduleName = "scaled_linear_beta"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: TrainPrediction = "v_prediction"

    def validate(self) -> None:
        _check_choice("schedule.schedule", self.schedule, ScheduleName)
        _check_choice("schedule.prediction_type", self.prediction_type, TrainPrediction)
        if self.num_train_timesteps < 2:
            raise ConfigError("schedule.num_train_timesteps must be ≥ 2")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError("schedule needs 0 < beta_start < beta_end < 1")

    def to_pack(self) -> NoiseScheduleConfig:
        return NoiseScheduleConfig(
            schedule=self.schedule,
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
        )

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for MONAI's DDPMScheduler/DDIMScheduler."""
        kw: dict[str, Any] = {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "prediction_type": self.prediction_type,
        }
        if self.schedule != "cosine":
            kw["beta_start"] = self.beta_start
            kw["beta_end"] = self.beta_end
        return kw


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation, regularisation and run-time settings.

    ``label_dropout`` is the probability of replacing a label by the null class (classifier-free
    guidance). ``intensity_jitter`` is the maximum relative contrast/brightness change in model
    units; ``max_shift_px`` the maximum translation in pixels (no flips: anatomy has a side).
    ``max_minutes`` (0 = none) stops cleanly with a checkpoint when the wall-clock budget is spent.
    ``batch_size`` is the global batch of one optimisation step, over all processes of a
    ``torchrun`` job; ``micro_batch`` (0 = no limit) caps the images of one forward/backward pass in
    a process, gradients are accumulated over the passes, so the step is the same for any number
    of processes and any ``micro_batch`` (up to float rounding).
    """

    steps: int = 2000
    batch_size: int = 16
    micro_batch: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    loss: LossName = "mse"
    huber_delta: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    precision: Precision = "auto"
    device: DeviceName = "auto"
    augment: bool = True
    intensity_jitter: float = 0.05
    max_shift_px: int = 2
    seed: int = 0
    max_minutes: float = 0.0
    checkpoint_every: int = 250
    sample_every: int = 500
    sample_steps: int = 25
    sample_per_label: int = 4
    log_every: int = 10
    threads: int = 0

    def validate(self) -> None:
        _check_choice("optim.loss", self.loss, LossName)
        _check_choice("optim.precision", self.precision, Precision)
        _check_choice("optim.device", self.device, DeviceName)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} must be ≥ 1")
        if self.lr <= 0:
            raise ConfigError("optim.lr must be > 0")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError("optim.label_dropout must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("optim.ema_decay must be in [0, 1)")
        for name in ("warmup_steps", "checkpoint_every", "sample_every", "log_every", "threads", "max_shift_px",
                     "micro_batch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name} must be ≥ 0")
        if self.max_minutes < 0 or self.grad_clip < 0 or self.intensity_jitter < 0 or self.huber_delta <= 0:
            raise ConfigError("optim.max_minutes, grad_clip and intensity_jitter must be ≥ 0, huber_delta > 0")
        if self.sample_steps < 1 or self.sample_per_label < 1:
            raise ConfigError("optim.sample_steps and optim.sample_per_label must be ≥ 1")


# Settings that may change when a run is resumed (they do not change what the model is; micro_batch
# and device change float rounding only, like resuming with another number of processes).
RESUMABLE_OPTIM_FIELDS = frozenset(
    {"steps", "max_minutes", "checkpoint_every", "sample_every", "sample_steps", "sample_per_label",
     "log_every", "threads", "device", "micro_batch"}
)


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> TrainConfig:
        self.model.validate()
        self.schedule.validate()
        self.optim.validate()
        return self

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("channels", "attention_levels"):
            d["model"][k] = list(d["model"][k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
        """Build from a nested dict (``{"model": {...}, "schedule": {...}, "optim": {...}}``)."""
        unknown = set(d) - {"model", "schedule", "optim"}
        if unknown:
            raise ConfigError(f"unknown configuration table(s): {', '.join(sorted(unknown))}", source)
        base = cls()
        return base.with_overrides(
            {f"{sect}.{k}": v for sect, table in d.items() for k, v in _as_table(sect, table, source).items()},
            source,
        )

    def with_overrides(self, overrides: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
        """A copy with ``{"section.key": value}`` replaced (values coerced to the field's type)."""
        sections: dict[str, dict[str, Any]] = {"model": {}, "schedule": {}, "optim": {}}
        for dotted, value in overrides.items():
            if value is None:
                continue
            sect, _, key = dotted.partition(".")
            if sect not in sections:
                raise ConfigError(f"unknown configuration table {sect!r}", source)
            current = getattr(self, sect)
            names = {f.name: f for f in fields(current)}
            if key not in names:
                raise ConfigError(
                    f"unknown setting {dotted!r}; known in [{sect}]: {', '.join(sorted(names))}", source
                )
            sections[sect][key] = _coerce(dotted, getattr(current, key), value, source)
        cfg = TrainConfig(
            model=replace(self.model, **sections["model"]),
            schedule=replace(self.schedule, **sections["schedule"]),
            optim=replace(self.optim, **sections["optim"]),
        )
        return cfg.validate()


def load_config_file(path: str | Path) -> TrainConfig:
    """Read a TOML (``.toml``) or JSON (anything else, e.g. a run's ``config.json``) configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("configuration file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            if tomllib is None:  # pragma: no cover
                raise ConfigError("reading TOML on Python 3.10 needs `pip install tomli` (or use JSON)", path)
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"not valid TOML ({exc})", path) from None
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc.msg}, line {exc.lineno})", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file", path) from None
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a table/object", path)
    return TrainConfig.from_dict(data, path)


def save_config(path: Path, config: TrainConfig) -> None:
    """Write ``config`` as JSON (atomically)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _as_table(sect: str, table: Any, source: str | Path | None) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{sect}] must be a table", source)
    return table


def _check_choice(name: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _coerce(name: str, current: Any, value: Any, source: str | Path | None) -> Any:
    """Coerce a TOML/JSON/flag value to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError("expected true or false")
        if isinstance(current, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if isinstance(current, float):
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if isinstance(current, str):
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if isinstance(current, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError("expected a non-empty list")
            proto = current[0] if current else 0
            return tuple(_coerce(name, proto, v, source) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value {value!r} for {name} ({exc})", source) from None
    raise ConfigError(f"cannot set {name}", source)  # pragma: no cover - every field type is handled above

