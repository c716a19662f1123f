"""Modality presets: typed, frozen descriptions of what each bundled model makes.

A preset says which DICOM IOD the output uses, the matrix and pixel spacing (mm) of its model,
how model space [-1, 1] maps to physical values (HU for CT, scanner units for MR, 12-bit detector
values for DX) and on to stored pixel values, its display windows, the anatomy codes, and the
condition labels its model understands. Nothing here imports numpy-heavy or torch code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from medsynth.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Modality(str, Enum):
    """DICOM Modality (0008,0060) values medsynth writes."""

    CT = "CT"
    MR = "MR"
    DX = "DX"
    GM = "GM"  # General Microscopy (VL Microscopic Image)


class SOPClass(str, Enum):
    """Storage SOP classes (UIDs) of the IODs medsynth writes."""

    CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
    MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
    DX_IMAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
    VL_MICROSCOPIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.2"


@dataclass(frozen=True)
class CodedConcept:
    """A DICOM code triplet (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Window:
    """A VOI window (WindowCenter/WindowWidth, in physical units) with its explanation."""

    center: float
    width: float
    explanation: str


@dataclass(frozen=True)
class IntensityMapping:
    """Linear map between model space [-1, 1] and physical values, and on to stored values.

    ``physical_low`` maps to -1 and ``physical_high`` to +1 (HU for CT, scanner units for MR,
    detector units for DX). Stored pixel values are ``(physical - rescale_intercept) /
    rescale_slope``, unsigned, ``bits_stored`` bits. ``uses_rescale`` says whether the IOD carries
    RescaleSlope/RescaleIntercept (CT) or stores physical values directly (MR, DX).
    """

    physical_low: float
    physical_high: float
    unit: str
    bits_stored: int
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    uses_rescale: bool = False

    def to_model(self, physical: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Physical values (any shape) → model space, clipped to [-1, 1], float32."""
        import numpy as np

        span = self.physical_high - self.physical_low
        scaled = (np.asarray(physical, dtype=np.float64) - self.physical_low) / span * 2.0 - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def to_physical(self, model: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Model space (any shape; clipped to [-1, 1]) → physical values, float64."""
        import numpy as np

        m = np.clip(np.asarray(model, dtype=np.float64), -1.0, 1.0)
        return (m + 1.0) / 2.0 * (self.physical_high - self.physical_low) + self.physical_low

    def to_stored(self, physical: npt.NDArray[np.floating]) -> npt.NDArray[np.uint16]:
        """Physical values → stored pixel values (rounded, clipped to ``bits_stored``), uint16."""
        import numpy as np

        stored = np.rint((np.asarray(physical, dtype=np.float64) - self.rescale_intercept) / self.rescale_slope)
        return np.clip(stored, 0, 2**self.bits_stored - 1).astype(np.uint16)


@dataclass(frozen=True)
class Preset:
    """Everything medsynth needs to know to model and write one kind of image.

    ``matrix`` is (rows, columns) in pixels; ``pixel_spacing_mm`` is (row spacing, column spacing)
    in mm; ``slice_thickness_mm`` is also the default spacing between synthetic slices.
    ``model_id`` names the bundled pack that serves this preset by default, ``family`` the pack
    family a newly exported pack of this preset is named after (default: ``model_id``; the CT
    presets default to the 512² latent pack ``ct-body-512`` of the ``ct-body`` family, whose 64²
    pixel pack stays bundled as ``--model ct-body``), ``default_condition`` the label used when the
    user gives none. ``matrix`` and ``pixel_spacing_mm`` are the grid a pixel-space pack is trained
    on (``prepare``'s default); a pack's own matrix and spacing decide what ``generate`` writes.
    """

    name: str
    description: str
    modality: Modality
    sop_class: SOPClass
    matrix: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    intensity: IntensityMapping
    windows: tuple[Window, ...]
    body_part_examined: str
    anatomic_region: CodedConcept
    conditions: tuple[str, ...]
    default_condition: str
    model_id: str
    study_description: str
    series_description: str
    is_volume: bool = True
    samples_per_pixel: int = 1  # 3: RGB colour (model space [3, H, W], DICOM RGB, PlanarConfiguration 0)
    family: str = ""

    @property
    def pack_family(self) -> str:
        """The family new packs of this preset are named after and grouped by (see class doc)."""
        return self.family or self.model_id

    def condition_index(self, label: str) -> int:
        """Index of ``label`` in ``conditions``; ConfigError naming the valid labels otherwise."""
        try:
            return self.conditions.index(label)
        except ValueError:
            raise ConfigError(
                f"unknown condition {label!r} for preset {self.name}; choose one of: {', '.join(self.conditions)}"
            ) from None


_CT_INTENSITY = IntensityMapping(
    physical_low=-1024.0,
    physical_high=2047.0,
    unit="HU",
    bits_stored=12,
    rescale_slope=1.0,
    rescale_intercept=-1024.0,
    uses_rescale=True,
)
_MR_INTENSITY = IntensityMapping(physical_low=0.0, physical_high=4095.0, unit="US", bits_stored=12)
_DX_INTENSITY = IntensityMapping(physical_low=0.0, physical_high=4095.0, unit="US", bits_stored=12)

_SOFT = Window(40.0, 400.0, "SOFT TISSUE")
_BONE = Window(400.0, 1800.0, "BONE")
_LUNG = Window(-600.0, 1500.0, "LUNG")
_LIVER = Window(60.0, 160.0, "LIVER")
_CT_CONDITIONS = ("pelvis", "abdomen", "chest")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="ct-pelvis",
            description="Axial CT of the pelvis (bladder, femoral heads, iliac bones), HU.",
            modality=Modality.CT,
            sop_class=SOPClass.CT_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(6.0, 6.0),
            slice_thickness_mm=5.0,
            intensity=_CT_INTENSITY,
            windows=(_SOFT, _BONE),
            body_part_examined="PELVIS",
            anatomic_region=CodedConcept("12921003", "SCT", "Pelvis"),
            conditions=_CT_CONDITIONS,
            default_condition="pelvis",
            model_id="ct-body-512",
            family="ct-body",
            study_description="CT PELVIS (SYNTHETIC)",
            series_description="Synthetic axial pelvis",
        ),
        Preset(
            name="ct-abdomen",
            description="Axial CT of the abdomen (liver, kidneys, bowel, spine), HU.",
            modality=Modality.CT,
            sop_class=SOPClass.CT_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(6.0, 6.0),
            slice_thickness_mm=5.0,
            intensity=_CT_INTENSITY,
            windows=(_SOFT, _LIVER, _BONE),
            body_part_examined="ABDOMEN",
            anatomic_region=CodedConcept("818981001", "SCT", "Abdomen"),
            conditions=_CT_CONDITIONS,
            default_condition="abdomen",
            model_id="ct-body-512",
            family="ct-body",
            study_description="CT ABDOMEN (SYNTHETIC)",
            series_description="Synthetic axial abdomen",
        ),
        Preset(
            name="ct-chest",
            description="Axial CT of the chest (lungs, mediastinum, heart), HU.",
            modality=Modality.CT,
            sop_class=SOPClass.CT_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(6.0, 6.0),
            slice_thickness_mm=5.0,
            intensity=_CT_INTENSITY,
            windows=(_LUNG, _SOFT, _BONE),
            body_part_examined="CHEST",
            anatomic_region=CodedConcept("51185008", "SCT", "Thorax"),
            conditions=_CT_CONDITIONS,
            default_condition="chest",
            model_id="ct-body-512",
            family="ct-body",
            study_description="CT CHEST (SYNTHETIC)",
            series_description="Synthetic axial chest",
        ),
        Preset(
            name="mr-brain",
            description="Axial MR of the head/brain; contrasts T1, T2, FLAIR, T1 post-contrast.",
            modality=Modality.MR,
            sop_class=SOPClass.MR_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(3.75, 3.75),
            slice_thickness_mm=4.0,
            intensity=_MR_INTENSITY,
            windows=(Window(1600.0, 3200.0, "BRAIN"),),
            body_part_examined="BRAIN",
            anatomic_region=CodedConcept("12738006", "SCT", "Brain"),
            conditions=("t1", "t2", "flair", "t1c"),
            default_condition="t1",
            model_id="mr-brain",
            study_description="MR BRAIN (SYNTHETIC)",
            series_description="Synthetic axial brain",
        ),
        Preset(
            name="mr-cardiac",
            description="Axial cardiac MR, 3D inversion-recovery GRE (late gadolinium enhancement).",
            modality=Modality.MR,
            sop_class=SOPClass.MR_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(6.25, 6.25),
            slice_thickness_mm=5.0,
            intensity=_MR_INTENSITY,
            windows=(Window(1200.0, 2400.0, "HEART"),),
            body_part_examined="HEART",
            anatomic_region=CodedConcept("80891009", "SCT", "Heart"),
            conditions=("lge",),
            default_condition="lge",
            model_id="mr-cardiac",
            study_description="MR HEART (SYNTHETIC)",
            series_description="Synthetic LGE",
        ),
        Preset(
            name="xr-chest",
            description="Frontal (PA/AP) chest radiograph, paediatric; normal or pneumonia.",
            modality=Modality.DX,
            sop_class=SOPClass.DX_IMAGE_FOR_PRESENTATION,
            matrix=(32, 32),
            pixel_spacing_mm=(10.0, 10.0),
            slice_thickness_mm=0.0,
            intensity=_DX_INTENSITY,
            windows=(Window(2048.0, 4096.0, "FULL RANGE"),),
            body_part_examined="CHEST",
            anatomic_region=CodedConcept("51185008", "SCT", "Thorax"),
            conditions=("normal", "pneumonia"),
            default_condition="normal",
            model_id="xr-chest",
            study_description="XR CHEST (SYNTHETIC)",
            series_description="Synthetic chest PA",
            is_volume=False,
        ),
        Preset(
            name="micro-malaria",
            description="Thin blood-smear red cell (Giemsa, light microscopy), RGB; parasitized or uninfected.",
            modality=Modality.GM,
            sop_class=SOPClass.VL_MICROSCOPIC_IMAGE,
            matrix=(64, 64),
            pixel_spacing_mm=(0.00012, 0.00012),  # nominal: each cell is scaled to fit the matrix
            slice_thickness_mm=0.0,
            intensity=IntensityMapping(physical_low=0.0, physical_high=255.0, unit="US", bits_stored=8),
            windows=(Window(127.5, 255.0, "FULL RANGE"),),
            body_part_examined="BLOOD",
            anatomic_region=CodedConcept("87612001", "SCT", "Blood"),
            conditions=("parasitized", "uninfected"),
            default_condition="uninfected",
            model_id="micro-malaria",
            study_description="BLOOD SMEAR (SYNTHETIC)",
            series_description="Synthetic thin-smear cell",
            is_volume=False,
            samples_per_pixel=3,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown modality preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
