"""The one exception hierarchy of medsynth.

Every error a user can cause derives from :class:`MedsynthError`. The CLI turns these into a
single-line message and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedsynthError(Exception):
    """Base class of every error medsynth raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message


class ConfigError(MedsynthError):
    """A configuration value or option is invalid (unknown modality, bad TOML, wrong type)."""

    exit_code = 2


class InputError(MedsynthError):
    """An input file or array cannot be used (not an image, corrupt, NaN, wrong shape)."""


class UnsupportedInputError(InputError):
    """The input is a valid file but of a kind medsynth does not handle (SR, RTSTRUCT, ...)."""


class GeometryError(InputError):
    """The input's geometry is inconsistent (gantry tilt, missing orientation, mixed series)."""


class OutputError(MedsynthError):
    """The output location cannot be used (not empty without --force, not writable)."""


class DicomWriteError(MedsynthError):
    """Building or writing a DICOM object failed validation."""


class DatasetError(MedsynthError):
    """A prepared training dataset is missing, malformed, or does not match the configuration."""


class CheckpointError(MedsynthError):
    """A training checkpoint is missing, corrupt, or does not match its configuration."""


class ExportError(MedsynthError):
    """An ONNX export failed or did not match PyTorch within tolerance."""


class ModelPackError(MedsynthError):
    """A model pack is missing, malformed, tampered with, or foreign."""


class DeviceError(MedsynthError):
    """The requested execution device (e.g. CUDA) is not available."""


class PushError(MedsynthError):
    """Sending to a PACS (C-STORE, STOW-RS) failed."""


class EvaluationError(MedsynthError):
    """Evaluation inputs are unusable (empty sets, mismatched intensity spaces)."""
