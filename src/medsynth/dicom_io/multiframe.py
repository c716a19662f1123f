"""Enhanced multi-frame output: each CT or MR series as ONE Legacy Converted Enhanced CT/MR Image.

``generate --multiframe`` (and ``multiframe = true`` in a cohort file) writes each CT/MR series as
one instance of Legacy Converted Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.2) or MR
Image Storage (1.2.840.10008.5.1.4.1.1.4.4), PS3.3 A.70/A.71, instead of one file per slice. The
object is built with pydicom alone (highdicom is a test dependency only; its
``highdicom.legacy`` converter is the reference the tests compare with) from the series template
the single-frame writer makes, so every header the single-frame files carry is kept:

* top level: patient, study, series, equipment, Frame of Reference, SOP Common, SyntheticData YES,
  Contributing Equipment (109100 Synthesizing Equipment), de-identification and burned-in
  attributes, the private provenance block, Image Pixel (frames ``[n, rows, cols]``);
* shared functional groups: Pixel Measures, Plane Orientation, Frame VOI LUT, Pixel Value
  Transformation, Frame Anatomy and Unassigned Shared Converted Attributes (everything of the
  single-frame header no other place takes: technique, kernels, MR sequence, stations);
* per frame: Frame Content (stack and in-stack position, the dimension index), Plane Position
  (Patient) — each frame's ImagePositionPatient, so headers and pixels agree —, Unassigned Per-Frame
  Converted Attributes (the slice's InstanceNumber and SliceLocation) and Conversion Source: the
  single-frame instance the same command without ``--multiframe`` writes for that slice.

UIDs: ``multiframe`` is part of the writer's namespace facts (as lossy compression is), so the
series, instance, identities and dates are those of another run; the Conversion Source references
are the UIDs of the single-frame run of the same options (see :class:`MultiFrameWriter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from medsynth.dicom_io.fileset import FileRecord, file_meta
from medsynth.dicom_io.iod import ds_string
from medsynth.dicom_io.transfer_syntax import encode_instance
from medsynth.dicom_io.uids import UidFactory, run_namespace
from medsynth.dicom_io.writer import SyntheticStudyWriter
from medsynth.errors import ConfigError, DicomWriteError
from medsynth.outputs import atomic_write
from medsynth.presets import Modality, Preset

#: Legacy Converted Enhanced CT / MR Image Storage
LEGACY_CT = UID("1.2.840.10008.5.1.4.1.1.2.2")
LEGACY_MR = UID("1.2.840.10008.5.1.4.1.1.4.4")
#: the value of the ``multiframe`` namespace fact and manifest entry
KIND = "legacy-converted-enhanced"

#: kept at the top level (the modules of the Legacy Converted Enhanced CT/MR IODs)
_TOP = frozenset({
    # SOP Common, Synthetic Data, Contributing Equipment
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime",
    "SyntheticData", "ContributingEquipmentSequence", "ContentQualification",
    # Patient, Patient Study, General Study (de-identification attributes included)
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
    # General Series, Enhanced/General Equipment
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDate", "SeriesTime", "SeriesDescription",
    "ProtocolName", "BodyPartExamined", "PatientPosition", "OperatorsName", "PerformingPhysicianName",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber", "InstitutionName",
    "InstitutionAddress", "StationName", "InstitutionalDepartmentName",
    # Frame of Reference
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    # Legacy Converted Enhanced Image, Multi-frame Functional Groups, Image Pixel
    "ImageType", "AcquisitionNumber", "ContentDate", "ContentTime", "BurnedInAnnotation",
    "RecognizableVisualFeatures", "LongitudinalTemporalInformationModified", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
})
#: moved into their functional groups (or made per frame)
_MOVED = frozenset({
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImageOrientationPatient", "WindowCenter",
    "WindowWidth", "WindowCenterWidthExplanation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "AnatomicRegionSequence", "ImagePositionPatient", "SliceLocation", "InstanceNumber",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelData",
})


def multiframe_sop_class(preset: Preset) -> UID:
    """The Legacy Converted Enhanced SOP class of a CT or MR preset (ConfigError for others)."""
    if preset.modality is Modality.CT:
        return LEGACY_CT
    if preset.modality is Modality.MR:
        return LEGACY_MR
    raise ConfigError(f"--multiframe is for CT and MR presets; {preset.name} is {preset.modality.value} "
                      "(written one image per file)")


@dataclass(frozen=True)
class Frame:
    """One frame: its stored pixels ``[rows, cols]`` (the series' encoding), ImagePositionPatient
    (LPS, mm; None for images without a plane), SliceLocation (mm), the single-frame
    InstanceNumber and the SOP Instance UID of the single-frame instance it converts."""

    stored: npt.NDArray[Any]
    position: tuple[float, float, float] | None
    slice_location: float | None
    instance_number: int
    source_uid: UID


def _item(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _copy(template: Dataset, keywords: tuple[str, ...]) -> Dataset:
    ds = Dataset()
    for keyword in keywords:
        if keyword in template:
            ds[keyword] = template[keyword]
    return ds


def legacy_converted(template: Dataset, frames: list[Frame], sop_class: UID, sop_uid: UID,
                     source_class: str, thickness_mm: float | None = None) -> Dataset:
    """The Legacy Converted Enhanced CT/MR Image (without file meta) of ``frames`` in frame order,
    from the single-frame series ``template`` (every attribute its instances share; see the
    module docstring for where each goes). ``source_class``: the SOP class of the single-frame
    instances referenced by Conversion Source; ``thickness_mm``: the Slice Thickness of Pixel Measures
    when the template has none (a localizer: the thickness of the slab it projects, Type 1C there)."""
    if not frames:
        raise DicomWriteError("a multi-frame object needs at least one frame")
    ds = Dataset()
    unassigned = Dataset()
    for elem in template:
        keyword = elem.keyword
        if keyword in _TOP or (elem.tag.group == 0x0011):  # the private provenance block stays on top
            ds[elem.tag] = elem
        elif keyword not in _MOVED:
            unassigned[elem.tag] = elem
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(frames)
    # Image Type / Frame Type: value 2 of an enhanced image is PRIMARY only (C.8.16.1.2); DERIVED stays
    image_type = [*list(template.ImageType)[:3], "NONE", "NONE"][:4]
    image_type[1] = "PRIMARY"
    ds.ImageType = image_type
    frame_type = _item(FrameType=image_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                       VolumeBasedCalculationTechnique="NONE")
    for keyword in ("PixelPresentation", "VolumetricProperties", "VolumeBasedCalculationTechnique"):
        setattr(ds, keyword, frame_type[keyword].value)
    ds.PresentationLUTShape = "IDENTITY"
    if "ContentQualification" not in ds:
        ds.ContentQualification = "RESEARCH"
    ds.AcquisitionContextSequence = Sequence()

    # the referenced single-frame instances (Common Instance Reference)
    ref = _item(SeriesInstanceUID=template.SeriesInstanceUID, ReferencedInstanceSequence=Sequence(
        [_item(ReferencedSOPClassUID=source_class, ReferencedSOPInstanceUID=f.source_uid) for f in frames]))
    ds.ReferencedSeriesSequence = Sequence([ref])

    # dimensions: the stack (one) and the in-stack position, i.e. the frame's plane position
    organisation = UID(template.SeriesInstanceUID) if "SeriesInstanceUID" in template else UID("1.2.3")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=organisation)])
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=organisation, DimensionIndexPointer=Tag("InStackPositionNumber"),
              FunctionalGroupPointer=Tag("FrameContentSequence"), DimensionDescriptionLabel="In-Stack Position"),
    ])

    shared = Dataset()
    if sop_class == LEGACY_CT:
        shared.CTImageFrameTypeSequence = Sequence([frame_type])
    else:
        shared.MRImageFrameTypeSequence = Sequence([frame_type])
    measures = _copy(template, ("SliceThickness", "SpacingBetweenSlices", "PixelSpacing"))
    if not measures.get("SliceThickness") and thickness_mm is not None:
        measures.SliceThickness = ds_string(thickness_mm)
    shared.PixelMeasuresSequence = Sequence([measures])
    if "ImageOrientationPatient" in template:
        shared.PlaneOrientationSequence = Sequence([_copy(template, ("ImageOrientationPatient",))])
    if "WindowCenter" in template:
        shared.FrameVOILUTSequence = Sequence([_copy(template, ("WindowCenter", "WindowWidth",
                                                                  "WindowCenterWidthExplanation"))])
    if "RescaleIntercept" in template:
        pvt = _copy(template, ("RescaleIntercept", "RescaleSlope", "RescaleType"))
    else:
        pvt = _item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")
    if "RescaleType" not in pvt:
        pvt.RescaleType = "HU" if template.get("Modality") == "CT" else "US"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    if "AnatomicRegionSequence" in template:
        shared.FrameAnatomySequence = Sequence([_item(AnatomicRegionSequence=template.AnatomicRegionSequence,
                                                      FrameLaterality="U")])
    shared.UnassignedSharedConvertedAttributesSequence = Sequence([unassigned])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for k, f in enumerate(frames):
        item = Dataset()
        item.FrameContentSequence = Sequence([_item(StackID="1", InStackPositionNumber=k + 1,
                                                    DimensionIndexValues=[k + 1])])
        if f.position is not None:
            item.PlanePositionSequence = Sequence([_item(ImagePositionPatient=[ds_string(v) for v in f.position])])
        frame_attrs = _item(InstanceNumber=f.instance_number)
        if f.slice_location is not None:
            frame_attrs.SliceLocation = ds_string(f.slice_location)
        item.UnassignedPerFrameConvertedAttributesSequence = Sequence([frame_attrs])
        item.ConversionSourceAttributesSequence = Sequence([_item(ReferencedSOPClassUID=source_class,
                                                                  ReferencedSOPInstanceUID=f.source_uid)])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    stored = np.stack([f.stored for f in frames])
    vr = "SS" if int(template.PixelRepresentation) == 1 else "US"
    ds.add_new(0x00280106, vr, int(stored.min()))  # SmallestImagePixelValue
    ds.add_new(0x00280107, vr, int(stored.max()))  # LargestImagePixelValue
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if int(template.BitsAllocated) > 8 else "OB"
    return ds


class MultiFrameWriter(SyntheticStudyWriter):
    """A :class:`~medsynth.dicom_io.writer.SyntheticStudyWriter` that writes each series as one
    Legacy Converted Enhanced CT/MR object (``IM000000`` of the series folder) when the next
    series begins or the writer finishes; the frames are held in memory until then (one series).

    Cooperative: ``class MultiFrameStudyWriter(MultiFrameWriter, StudyWriter)`` gives the cohort's
    study writer the same output. The manifest says ``"multiframe": "legacy-converted-enhanced"``
    and the multi-frame SOP class; the file records and the DICOMDIR list one instance per series.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._frames: list[Frame] = []
        self._base_facts: dict[str, Any] = {}
        super().__init__(*args, **kwargs)
        self._sop_class = multiframe_sop_class(self.preset)
        if self.preset.samples_per_pixel != 1:
            raise ConfigError(f"--multiframe: {self.preset.name} is not a grey-level preset")
        # the single-frame run of the same options: its instance UIDs are the conversion sources
        base = run_namespace(self._base_facts, reproducible=self.options.seed is not None)
        self._sources = UidFactory(self.options.uid_root, self.options.seed, base)
        self.manifest_extra.update({"multiframe": KIND, "sop_class_uid": str(self._sop_class)})

    def _namespace_facts(self) -> dict[str, Any]:
        facts = super()._namespace_facts()
        self._base_facts = dict(facts)
        return {**facts, "multiframe": KIND}

    def begin_series(self, *args: Any, **kwargs: Any) -> Any:
        self._flush()
        slot = super().begin_series(*args, **kwargs)
        assert self._current is not None
        self._current.template.SOPClassUID = self._sop_class  # what the DICOMDIR record names
        return slot

    def write_slice(self, index: int, pixels: npt.ArrayLike) -> FileRecord:  # type: ignore[override]
        """Hold slice ``index`` of the current series as a frame (see the base class for ``pixels``);
        the series is written as one object later. Returns the series' record to be (path, UIDs)."""
        series, stored = self._encode_slice(index, pixels)
        series.written.add(index)
        slot = series.slot
        position = location = None
        if self.preset.modality is not Modality.DX:
            pos = series.geometry.slice_position(index)
            position = (float(pos[0]), float(pos[1]), float(pos[2]))
            location = float(np.dot(pos, series.geometry.slice_normal))
        self._frames.append(Frame(stored=stored, position=position, slice_location=location,
                                  instance_number=index + 1,
                                  source_uid=self._sources.uid("instance", slot.patient, slot.study, slot.series, index)))
        return self._record(series)

    def finish(self) -> dict[str, Any]:
        self._check_open()
        self._flush()
        return super().finish()

    def _record(self, series: Any) -> FileRecord:
        slot = series.slot
        return FileRecord(path=f"{series.rel}/IM000000", patient_id=str(series.template.PatientID),
                          study_instance_uid=str(series.template.StudyInstanceUID),
                          series_instance_uid=str(series.series_uid),
                          sop_instance_uid=str(self._uids.uid("instance", slot.patient, slot.study, slot.series, 0)),
                          sop_class_uid=str(self._sop_class), instance_number=1)

    def _flush(self) -> None:
        """Write the current series' frames (in slice order) as one object and list it."""
        series = self._current
        if series is None or not self._frames:
            return
        from dataclasses import asdict

        frames = sorted(self._frames, key=lambda f: f.instance_number)
        self._frames = []
        record = self._record(series)
        ds = legacy_converted(series.template, frames, self._sop_class, UID(record.sop_instance_uid),
                              self.preset.sop_class.value, thickness_mm=float(series.geometry.spacing[2]))
        ds.file_meta = file_meta(str(self._sop_class), UID(record.sop_instance_uid))
        encode_instance(ds, self.options.transfer_syntax)
        atomic_write(self.out_dir / record.path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
        series.files = 1
        self._files.append(record)
        if self._journal is not None:
            self._journal.add(asdict(record))
