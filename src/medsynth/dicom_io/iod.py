"""IOD modules per modality, declared as data: anatomy per condition, MR sequences per contrast,
the CT Image, MR Image and DX modules, and the descriptions that follow from them.

Headers must agree with the pixels: a ``ct-pelvis`` pack sampled with ``--condition chest`` is a
chest (BodyPartExamined CHEST, Thorax, "CT CHEST"); an ``mr-brain`` FLAIR series says FLAIR with
an inversion-recovery ScanningSequence and a plausible TR/TE/TI; a DX For Presentation image with
bone white (MONOCHROME2, higher value = less X-ray intensity) has PixelIntensityRelationshipSign
-1. Series are placed at a plausible table position for their body region (LPS z of the centre).

For a real scan converted by ``to-dicom`` (no condition) nothing about the acquisition is known:
MR keeps ScanningSequence RM with empty type-2 acquisition parameters rather than invented ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.provenance import PixelOrigin, code_item
from medsynth.presets import CodedConcept, Modality, Preset

PA_VIEW = CodedConcept("399348003", "SCT", "postero-anterior")


@dataclass(frozen=True)
class Anatomy:
    """A body region: BodyPartExamined, AnatomicRegionSequence code, the word used in descriptions,
    the LPS z (mm) of a series centred on it (a plausible table position), and whether it is the head."""

    body_part: str
    region: CodedConcept
    label: str
    centre_z_mm: float
    head: bool = False


ANATOMY: dict[str, Anatomy] = {
    "pelvis": Anatomy("PELVIS", CodedConcept("12921003", "SCT", "Pelvis"), "pelvis", -180.0),
    "abdomen": Anatomy("ABDOMEN", CodedConcept("818981001", "SCT", "Abdomen"), "abdomen", -40.0),
    "chest": Anatomy("CHEST", CodedConcept("51185008", "SCT", "Thorax"), "chest", 140.0),
    "heart": Anatomy("HEART", CodedConcept("80891009", "SCT", "Heart"), "heart", 110.0),
    "brain": Anatomy("BRAIN", CodedConcept("12738006", "SCT", "Brain"), "brain", 480.0, head=True),
}


@dataclass(frozen=True)
class MrSequence:
    """MR acquisition attributes of one contrast (times in ms, flip angle in degrees)."""

    label: str  # for descriptions, e.g. "T2 FLAIR"
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition_type: str  # 2D / 3D
    sequence_name: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    contrast_agent: str = ""
    trigger_time: float | None = None  # ms after the R wave (ECG-gated, ScanOptions CG)


#: MR sequences per condition (plausible 1.5-3 T parameters)
MR_SEQUENCES: dict[str, MrSequence] = {
    "t1": MrSequence("T1", ("SE",), ("SK",), (), "2D", "se2d1", 500.0, 12.0, None, 90.0, 1),
    "t2": MrSequence("T2", ("SE",), ("SK", "SP"), (), "2D", "tse2d1_16", 4500.0, 100.0, None, 150.0, 16),
    "flair": MrSequence("T2 FLAIR", ("SE", "IR"), ("SK", "SP", "MP"), (), "2D", "tir2d1_21", 9000.0, 120.0,
                        2500.0, 150.0, 21),
    "t1c": MrSequence("T1 post-contrast", ("SE",), ("SK",), (), "2D", "se2d1", 500.0, 12.0, None, 90.0, 1,
                      contrast_agent="GADOLINIUM"),
    "lge": MrSequence("LGE", ("GR", "IR"), ("SP", "MP", "OSP"), ("CG",), "3D", "tfl3d1", 4.8, 1.9, 300.0, 20.0, 1,
                      contrast_agent="GADOLINIUM", trigger_time=400.0),
}

_PRESET_ANATOMY = {"PELVIS": "pelvis", "ABDOMEN": "abdomen", "CHEST": "chest", "HEART": "heart", "BRAIN": "brain"}


def anatomy_for(preset: Preset, condition: str | None) -> Anatomy:
    """The body region shown: the condition's when it names one (CT pelvis/abdomen/chest), else the preset's."""
    if condition is not None and condition in ANATOMY and condition in preset.conditions:
        return ANATOMY[condition]
    key = _PRESET_ANATOMY.get(preset.body_part_examined)
    if key is not None:
        return ANATOMY[key]
    return Anatomy(preset.body_part_examined, preset.anatomic_region, preset.body_part_examined.lower(), 0.0)


def mr_sequence_for(preset: Preset, condition: str | None) -> MrSequence | None:
    """The MR sequence of the condition, or None (not MR, or unknown: a real scan's)."""
    if preset.modality is not Modality.MR or condition is None or condition not in preset.conditions:
        return None
    return MR_SEQUENCES.get(condition)


def table_centre(preset: Preset, condition: str | None) -> tuple[float, float, float]:
    """LPS centre (mm) of a generated series of the region: a plausible table position, so that
    pelvis, abdomen, chest and head series do not all sit at z = 0."""
    return (0.0, 0.0, anatomy_for(preset, condition).centre_z_mm if preset.is_volume else 0.0)


@dataclass(frozen=True)
class Descriptions:
    """StudyDescription, SeriesDescription and ProtocolName (each within its VR's length)."""

    study: str
    series: str
    protocol: str


def describe(preset: Preset, condition: str | None, origin: PixelOrigin, series_index: int,
             series_per_study: int) -> Descriptions:
    """Descriptions that say what the series is: modality, region, contrast, synthetic or not, and its
    number when a study holds several series."""
    anatomy = anatomy_for(preset, condition)
    seq = mr_sequence_for(preset, condition)
    mod = "XR" if preset.modality is Modality.DX else preset.modality.value
    region = anatomy.label
    if preset.modality is Modality.DX:
        what = f"{region} PA"
    elif preset.modality is Modality.GM:
        what = f"thin-smear cell{f' ({condition})' if condition else ''}"
        region = "blood smear" if region == "blood" else region
    elif seq is not None:
        what = f"axial {seq.label} {region}" if seq.acquisition_type == "2D" else f"{seq.label} {region}"
    else:
        what = f"axial {region}"
    synthetic = origin.synthetic
    series = f"{'Synthetic' if synthetic else 'De-identified'} {what}"
    if series_per_study > 1:
        series += f" #{series_index + 1}"
    study = f"{mod} {region.upper()}" + (" (SYNTHETIC)" if synthetic else "")
    protocol = f"{mod} {region.upper()} {seq.label.upper() if seq else ''}".strip()
    return Descriptions(study=study[:64], series=series[:64], protocol=protocol[:64])


def ds_string(value: float) -> str:
    """A DS string (≤ 16 characters) for ``value``."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}"
    return text


def is_axial(geometry: VolumeGeometry, tolerance: float = 0.9) -> bool:
    """True when the slice normal is within ~25° of the patient's head-feet axis."""
    return abs(geometry.slice_normal[2]) >= tolerance


def add_ct_module(ds: Dataset, geometry: VolumeGeometry, rescale_intercept: float, rescale_slope: float) -> None:
    """CT Image module (ImageType value 3 AXIAL only for axial slices)."""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if is_axial(geometry) else "OTHER"]
    ds.RescaleIntercept = ds_string(rescale_intercept)
    ds.RescaleSlope = ds_string(rescale_slope)
    ds.RescaleType = "HU"
    ds.KVP = ""


def add_mr_module(ds: Dataset, seq: MrSequence | None) -> None:
    """MR Image module; with a sequence its acquisition attributes, without one (a real scan of
    unknown acquisition) research mode and empty type-2 parameters. Contrast agent → Contrast/Bolus."""
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.ImagedNucleus = "1H"
    if seq is None:
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        return
    ds.ScanningSequence = list(seq.scanning_sequence) if len(seq.scanning_sequence) > 1 else seq.scanning_sequence[0]
    ds.SequenceVariant = list(seq.sequence_variant) if len(seq.sequence_variant) > 1 else seq.sequence_variant[0]
    ds.ScanOptions = list(seq.scan_options) if len(seq.scan_options) > 1 else (seq.scan_options or ("",))[0]
    ds.MRAcquisitionType = seq.acquisition_type
    ds.SequenceName = seq.sequence_name
    ds.RepetitionTime = ds_string(seq.repetition_time)
    ds.EchoTime = ds_string(seq.echo_time)
    if seq.inversion_time is not None:
        ds.InversionTime = ds_string(seq.inversion_time)
    ds.EchoTrainLength = seq.echo_train_length
    ds.FlipAngle = ds_string(seq.flip_angle)
    if seq.trigger_time is not None:
        ds.TriggerTime = ds_string(seq.trigger_time)
    if seq.contrast_agent:
        ds.ContrastBolusAgent = seq.contrast_agent


def add_dx_modules(ds: Dataset, row_spacing: float, col_spacing: float, origin: PixelOrigin) -> None:
    """DX Series/Anatomy/Image/Detector/Positioning modules for a For Presentation PA chest image.

    Stored values are bone white (MONOCHROME2, IDENTITY presentation LUT): a higher value means less
    X-ray intensity reached the detector, hence PixelIntensityRelationshipSign -1.
    """
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImagerPixelSpacing = [ds_string(row_spacing), ds_string(col_spacing)]
    ds.PixelSpacing = [ds_string(row_spacing), ds_string(col_spacing)]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = ("synthetic image: nominal spacing of the model" if origin.synthetic
                                             else "nominal spacing of the input image")
    ds.ViewCodeSequence = Sequence([code_item(PA_VIEW)])
    ds.PositionerType = ""
    ds.DetectorType = ""
    ds.KVP = ""
    ds.AcquisitionContextSequence = Sequence([])
