"""VL Microscopic Image modules (PS3.3 A.32.2) for colour light-microscopy images.

A synthetic thin-smear cell is written as **VL Microscopic Image Storage**
(1.2.840.10008.5.1.4.1.1.77.1.2, Modality GM): a single frame without slide coordinates (the
Slide-Coordinates IOD needs a stage position, the Whole Slide IOD a tiled pyramid; a cell crop
has neither). Pixels are RGB, 8 bits, colour-by-pixel (PhotometricInterpretation RGB,
SamplesPerPixel 3, PlanarConfiguration 0). The imaging subject is a specimen, so the Specimen
module is present with a synthetic container and specimen identity (nothing of a real slide).
The VL Image module has no VOI LUT, Frame of Reference or Image Plane: those attributes, which
the shared writer puts on grey images, are removed here.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medsynth.dicom_io.provenance import PixelOrigin, code_item
from medsynth.presets import CodedConcept, Preset

#: SNOMED CT "Microscope slide" (container type of a smear, CID 8101)
MICROSCOPE_SLIDE = CodedConcept("433466003", "SCT", "Microscope slide")

# not in the VL Image IOD (BodyPartExamined has no blood term; AnatomicRegionSequence says Blood)
_NOT_IN_VL_IMAGE = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "PatientPosition",
                    "SmallestImagePixelValue", "LargestImagePixelValue", "BodyPartExamined")


def add_vl_microscopic_modules(ds: Dataset, preset: Preset, specimen_uid: UID, origin: PixelOrigin,
                               condition: str | None) -> None:
    """VL Image, Acquisition Context and Specimen modules; colour Image Pixel attributes.

    ``specimen_uid`` identifies the (synthetic) specimen of the series; the container (slide)
    identifier is derived from it, so it names no real slide.
    """
    for keyword in _NOT_IN_VL_IMAGE:
        if keyword in ds:
            delattr(ds, keyword)
    # VL Image / Image Pixel: RGB, 8 bits, interleaved
    ds.ImageType = ["DERIVED", "SECONDARY"] if origin.synthetic else ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PatientOrientation = ""  # General Image 2C: a smear has no patient orientation (type 2, empty)
    # Acquisition Context (mandatory, type 2: nothing is known of an acquisition)
    ds.AcquisitionContextSequence = Sequence([])
    # Specimen: a synthetic slide holding a synthetic thin-smear specimen
    what = "synthetic " if origin.synthetic else ""
    ds.ContainerIdentifier = f"SYN-{str(specimen_uid)[-12:]}" if origin.synthetic else "UNKNOWN"
    ds.IssuerOfTheContainerIdentifierSequence = Sequence([])
    ds.ContainerTypeCodeSequence = Sequence([code_item(MICROSCOPE_SLIDE)])
    specimen = Dataset()
    specimen.SpecimenIdentifier = ds.ContainerIdentifier
    specimen.SpecimenUID = specimen_uid
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence([])
    short = f"{what}thin blood smear, Giemsa".strip()
    if condition:
        short += f", {condition}"
    specimen.SpecimenShortDescription = short[:64]
    specimen.SpecimenPreparationSequence = Sequence([])
    specimen.PrimaryAnatomicStructureSequence = Sequence([code_item(preset.anatomic_region)])
    ds.SpecimenDescriptionSequence = Sequence([specimen])
