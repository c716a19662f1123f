"""Pixel encoding: how physical values (HU, scanner or detector units) become stored integers.

:class:`PixelEncoding` is ``stored = rint((physical - intercept) / slope)`` with 12 or 16 bits
stored in 16 allocated, signed or not; :func:`fit_volume` chooses the encoding that keeps a whole
volume exact where possible (and rescales what cannot be kept, recording how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.errors import InputError
from medsynth.presets import Modality, Preset, Window


@dataclass(frozen=True)
class PixelEncoding:
    """How physical values become stored integers: ``stored = rint((v - intercept) / slope)``.

    ``bits_stored`` 8, 12 or 16 (8 in 8 bits allocated, for JPEG baseline; else 16 allocated);
    ``signed`` → PixelRepresentation 1.
    """

    bits_stored: int
    signed: bool
    rescale_intercept: float = 0.0
    rescale_slope: float = 1.0

    @property
    def bits_allocated(self) -> int:
        """BitsAllocated: 8 for 8-bit encodings, else 16."""
        return 8 if self.bits_stored <= 8 else 16

    @property
    def _dtype(self) -> str:
        return ("<i1" if self.signed else "<u1") if self.bits_allocated == 8 else ("<i2" if self.signed else "<u2")

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest storable integer."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def physical_range(self) -> tuple[float, float]:
        """Smallest and largest physical value this encoding represents."""
        lo, hi = self.stored_range
        return lo * self.rescale_slope + self.rescale_intercept, hi * self.rescale_slope + self.rescale_intercept

    def encode(self, physical: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.integer[Any]], int]:
        """Physical 2D array → (little-endian stored array, number of pixels clipped to the range)."""
        arr = np.asarray(physical)
        lo, hi = self.stored_range
        if (np.issubdtype(arr.dtype, np.integer) and self.rescale_slope == 1.0
                and float(self.rescale_intercept).is_integer()):
            # integer input (e.g. HU from a file): exact integer arithmetic, no float round trip
            stored_i = arr.astype(np.int32) - int(self.rescale_intercept)
            clipped_i = int(np.count_nonzero((stored_i < lo) | (stored_i > hi)))
            np.clip(stored_i, lo, hi, out=stored_i)
            return stored_i.astype(self._dtype), clipped_i
        stored = np.rint((arr.astype(np.float64) - self.rescale_intercept) / self.rescale_slope)
        clipped = int(np.count_nonzero((stored < lo) | (stored > hi)))
        np.clip(stored, lo, hi, out=stored)
        out = stored.astype(self._dtype)
        return out, clipped

    @classmethod
    def for_preset(cls, preset: Preset) -> PixelEncoding:
        """The preset's own encoding (12-bit unsigned; CT with its RescaleIntercept)."""
        m = preset.intensity
        return cls(bits_stored=m.bits_stored, signed=False, rescale_intercept=m.rescale_intercept,
                   rescale_slope=m.rescale_slope)

    @classmethod
    def fit(cls, preset: Preset, low: float, high: float) -> PixelEncoding:
        """The preset's encoding if [low, high] fits it, else a wider one that holds it exactly.

        For CT (rescale slope 1) integers round-trip exactly. Raises InputError when no 16-bit
        encoding holds the range (MR/DX callers rescale such data first, see ``write_volume``).
        """
        base = cls.for_preset(preset)
        lo, hi = float(np.floor(low)), float(np.ceil(high))
        plo, phi = base.physical_range
        if plo <= lo and hi <= phi:
            return base
        if preset.modality is Modality.CT:
            if lo >= -32768 and hi <= 32767:
                return cls(bits_stored=16, signed=True, rescale_intercept=0.0, rescale_slope=1.0)
        elif lo >= 0 and hi <= 65535:
            return cls(bits_stored=16, signed=False)
        elif preset.modality is Modality.MR and lo >= -32768 and hi <= 32767:
            return cls(bits_stored=16, signed=True)
        raise InputError(f"values {low:g}..{high:g} do not fit a 16-bit {preset.modality.value} encoding")


def fit_volume(volume: np.ndarray, preset: Preset) -> tuple[np.ndarray, PixelEncoding, tuple[Window, ...] | None, dict[str, Any] | None]:
    """Choose the encoding that keeps ``volume`` exact where possible.

    CT: integer HU round-trip exactly (12-bit preset encoding, or 16-bit signed when the range
    needs it); fractional HU are rounded. MR/DX: values that fit 16 bits (unsigned; MR also signed)
    are rounded, so integers are kept exactly; values that do not fit, or fractional values
    spanning less than 256 units (e.g. 0..1 floats), are mapped linearly onto the preset's range
    and the mapping is recorded in the manifest (``intensity_rescaled``). Returns the
    (possibly rescaled) volume, the encoding, windows (None = preset's) and the rescale record.
    """
    lo, hi = float(volume.min()), float(volume.max())
    integral = bool(np.issubdtype(volume.dtype, np.integer) or np.all(volume == np.rint(volume)))
    if preset.modality is Modality.CT:
        return volume, PixelEncoding.fit(preset, lo, hi), None, None
    rescale = None
    fits = (lo >= 0 and hi <= 65535) or (preset.modality is Modality.MR and lo >= -32768 and hi <= 32767)
    coarse = not integral and hi - lo < 256  # rounding to integers would erase most of the contrast
    if not fits or coarse:
        plo, phi = preset.intensity.physical_low, preset.intensity.physical_high
        scale = (phi - plo) / (hi - lo) if hi > lo else 1.0
        offset = plo - lo * scale
        volume = volume * scale + offset
        rescale = {"scale": scale, "offset": offset, "input_range": [lo, hi]}
        lo, hi = float(volume.min()), float(volume.max())
    enc = PixelEncoding.fit(preset, lo, hi)
    # The preset's windows assume its range; data far narrower get a window over their own range.
    windows: tuple[Window, ...] | None = None
    span = preset.intensity.physical_high - preset.intensity.physical_low
    if hi - lo < 0.5 * span or hi > preset.intensity.physical_high:
        p1, p99 = (float(v) for v in np.percentile(volume, [1.0, 99.0]))
        if p99 <= p1:
            p1, p99 = lo, max(hi, lo + 1.0)
        windows = (Window((p1 + p99) / 2.0, p99 - p1, "DATA RANGE"),)
    return volume, enc, windows, rescale
