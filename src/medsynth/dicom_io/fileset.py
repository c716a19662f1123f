"""The file set: output folder rules, file names, file meta, manifest records, DICOMDIR attributes.

Layout: ``PTpppppp/STssssss/SEeeeeee/IMiiiiii`` (File IDs a DICOMDIR can reference; ``.dcm`` names
optional, then without DICOMDIR), ``DICOMDIR`` and ``manifest.json`` at the top. Every file is
written through :func:`medsynth.outputs.atomic_write`; the manifest goes through
:class:`medsynth.outputs.RunJournal`, so an interrupted run still lists its complete files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medsynth import __version__
from medsynth.dicom_io.uids import IMPLEMENTATION_CLASS_UID
from medsynth.errors import OutputError
from medsynth.outputs import remove_previous_run, require_usable_output

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1

#: attributes the DICOMDIR's PATIENT/STUDY/SERIES/IMAGE records are built from.
DICOMDIR_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
)


@dataclass(frozen=True)
class FileRecord:
    """One written instance, as listed in ``manifest.json`` (``path`` relative, '/'-separated)."""

    path: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int


def file_meta(sop_class_uid: str, sop_uid: UID) -> FileMetaDataset:
    """File meta information of one instance: Explicit VR Little Endian, medsynth's own
    ImplementationClassUID and version name."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = f"MEDSYNTH_{__version__}"[:16]
    return meta


def prepare_output(out_dir: Path, force: bool) -> None:
    """Create ``out_dir`` or check it is empty; with ``force`` remove every file of a previous
    medsynth run (listed in its manifest/journal or not, see :func:`medsynth.outputs.remove_previous_run`);
    nothing else is touched."""
    if require_usable_output(out_dir, force, "write into it"):
        remove_previous_run(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder: {err.strerror}", out_dir) from None
