"""Standards-true synthetic DICOM writer: patients → studies → series → single-frame instances.

It writes CT Image Storage, MR Image Storage or Digital X-Ray Image Storage – For Presentation
(whatever the preset says), marks every instance synthetic (SyntheticData = YES, a Contributing
Equipment item "Synthesizing Equipment", ImageType DERIVED\\SECONDARY) and de-identified
(PatientIdentityRemoved = YES, DeidentificationMethodCodeSequence 113100), carries the caller's
provenance in a private block (group 0x0011, creator ``MEDSYNTH 1.0``), and finishes with a
DICOMDIR (pydicom ``FileSet``) and ``manifest.json``.

Streaming use (one slice at a time, memory stays bounded; what ``medsynth generate`` does)::

    from medsynth.presets import get_preset
    from medsynth.dicom_io.geometry import VolumeGeometry
    from medsynth.dicom_io.writer import Provenance, SyntheticStudyWriter, WriterOptions

    preset = get_preset("ct-pelvis")
    options = WriterOptions(patients=2, studies_per_patient=1, series_per_study=1, seed=7)
    prov = Provenance(model_id="ct-body", model_sha256="ab…", seed=7, sampler="ddim", steps=50)
    with SyntheticStudyWriter("out/", preset, options, prov, force=False) as writer:
        for slot in options.slots():                       # SeriesSlot(patient, study, series)
            n = 24
            geom = VolumeGeometry.axial(preset.matrix, preset.pixel_spacing_mm,
                                        preset.slice_thickness_mm, n)
            writer.begin_series(geom, preset.matrix, patient=slot.patient, study=slot.study)
            for k in range(n):
                hu = preset.intensity.to_physical(model_output[k])   # float [rows, cols], HU
                writer.write_slice(k, hu)                          # written to disk now
        manifest = writer.finish()        # DICOMDIR + manifest.json; returns the manifest dict

If the block raises (or Ctrl-C), ``__exit__`` still writes ``manifest.json`` listing the complete
files written so far (``"complete": false``) and no partial file is left behind.

One call for a whole volume (what ``medsynth to-dicom`` does)::

    manifest = write_volume(hu_zyx, geometry, preset, "out/", WriterOptions(seed=1), Provenance())

Pixel arrays are float, in physical units: HU for CT (stored through RescaleIntercept/Slope),
scanner units for MR and detector units for DX (stored directly). Slices are ``[rows, cols]``;
volumes ``[z, y, x]`` as SimpleITK returns them; positions follow :class:`VolumeGeometry` (LPS, mm).

The DICOM IO is split by concept: :mod:`~medsynth.dicom_io.pixel_encoding` (stored values),
:mod:`~medsynth.dicom_io.iod` (CT/MR/DX modules, anatomy and MR sequences as data),
:mod:`~medsynth.dicom_io.provenance` (where the pixels came from, synthetic / de-identification
markers, private block), :mod:`~medsynth.dicom_io.fileset` (layout, file meta, manifest records,
output folder), :mod:`~medsynth.dicom_io.identity` and :mod:`~medsynth.dicom_io.uids`. This module
only orchestrates them; its names are re-exported for existing callers.

Why by hand: highdicom builds enhanced multi-frame and derived objects (SEG, SR, SC) but not
single-frame CT/MR/DX image IODs, so the modules are filled here with pydicom, attribute by
attribute, and the result is checked with ``dciodvfy`` in the tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medsynth import __version__
from medsynth.dicom_io.fileset import (
    DICOMDIR_KEYWORDS,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    FileRecord,
    file_meta,
    prepare_output,
)
from medsynth.dicom_io.geometry import VolumeGeometry, right_handed
from medsynth.dicom_io.identity import (
    IdentityOptions,
    PatientIdentity,
    StudyIdentity,
    age_string,
    make_patient,
    make_study,
    run_entropy,
)
from medsynth.dicom_io.iod import (
    add_ct_module,
    add_dx_modules,
    add_mr_module,
    anatomy_for,
    describe,
    ds_string,
    mr_sequence_for,
)
from medsynth.dicom_io.pixel_encoding import PixelEncoding, fit_volume
from medsynth.dicom_io.provenance import (
    MANUFACTURER,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PRIVATE_TAGS,
    PixelOrigin,
    Provenance,
    add_private_block,
    apply_origin_markers,
    code_item,
    equipment_model_name,
)
from medsynth.dicom_io.transfer_syntax import (
    TransferSyntax,
    check_encoding,
    eight_bit_encoding,
    encode_instance,
)
from medsynth.dicom_io.uids import UidFactory, normalise_root, run_namespace
from medsynth.errors import ConfigError, DicomWriteError, InputError
from medsynth.outputs import (
    RunJournal,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
)
from medsynth.presets import Modality, Preset, Window

__all__ = [
    "MANIFEST_NAME", "PRIVATE_CREATOR", "PRIVATE_GROUP", "PRIVATE_TAGS", "FileRecord", "PixelEncoding", "PixelOrigin",
    "Provenance", "SeriesSlot", "SyntheticStudyWriter", "WriterOptions", "write_volume",
]


# --------------------------------------------------------------------------------------------
# Configuration records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSlot:
    """Indices (0-based) of one series in the run's patient → study → series plan."""

    patient: int
    study: int
    series: int


@dataclass(frozen=True)
class WriterOptions:
    """How many patients/studies/series to write, what they look like, and reproducibility.

    ``slices_per_series`` is a hint for callers that make slices (``generate``); the writer takes
    whatever slices it is given. ``uid_root`` is a UID prefix (default: the 2.25 UUID form);
    ``seed`` makes UIDs, identities and timestamps — hence every output byte — reproducible.
    ``dcm_names`` names files ``IM000000.dcm``; a DICOMDIR cannot reference such names (File IDs
    allow no '.'), so none is written then. ``transfer_syntax``: how each file is encoded (see
    :mod:`~medsynth.dicom_io.transfer_syntax`; JPEG baseline needs 8-bit pixels).
    """

    patients: int = 1
    studies_per_patient: int = 1
    series_per_study: int = 1
    slices_per_series: int | None = None
    identity: IdentityOptions = field(default_factory=IdentityOptions)
    uid_root: str | None = None
    seed: int | None = None
    dcm_names: bool = False
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfer_syntax", TransferSyntax.parse(self.transfer_syntax))
        for name in ("patients", "studies_per_patient", "series_per_study"):
            value = getattr(self, name)
            if not 1 <= value <= 10000:
                raise ConfigError(f"{name.replace('_', ' ')} must be between 1 and 10000, got {value}")
        if self.slices_per_series is not None and not 1 <= self.slices_per_series <= 100000:
            raise ConfigError(f"slices per series must be between 1 and 100000, got {self.slices_per_series}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        normalise_root(self.uid_root)

    def slots(self) -> Iterator[SeriesSlot]:
        """Every series of the plan, patient-major."""
        for p in range(self.patients):
            for s in range(self.studies_per_patient):
                for e in range(self.series_per_study):
                    yield SeriesSlot(p, s, e)

    @property
    def n_series(self) -> int:
        """patients × studies per patient × series per study."""
        return self.patients * self.studies_per_patient * self.series_per_study


# --------------------------------------------------------------------------------------------
# Manifest records
# --------------------------------------------------------------------------------------------


@dataclass
class _Series:
    slot: SeriesSlot
    dir: Path
    rel: str
    series_uid: UID
    frame_uid: UID
    number: int
    geometry: VolumeGeometry
    matrix: tuple[int, int]
    encoding: PixelEncoding
    template: Dataset
    written: set[int] = field(default_factory=set)
    files: int = 0
    clipped: int = 0
    description: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "patient": self.slot.patient,
            "study": self.slot.study,
            "series": self.slot.series,
            "path": self.rel,
            "series_instance_uid": str(self.series_uid),
            "frame_of_reference_uid": str(self.frame_uid),
            "series_number": self.number,
            "description": self.description,
            "instances": self.files,
            "rows": self.matrix[0],
            "columns": self.matrix[1],
            "spacing_mm": list(self.geometry.spacing),
            "encoding": asdict(self.encoding),
            "clipped_pixels": self.clipped,
        }


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.time) -> str:
    return t.strftime("%H%M%S")


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


class SyntheticStudyWriter:
    """Streams slices into a synthetic DICOM file-set under ``out_dir``.

    Call :meth:`begin_series` for each series (any order of patients/studies within the plan of
    ``options``), then :meth:`write_slice` for each of its slices (each file is written to a
    temporary name and renamed at once), then :meth:`finish`. Use it as a context manager so that
    an exception or Ctrl-C still leaves a manifest of the complete files and no partial file.

    Layout: ``PTpppppp/STssssss/SEeeeeee/IMiiiiii`` (File IDs that a DICOMDIR can reference),
    ``DICOMDIR`` and ``manifest.json`` at the top.
    """

    def __init__(self, out_dir: str | Path, preset: Preset, options: WriterOptions | None = None,
                 provenance: Provenance | None = None, force: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.preset = preset
        self.options = options or WriterOptions()
        self.provenance = provenance or Provenance()
        self.force = force
        self.namespace = run_namespace(self._namespace_facts(), reproducible=self.options.seed is not None)
        self._uids = UidFactory(self.options.uid_root, self.options.seed, self.namespace)
        self._entropy = run_entropy(self.options.seed, self.namespace)
        self._files: list[FileRecord] = []
        self._series: list[_Series] = []
        self._current: _Series | None = None
        self._patients: dict[int, tuple[PatientIdentity, UID, int]] = {}  # index -> (id, -, dir idx)
        self._studies: dict[tuple[int, int], tuple[StudyIdentity, UID, int, int]] = {}
        self._series_count: dict[tuple[int, int], int] = {}
        self._slot_used: set[SeriesSlot] = set()
        self._finished = False
        self._manifest: dict[str, Any] | None = None
        self._now = dt.datetime.now().replace(microsecond=0)
        #: extra JSON-ready entries the caller wants in the manifest (e.g. an intensity rescale)
        self.manifest_extra: dict[str, Any] = {}
        prepare_output(self.out_dir, force)
        self._journal: RunJournal | None = None  # started with the first series (manifest_extra is set by then)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> SyntheticStudyWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._finished:
            return
        if exc_type is None:
            self.finish()
        else:
            self._write_manifest(complete=False, error=exc_type.__name__)

    # -- public API -------------------------------------------------------------------------
    @property
    def files(self) -> list[FileRecord]:
        """The complete files written so far."""
        return list(self._files)

    def begin_series(self, geometry: VolumeGeometry, matrix: tuple[int, int], *, patient: int = 0,
                     study: int = 0, description: str | None = None,
                     encoding: PixelEncoding | None = None,
                     windows: tuple[Window, ...] | None = None) -> SeriesSlot:
        """Start a new series of ``patient``/``study`` (0-based, within the options' plan).

        ``geometry`` places slice ``k`` at ``geometry.slice_position(k)`` (LPS, mm) with
        ``geometry.spacing`` (column, row, slice spacing in mm); ``matrix`` is (rows, columns).
        ``encoding`` defaults to the preset's (values outside it are clipped and counted in the
        manifest); ``windows`` to the preset's. Returns the series' slot.
        """
        self._check_open()
        if not 0 <= patient < self.options.patients:
            raise ConfigError(f"patient index {patient} outside 0..{self.options.patients - 1}")
        if not 0 <= study < self.options.studies_per_patient:
            raise ConfigError(f"study index {study} outside 0..{self.options.studies_per_patient - 1}")
        rows, cols = (int(v) for v in matrix)
        if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
            raise InputError(f"image matrix {matrix} must be 1..65535 pixels each way")
        series_index = self._series_count.get((patient, study), 0)
        if series_index >= self.options.series_per_study:
            raise ConfigError(
                f"patient {patient} study {study} already has {series_index} series "
                f"(series per study = {self.options.series_per_study})")
        self._series_count[(patient, study)] = series_index + 1
        slot = SeriesSlot(patient, study, series_index)

        pat, pat_dir = self._patient(patient)
        stu, study_uid, stu_dir = self._study(patient, study)
        rel = f"PT{pat_dir:06d}/ST{stu_dir:06d}/SE{series_index:06d}"
        enc = encoding or PixelEncoding.for_preset(self.preset)
        check_encoding(self.options.transfer_syntax, enc, f"{self.preset.name} pixels")
        if self.preset.samples_per_pixel > 1 and self.options.transfer_syntax is not TransferSyntax.EXPLICIT:
            raise ConfigError(f"{self.preset.name} (RGB) is written with --transfer-syntax explicit only")
        desc = description or describe(self.preset, self.provenance.condition, self.provenance.pixel_origin,
                                       series_index, self.options.series_per_study).series
        series = _Series(
            slot=slot, dir=self.out_dir / rel, rel=rel,
            series_uid=self._uids.uid("series", patient, study, series_index),
            # one patient coordinate system per study: its series share a Frame of Reference
            frame_uid=self._uids.uid("frame", patient, study),
            number=series_index + 1, geometry=geometry, matrix=(rows, cols), encoding=enc,
            template=Dataset(), description=desc,
        )
        series.template = self._series_template(series, pat, stu, study_uid, windows or self.preset.windows)
        if self._journal is None:
            self._journal = RunJournal(self.out_dir, self._manifest_head(complete=False))
        series.dir.mkdir(parents=True, exist_ok=True)
        self._series.append(series)
        self._current = series
        return slot

    def write_slice(self, index: int, pixels: npt.ArrayLike) -> FileRecord:
        """Write slice ``index`` (0-based position along the slice normal) of the current series.

        ``pixels``: 2D float array ``[rows, cols]`` in physical units (HU for CT). Raises
        InputError for a wrong shape or non-finite values; the file is complete on return.
        """
        series, stored = self._encode_slice(index, pixels)

        ds = Dataset(dict(series.template.items()))  # shallow: template elements are never modified
        sop_uid = self._uids.uid("instance", series.slot.patient, series.slot.study, series.slot.series, index)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        if self.preset.modality not in (Modality.DX, Modality.GM):
            pos = series.geometry.slice_position(index)
            ds.ImagePositionPatient = [ds_string(v) for v in pos]
            ds.SliceLocation = ds_string(float(np.dot(pos, series.geometry.slice_normal)))
        lo, hi = int(stored.min()), int(stored.max())
        vr = "SS" if series.encoding.signed else "US"
        if self.preset.samples_per_pixel == 1:
            ds.add_new(0x00280106, vr, lo)  # SmallestImagePixelValue
            ds.add_new(0x00280107, vr, hi)  # LargestImagePixelValue
        ds.PixelData = stored.tobytes()

        ds.file_meta = file_meta(self.preset.sop_class.value, sop_uid)
        encode_instance(ds, self.options.transfer_syntax)

        name = f"IM{series.files:06d}" + (".dcm" if self.options.dcm_names else "")
        final = series.dir / name
        atomic_write(final, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
        series.written.add(index)
        series.files += 1
        record = FileRecord(
            path=f"{series.rel}/{name}",
            patient_id=str(ds.PatientID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(series.series_uid),
            sop_instance_uid=str(sop_uid),
            sop_class_uid=self.preset.sop_class.value,
            instance_number=index + 1,
        )
        self._files.append(record)
        if self._journal is not None:
            self._journal.add(asdict(record))
        return record

    def finish(self) -> dict[str, Any]:
        """Write the DICOMDIR and ``manifest.json``; return the manifest (see ``manifest.json``)."""
        self._check_open()
        if self._files and not self.options.dcm_names:
            self._write_dicomdir()
        return self._write_manifest(complete=True)

    # -- internals --------------------------------------------------------------------------
    def _namespace_facts(self) -> dict[str, Any]:
        """What names this run's UIDs and identities: preset, provenance (pack identity, model and
        input hashes, sampler settings, condition) and the options (plan, identity, UID root)."""
        o = self.options
        facts: dict[str, Any] = {
            "preset": self.preset.name,
            "provenance": self.provenance.to_json(),
            "plan": [o.patients, o.studies_per_patient, o.series_per_study, o.slices_per_series],
            "identity": asdict(o.identity),
            "uid_root": normalise_root(o.uid_root),
        }
        if o.transfer_syntax.lossy:
            # lossy pixels are other instances (new UIDs); a lossless syntax keeps the same instance
            facts["lossy_compression"] = o.transfer_syntax.value
        return facts

    def _encode_slice(self, index: int, pixels: npt.ArrayLike) -> tuple[_Series, npt.NDArray[Any]]:
        """Validate slice ``index`` of the open series (shape, real finite values, a new index in
        range) and encode it: (the series, the stored pixels). Shared by every writer subclass."""
        self._check_open()
        series = self._current
        if series is None:
            raise DicomWriteError("write_slice() called before begin_series()")
        arr = np.asarray(pixels)
        expected = series.matrix if self.preset.samples_per_pixel == 1 else (*series.matrix, 3)  # RGB [rows, cols, 3]
        if arr.shape != expected:
            raise InputError(f"slice {index} has shape {arr.shape}, expected {expected}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"slice {index} is not a real-valued numeric array (dtype {arr.dtype})")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"slice {index} contains NaN or infinite values")
        if not 0 <= index < 100000 or index in series.written:
            raise InputError(f"slice index {index} is out of range or was already written")
        stored, clipped = series.encoding.encode(arr)
        series.clipped += clipped
        return series, stored

    def _check_open(self) -> None:
        if self._finished:
            raise DicomWriteError("the writer is already finished")

    def _patient(self, index: int) -> tuple[PatientIdentity, int]:
        if index not in self._patients:
            ident = make_patient(self.options.identity, self._entropy, index, self.options.studies_per_patient)
            # the folder is named by the global patient index (a --shard run writes PT000001 for patient 1)
            self._patients[index] = (ident, self._uids.uid("patient", index), index)
        ident, _, dir_idx = self._patients[index]
        return ident, dir_idx

    def _study(self, patient: int, index: int) -> tuple[StudyIdentity, UID, int]:
        key = (patient, index)
        if key not in self._studies:
            ident = make_study(self.options.identity, self._entropy, self._patient(patient)[0], patient, index)
            n = sum(1 for (p, _) in self._studies if p == patient)
            self._studies[key] = (ident, self._uids.uid("study", patient, index), n, 0)
        ident, uid, dir_idx, _ = self._studies[key]
        return ident, uid, dir_idx

    def _timestamp(self, study: StudyIdentity) -> dt.datetime:
        """Creation time: fixed from the study when seeded (reproducible), else now."""
        if self.options.seed is not None:
            return dt.datetime.combine(study.date, study.time) + dt.timedelta(minutes=30)
        return self._now

    def _series_template(self, series: _Series, pat: PatientIdentity, stu: StudyIdentity, study_uid: UID,
                         windows: tuple[Window, ...]) -> Dataset:
        """Every attribute shared by the series' instances (per-slice ones are added later)."""
        p = self.preset
        prov = self.provenance
        created = self._timestamp(stu)
        geom = series.geometry
        rows, cols = series.matrix
        enc = series.encoding
        ds = Dataset()

        # SOP Common
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = UID(p.sop_class.value)
        ds.InstanceCreationDate = created.strftime("%Y%m%d")
        ds.InstanceCreationTime = created.strftime("%H%M%S")

        # Patient (synthetic identity)
        ds.PatientName = pat.name
        ds.PatientID = pat.patient_id
        ds.IssuerOfPatientID = MANUFACTURER
        ds.PatientBirthDate = _da(pat.birth_date)
        ds.PatientSex = pat.sex

        # General Study / Patient Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = _da(stu.date)
        ds.StudyTime = _tm(stu.time)
        ds.ReferringPhysicianName = ""
        ds.StudyID = stu.study_id
        ds.AccessionNumber = stu.accession
        anatomy = anatomy_for(p, prov.condition)
        text = describe(p, prov.condition, prov.pixel_origin, series.slot.series, self.options.series_per_study)
        ds.StudyDescription = text.study
        ds.PatientAge = age_string(stu.age_years)

        # General Series
        ds.Modality = p.modality.value
        ds.SeriesInstanceUID = series.series_uid
        ds.SeriesNumber = series.number
        ds.SeriesDate = _da(stu.date)
        ds.SeriesTime = _tm(stu.time)
        ds.SeriesDescription = series.description[:64]
        ds.BodyPartExamined = anatomy.body_part
        if prov.pixel_origin.synthetic:
            ds.ProtocolName = text.protocol
        if p.modality not in (Modality.DX, Modality.GM):
            ds.PatientPosition = "HFS"

        # General Equipment: medsynth made synthetic pixels; a real scan's scanner is unknown (type 2)
        if prov.pixel_origin.synthetic:
            ds.Manufacturer = MANUFACTURER
            ds.ManufacturerModelName = equipment_model_name(prov)
            ds.SoftwareVersions = prov.software_version
        else:
            ds.Manufacturer = ""

        # General Image / General Reference
        ds.ContentDate = _da(stu.date)
        ds.ContentTime = _tm(stu.time)
        ds.AcquisitionNumber = 1
        ds.LossyImageCompression = "00"
        ds.AnatomicRegionSequence = Sequence([code_item(anatomy.region)])
        # Contributing Equipment, SyntheticData, de-identification, burned-in/recognisable features
        apply_origin_markers(ds, prov, p.modality, head=anatomy.head,
                             created=created.strftime("%Y%m%d%H%M%S"))

        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = enc.bits_allocated
        ds.BitsStored = enc.bits_stored
        ds.HighBit = enc.bits_stored - 1
        ds.PixelRepresentation = 1 if enc.signed else 0

        # VOI LUT: multi-valued windows, in the units after the modality LUT (HU for CT)
        ds.WindowCenter = [ds_string(w.center) for w in windows]
        ds.WindowWidth = [ds_string(w.width) for w in windows]
        ds.WindowCenterWidthExplanation = [w.explanation for w in windows]

        row_sp, col_sp = geom.spacing[1], geom.spacing[0]
        if p.modality is Modality.DX:
            add_dx_modules(ds, row_sp, col_sp, prov.pixel_origin)
        elif p.modality is Modality.GM:  # VL Microscopic Image, RGB
            from medsynth.dicom_io.microscopy import add_vl_microscopic_modules

            specimen = self._uids.uid("specimen", series.slot.patient, series.slot.study, series.slot.series)
            add_vl_microscopic_modules(ds, p, specimen, prov.pixel_origin, prov.condition)
        else:
            # Frame of Reference + Image Plane
            ds.FrameOfReferenceUID = series.frame_uid
            ds.PositionReferenceIndicator = ""
            ds.PixelSpacing = [ds_string(row_sp), ds_string(col_sp)]
            ds.ImageOrientationPatient = [ds_string(v) for v in (*geom.row_cosines, *geom.column_cosines)]
            ds.SliceThickness = ds_string(geom.spacing[2])
            ds.SpacingBetweenSlices = ds_string(geom.spacing[2])
            if p.modality is Modality.CT:
                add_ct_module(ds, geom, enc.rescale_intercept, enc.rescale_slope)
            else:
                add_mr_module(ds, mr_sequence_for(p, prov.condition))

        add_private_block(ds, prov)
        return ds

    def _write_dicomdir(self) -> None:
        """Write DICOMDIR (records by pydicom's FileSet record definitions, see ``dicomdir.py``).

        The records are built from small in-memory stand-ins of each instance (the series
        template's patient/study/series attributes plus the instance's UID and number), so no
        image file is read back or copied.
        """
        from medsynth.dicom_io.dicomdir import DirEntry, build_dicomdir

        by_uid = {str(s.series_uid): s for s in self._series}
        entries = []
        for rec in self._files:
            template = by_uid[rec.series_instance_uid].template
            stub = Dataset()
            for keyword in DICOMDIR_KEYWORDS:
                if keyword in template:
                    stub[keyword] = template[keyword]
            stub.SOPInstanceUID = UID(rec.sop_instance_uid)
            stub.InstanceNumber = rec.instance_number
            entries.append(DirEntry(stub, tuple(rec.path.split("/")), self.options.transfer_syntax.uid))
        data = build_dicomdir(entries, "MEDSYNTH", self._uids.uid("fileset"))
        atomic_write_bytes(self.out_dir / "DICOMDIR", data)

    def _write_manifest(self, complete: bool, error: str | None = None) -> dict[str, Any]:
        self._finished = True
        manifest = self._manifest_head(complete)
        manifest["series"] = [s.summary() for s in self._series]
        manifest["files"] = [asdict(f) for f in self._files]
        if error:
            manifest["error"] = error
        manifest.update(self.manifest_extra)
        if self._journal is not None:
            self._journal.finish(manifest)
        else:
            atomic_write_json(self.out_dir / MANIFEST_NAME, manifest)
        self._manifest = manifest
        return manifest

    def _manifest_head(self, complete: bool) -> dict[str, Any]:
        """Everything in ``manifest.json`` but the series and files lists."""
        manifest: dict[str, Any] = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "software": f"medsynth {__version__}",
            "complete": complete,
            "preset": self.preset.name,
            "modality": self.preset.modality.value,
            "sop_class_uid": self.preset.sop_class.value,
            "transfer_syntax": {"name": self.options.transfer_syntax.value,
                                "uid": str(self.options.transfer_syntax.uid)},
            "seed": self.options.seed,
            "uid_root": normalise_root(self.options.uid_root) or "2.25.",
            "uid_namespace": self.namespace,
            "provenance": self.provenance.to_json(),
            "private_block": {"group": f"{PRIVATE_GROUP:04X}", "creator": PRIVATE_CREATOR},
            "dicomdir": "DICOMDIR" if complete and self._files and not self.options.dcm_names else None,
            "patients": len(self._patients),
            "studies": len(self._studies),
        }
        if self.options.seed is None:
            manifest["created"] = self._now.isoformat()
        if not complete:
            manifest.update(self.manifest_extra)
        return manifest


# --------------------------------------------------------------------------------------------
# One call for a whole volume
# --------------------------------------------------------------------------------------------


def write_volume(volume: npt.ArrayLike, geometry: VolumeGeometry, preset: Preset, out_dir: str | Path,
                 options: WriterOptions | None = None, provenance: Provenance | None = None,
                 force: bool = False, on_slice: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a volume ``[z, y, x]`` (or one slice ``[y, x]``) in physical units as a DICOM file-set.

    The input geometry is kept (matrix, spacing, origin, direction). Every series of the
    ``options`` plan (patients × studies × series) gets the same pixels under its own identity
    and UIDs. ``on_slice(n)`` is called after each file with the number of files written so far
    (for progress bars). Returns the manifest (also written to ``out_dir/manifest.json``).
    """
    arr = np.asarray(volume)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise InputError(f"expected a 2D slice or a 3D [z, y, x] volume, got shape {np.shape(volume)}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype == np.bool_:
        raise InputError(f"expected real numeric voxels, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError("the volume contains NaN or infinite values")
    arr, geometry = right_handed(arr, geometry)
    arr, encoding, windows, rescale = fit_volume(arr, preset)
    options = options or WriterOptions()
    if options.transfer_syntax.eight_bit_only:
        encoding = eight_bit_encoding(arr, encoding, preset.modality)
        check_encoding(options.transfer_syntax, encoding, "the input's values")
    with SyntheticStudyWriter(out_dir, preset, options, provenance, force=force) as writer:
        if rescale is not None:
            writer.manifest_extra["intensity_rescaled"] = rescale
        done = 0
        for slot in options.slots():
            writer.begin_series(geometry, (arr.shape[1], arr.shape[2]), patient=slot.patient,
                                study=slot.study, encoding=encoding, windows=windows)
            for k in range(arr.shape[0]):
                writer.write_slice(k, arr[k])
                done += 1
                if on_slice is not None:
                    on_slice(done)
        manifest = writer.finish()
    return manifest
