"""Pixel encoding: real CT HU are kept exactly (12-bit, or 16-bit signed when the range needs it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.dicom_io.pixel_encoding import PixelEncoding, fit_volume
from medsynth.dicom_io.reader import read_volume
from medsynth.errors import InputError
from medsynth.presets import get_preset


def test_real_ct_round_trips_exactly(shared_data: Path) -> None:
    hu = np.rint(read_volume(shared_data / "ct/abdomen_pelvis_totalseg.nii.gz").voxels).astype(np.int16)
    vol, enc, windows, rescale = fit_volume(hu, get_preset("ct-pelvis"))
    assert rescale is None and windows is None
    assert (enc.bits_stored, enc.signed) == (16, True)  # -1207..3382 HU do not fit the 12-bit range
    stored, clipped = enc.encode(vol[0])
    assert clipped == 0 and stored.dtype == np.dtype("<i2")
    np.testing.assert_array_equal(stored.astype(np.int64) * enc.rescale_slope + enc.rescale_intercept, hu[0])
    inside = np.clip(hu, -1024, 3071)
    assert fit_volume(inside, get_preset("ct-pelvis"))[1] == PixelEncoding.for_preset(get_preset("ct-pelvis"))


def test_mr_floats_are_rescaled_and_impossible_ranges_refused() -> None:
    vol, enc, _, rescale = fit_volume(np.linspace(0.0, 1.0, 64).reshape(1, 8, 8), get_preset("mr-brain"))
    assert rescale is not None and rescale["input_range"] == [0.0, 1.0] and float(vol.max()) == 4095.0
    with pytest.raises(InputError):
        PixelEncoding.fit(get_preset("ct-chest"), -40000.0, 0.0)
