"""Where the pixels came from, and the DICOM markers that say so truthfully.

Three origins (:class:`PixelOrigin`), each with its own markers:

* ``GENERATED`` — sampled by a diffusion model (``medsynth generate``): SyntheticData YES, a
  Contributing Equipment item 109100 "Synthesizing Equipment", BurnedInAnnotation NO,
  RecognizableVisualFeatures NO (a synthetic face belongs to nobody).
* ``SYNTHETIC_INPUT`` — ``medsynth to-dicom --synthetic``: the input volume was itself synthetic
  (the user says so); the same synthetic markers, with a description that says medsynth converted it.
* ``REAL`` — ``medsynth to-dicom`` of a real scan: **de-identified real data**. A Contributing
  Equipment item 109104 "De-identifying Equipment", SyntheticData NO, PatientIdentityRemoved YES
  with the Basic Application Confidentiality Profile (113100) only — every header attribute is
  replaced, nothing is retained, and the pixel data are *not* cleaned, so neither the Clean Pixel
  Data nor the Clean Recognizable Visual Features option is claimed. RecognizableVisualFeatures is
  YES for head anatomy (a face can be reconstructed) and otherwise left out (not checked, not
  claimed); BurnedInAnnotation is left out for CT/MR (type 3, not checked) and YES for DX (type 1
  there: a real radiograph may carry burned-in markers, and the pixels were not cleaned). The
  input's SHA-256 is kept out of every file (it would link the output back to the original); only
  the local ``manifest.json`` records it.

The private block (group :data:`PRIVATE_GROUP`, creator :data:`PRIVATE_CREATOR`, elements
:data:`PRIVATE_TAGS`) carries the provenance fields; :func:`read_private_provenance` reads it back
(the public way for other modules, e.g. evaluation, to find a file's condition).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsynth import __version__
from medsynth.presets import CodedConcept, Modality

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MEDSYNTH 1.0"
MANUFACTURER = "medsynth"

SYNTHESIZING_EQUIPMENT = CodedConcept("109100", "DCM", "Synthesizing Equipment")
DEIDENTIFYING_EQUIPMENT = CodedConcept("109104", "DCM", "De-identifying Equipment")
BASIC_PROFILE = CodedConcept("113100", "DCM", "Basic Application Confidentiality Profile")

#: private block element offsets (0011,10xx) and their VRs
PRIVATE_TAGS: dict[str, tuple[int, str]] = {
    "model_id": (0x01, "LO"),
    "model_sha256": (0x02, "LO"),
    "seed": (0x03, "LO"),
    "sampler": (0x04, "LO"),
    "steps": (0x05, "IS"),
    "guidance": (0x06, "DS"),
    "condition": (0x07, "LO"),
    "software_version": (0x08, "LO"),
    "source_sha256": (0x09, "LO"),
    "pack_identity": (0x0A, "LO"),
    "origin": (0x0B, "LO"),
    "json": (0x10, "UT"),
}


class PixelOrigin(str, Enum):
    """Where an output's pixel data came from."""

    GENERATED = "generated"
    SYNTHETIC_INPUT = "synthetic-input"
    REAL = "real"

    @property
    def synthetic(self) -> bool:
        """True for pixels that show no real person."""
        return self is not PixelOrigin.REAL


@dataclass(frozen=True)
class Provenance:
    """Where the pixels came from; written to the private block and the manifest.

    ``model_sha256``/``source_sha256``/``pack_identity`` are hex SHA-256 digests (of the ONNX model,
    of the input file for to-dicom, of the pack's pack.json and files). ``seed`` is the sampler's
    seed, ``steps`` its number of denoising steps, ``guidance`` its classifier-free guidance scale,
    ``condition`` the condition label sampled. ``origin`` None means GENERATED when a model is
    named, else REAL. Never put file names or header text here: the fields reach every output file.
    """

    model_id: str | None = None
    model_sha256: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    condition: str | None = None
    software_version: str = __version__
    source_sha256: str | None = None
    pack_identity: str | None = None
    origin: PixelOrigin | None = None

    @property
    def pixel_origin(self) -> PixelOrigin:
        """The origin, defaulted from whether a model made the pixels."""
        if self.origin is not None:
            return PixelOrigin(self.origin)
        return PixelOrigin.GENERATED if self.model_id else PixelOrigin.REAL

    def to_json(self) -> dict[str, Any]:
        """The non-empty fields, JSON-ready (for the manifest), with the resolved origin."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["origin"] = self.pixel_origin.value
        return out

    def file_fields(self) -> dict[str, Any]:
        """What goes into each file's private block: :meth:`to_json` without the input's SHA-256
        for real data (it would link a de-identified file back to its original)."""
        out = self.to_json()
        if self.pixel_origin is PixelOrigin.REAL:
            out.pop("source_sha256", None)
        return out

    def describe(self) -> str:
        """One sentence for ContributionDescription / DerivationDescription."""
        origin = self.pixel_origin
        if origin is PixelOrigin.GENERATED:
            parts = [f"Synthesized by medsynth {self.software_version} with diffusion model {self.model_id or '?'}"]
            if self.sampler:
                parts.append(f"sampler {self.sampler}")
            if self.steps is not None:
                parts.append(f"{self.steps} steps")
            if self.guidance is not None:
                parts.append(f"guidance {self.guidance:g}")
            if self.seed is not None:
                parts.append(f"seed {self.seed}")
            if self.condition:
                parts.append(f"condition {self.condition}")
            return ", ".join(parts)
        if origin is PixelOrigin.SYNTHETIC_INPUT:
            text = (f"Converted by medsynth {self.software_version} from an input volume declared synthetic; "
                    "patient, study, dates and UIDs are synthetic")
            if self.source_sha256:
                text += f"; input SHA-256 {self.source_sha256}"
            return text
        return (f"De-identified by medsynth {self.software_version}: real pixel data from an input volume, "
                "unchanged and not cleaned; patient, study, dates and UIDs replaced, no header text copied")


def code_item(code: CodedConcept) -> Dataset:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def equipment_model_name(prov: Provenance) -> str:
    """ManufacturerModelName of medsynth as the contributing equipment (≤ 64 characters)."""
    return f"medsynth {prov.model_id or 'to-dicom'}"[:64]


def apply_origin_markers(ds: Dataset, prov: Provenance, modality: Modality, head: bool, created: str) -> None:
    """Set the Contributing Equipment item, SyntheticData, de-identification attributes,
    BurnedInAnnotation, RecognizableVisualFeatures and DerivationDescription for ``prov``'s origin.

    ``head``: the anatomy is the head (a real head scan has recognisable features). ``created``:
    ContributionDateTime, ``YYYYMMDDHHMMSS``.
    """
    origin = prov.pixel_origin
    equip = Dataset()
    equip.Manufacturer = MANUFACTURER
    equip.ManufacturerModelName = equipment_model_name(prov)
    equip.SoftwareVersions = prov.software_version
    equip.ContributionDateTime = created
    equip.ContributionDescription = prov.describe()[:1024]
    purpose = SYNTHESIZING_EQUIPMENT if origin.synthetic else DEIDENTIFYING_EQUIPMENT
    equip.PurposeOfReferenceCodeSequence = Sequence([code_item(purpose)])
    ds.ContributingEquipmentSequence = Sequence([equip])

    ds.PatientIdentityRemoved = "YES"
    if origin.synthetic:
        ds.DeidentificationMethod = [
            "medsynth synthetic identity, dates and UIDs",
            "no header text copied from any input",
        ]
    else:
        ds.DeidentificationMethod = [
            "medsynth to-dicom: identity, dates and UIDs replaced",
            "no header text copied; pixel data not cleaned",
        ]
    # Only the Basic Profile applies: nothing is retained (no dates, UIDs, device identity, patient
    # characteristics or descriptors from a source) and pixels are not cleaned, so no option is claimed.
    ds.DeidentificationMethodCodeSequence = Sequence([code_item(BASIC_PROFILE)])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.SyntheticData = "YES" if origin.synthetic else "NO"
    ds.DerivationDescription = prov.describe()[:1024]
    if origin.synthetic:
        ds.BurnedInAnnotation = "NO"
        ds.RecognizableVisualFeatures = "NO"
    else:
        if modality is Modality.DX:
            ds.BurnedInAnnotation = "YES"  # type 1 in the DX Image module; not checked, not cleaned
        if head:
            ds.RecognizableVisualFeatures = "YES"


def add_private_block(ds: Dataset, prov: Provenance) -> None:
    """The provenance private block (group 0x0011, creator ``MEDSYNTH 1.0``)."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    values = prov.file_fields()
    for key, value in values.items():
        offset, vr = PRIVATE_TAGS[key]
        if vr == "IS":
            block.add_new(offset, vr, int(value))
        elif vr == "DS":
            text = f"{float(value):.10g}"
            block.add_new(offset, vr, text if len(text) <= 16 else f"{float(value):.6e}")
        else:
            block.add_new(offset, vr, str(value)[:64])
    offset, vr = PRIVATE_TAGS["json"]
    block.add_new(offset, vr, json.dumps(values, sort_keys=True))


def read_private_provenance(ds: Dataset) -> dict[str, Any]:
    """The provenance fields of a medsynth file's private block ({} when it has none)."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        value = block[PRIVATE_TAGS["json"][0]].value
        # Implicit VR files carry private elements without their VR: pydicom reads the bytes (UN)
        text = value.decode("utf-8", "replace").rstrip("\x00 ") if isinstance(value, bytes) else str(value)
    except (KeyError, ValueError):
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
