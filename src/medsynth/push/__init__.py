"""Send DICOM folders to a PACS: C-STORE (pynetdicom) or DICOMweb STOW-RS, resumable, with a report.

Public API: :func:`push_folder`, :class:`PushConfig`, :class:`DimseTarget`, :class:`StowTarget`,
:class:`StowAuth`, :class:`PushReport`, :class:`InstanceResult`, :class:`InstanceStatus`, and for
other commands the click decorator :func:`push_options` with :func:`push_config_from_options` and
:func:`finish_push`.
"""

from medsynth.push.model import (
    STATE_FILENAME,
    DimseTarget,
    InstanceResult,
    InstanceStatus,
    PushConfig,
    PushReport,
    StowAuth,
    StowTarget,
)
from medsynth.push.options import finish_push, push_config_from_options, push_options, resolve_auth
from medsynth.push.runner import push_folder

__all__ = [
    "STATE_FILENAME",
    "DimseTarget",
    "InstanceResult",
    "InstanceStatus",
    "PushConfig",
    "PushReport",
    "StowAuth",
    "StowTarget",
    "finish_push",
    "push_config_from_options",
    "push_folder",
    "push_options",
    "resolve_auth",
]
