"""medsynth: DICOM-aware diffusion models for synthetic CT, MR and X-ray slices.

Importing the package is cheap: it never imports torch, monai or onnxruntime.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medsynth")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
