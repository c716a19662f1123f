"""Transfer syntaxes: how an instance's dataset and pixels are encoded in the file.

:class:`TransferSyntax` is the closed set ``medsynth generate`` and ``medsynth to-dicom`` offer
(``--transfer-syntax``). Uncompressed syntaxes only change the file meta (pydicom writes the
dataset accordingly); RLE, JPEG-LS and JPEG 2000 go through pydicom's own encoders
(:meth:`pydicom.dataset.Dataset.compress`, with the pydicom/pylibjpeg-rle, pyjpegls and
pylibjpeg-openjpeg plugins); JPEG baseline (8-bit only) through Pillow's libjpeg encoder,
encapsulated by pydicom. Lossy syntaxes set LossyImageCompression "01", the achieved ratio
(uncompressed / compressed bytes) and the method (ISO_15444_1 / ISO_10918_1).
"""

from __future__ import annotations

import io
from enum import Enum

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import VR

from medsynth.dicom_io.pixel_encoding import PixelEncoding
from medsynth.errors import ConfigError, DicomWriteError
from medsynth.presets import Modality

#: compression ratio asked of the JPEG 2000 lossy encoder (one quality layer)
JPEG2000_LOSSY_RATIO = 10.0
#: libjpeg quality of JPEG baseline (1..95)
JPEG_BASELINE_QUALITY = 90


class TransferSyntax(str, Enum):
    """The transfer syntaxes medsynth writes (value = the ``--transfer-syntax`` spelling)."""

    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    RLE = "rle"
    JPEG_LS = "jpeg-ls"
    JPEG2000 = "jpeg2000"
    JPEG2000_LOSSY = "jpeg2000-lossy"
    JPEG_BASELINE = "jpeg-baseline"

    @classmethod
    def parse(cls, value: str | TransferSyntax) -> TransferSyntax:
        """``value`` as a TransferSyntax; ConfigError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown transfer syntax {value!r}; choose one of: "
                              f"{', '.join(t.value for t in cls)}") from None

    @property
    def uid(self) -> UID:
        """The Transfer Syntax UID written to (0002,0010)."""
        return _UIDS[self]

    @property
    def compressed(self) -> bool:
        """Encapsulated (compressed) pixel data."""
        return self not in (TransferSyntax.EXPLICIT, TransferSyntax.IMPLICIT)

    @property
    def lossy(self) -> bool:
        """Decoded pixels differ from the stored ones."""
        return self in (TransferSyntax.JPEG2000_LOSSY, TransferSyntax.JPEG_BASELINE)

    @property
    def lossy_method(self) -> str | None:
        """LossyImageCompressionMethod (0028,2114) term, None for lossless syntaxes."""
        return {TransferSyntax.JPEG2000_LOSSY: "ISO_15444_1", TransferSyntax.JPEG_BASELINE: "ISO_10918_1"}.get(self)

    @property
    def eight_bit_only(self) -> bool:
        """Holds 8-bit pixels only (JPEG baseline, process 1)."""
        return self is TransferSyntax.JPEG_BASELINE


_UIDS: dict[TransferSyntax, UID] = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.IMPLICIT: ImplicitVRLittleEndian,
    TransferSyntax.RLE: RLELossless,
    TransferSyntax.JPEG_LS: JPEGLSLossless,
    TransferSyntax.JPEG2000: JPEG2000Lossless,
    TransferSyntax.JPEG2000_LOSSY: JPEG2000,
    TransferSyntax.JPEG_BASELINE: JPEGBaseline8Bit,
}


def check_encoding(syntax: TransferSyntax, encoding: PixelEncoding, what: str = "these pixels") -> None:
    """ConfigError when ``syntax`` cannot hold ``encoding`` (JPEG baseline: 8-bit unsigned only)."""
    if syntax.eight_bit_only and (encoding.bits_stored != 8 or encoding.signed):
        raise ConfigError(
            f"--transfer-syntax {syntax.value} holds 8-bit pixels only; {what} need "
            f"{encoding.bits_stored} bits{' (signed)' if encoding.signed else ''} (only 8-bit X-ray input "
            "fits: CT and MR images are 16 bits allocated); use jpeg-ls or jpeg2000 (lossless) or jpeg2000-lossy")


def eight_bit_encoding(volume: np.ndarray, encoding: PixelEncoding, modality: Modality) -> PixelEncoding:
    """An 8-bit unsigned encoding for a DX ``volume`` (detector values, stored directly) of integers
    0..255, as 8-bit radiographs are; else ``encoding`` unchanged (which :func:`check_encoding`
    then refuses for JPEG baseline). The CT and MR Image modules allow 16 bits allocated only."""
    if (modality is not Modality.DX or encoding.rescale_slope != 1.0 or encoding.rescale_intercept != 0.0
            or volume.size == 0):
        return encoding
    lo, hi = float(volume.min()), float(volume.max())
    integral = bool(np.issubdtype(volume.dtype, np.integer) or np.all(volume == np.rint(volume)))
    if integral and lo >= 0 and hi <= 255:
        return PixelEncoding(bits_stored=8, signed=False)
    return encoding


def _jpeg_baseline(ds: Dataset) -> tuple[bytes, int]:
    """One 8-bit frame → (encapsulated JPEG baseline pixel data, compressed length)."""
    from PIL import Image

    rows, cols = int(ds.Rows), int(ds.Columns)
    frame = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(rows, cols)
    buf = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buf, format="JPEG", quality=JPEG_BASELINE_QUALITY,
                                          subsampling=0, optimize=False, progressive=False)
    data = buf.getvalue()
    return encapsulate([data]), len(data)


def encode_instance(ds: Dataset, syntax: TransferSyntax) -> None:
    """Encode ``ds`` (uncompressed native PixelData, ``file_meta`` set) in ``syntax``, in place.

    Sets (0002,0010); compressed syntaxes replace PixelData with its encapsulated form; lossy ones
    set LossyImageCompression "01", LossyImageCompressionRatio and LossyImageCompressionMethod.
    The SOP Instance UID is kept (the caller's UIDs name the instance).
    """
    if syntax is TransferSyntax.EXPLICIT:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    if syntax is TransferSyntax.IMPLICIT:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        return
    native = len(ds.PixelData)
    try:
        if syntax is TransferSyntax.JPEG_BASELINE:
            if int(ds.BitsAllocated) != 8 or int(ds.PixelRepresentation) != 0:
                raise DicomWriteError("JPEG baseline needs 8-bit unsigned pixels")
            ds.PixelData, compressed = _jpeg_baseline(ds)
            elem = ds["PixelData"]
            elem.is_undefined_length = True
            elem.VR = VR.OB
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        else:
            kwargs = {"j2k_cr": [JPEG2000_LOSSY_RATIO]} if syntax is TransferSyntax.JPEG2000_LOSSY else {}
            ds.compress(syntax.uid, generate_instance_uid=False, **kwargs)  # type: ignore[arg-type]
            compressed = len(ds.PixelData)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        raise DicomWriteError(f"{syntax.value} encoding failed: {err}") from None
    if syntax.lossy:
        ds.LossyImageCompression = "01"
        ratio = native / max(compressed, 1)
        ds.LossyImageCompressionRatio = f"{ratio:.4g}"
        ds.LossyImageCompressionMethod = syntax.lossy_method
