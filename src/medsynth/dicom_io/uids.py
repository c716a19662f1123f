"""DICOM UIDs: unique by default, reproducible when a seed is given, never shared across namespaces.

Every UID is named by the run's *namespace* (:func:`run_namespace`: a hash of the preset, the
pack identity or input hash, the options, and a fresh nonce unless the run is reproducible), the
seed, and the UID's role. Two runs with the same seed but another preset, pack, input or option
therefore never share a Study, Series, SOP Instance or Frame of Reference UID.

* No root, no seed: ``2.25.<UUID4 as integer>`` (pydicom ``generate_uid(prefix=None)``).
* Root, no seed: ``<root>.<random>`` (pydicom ``generate_uid(prefix=root)``).
* Seed given: the same call sequence gives the same UIDs. With a root, pydicom's own deterministic
  form ``generate_uid(prefix=root, entropy_srcs=[...])`` (a SHA-512 of the seed and the UID's role);
  without one, ``2.25.<name-based UUID (version 5)>`` of the same, since pydicom ignores
  ``entropy_srcs`` for the 2.25 form and a 2.25 UID must be the integer of a real UUID.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from pydicom.uid import UID, generate_uid

from medsynth.errors import ConfigError

# Name space for medsynth's name-based (version 5) UUIDs: uuid5(NAMESPACE_URL, "medsynth").
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://medsynth.invalid/uid")
#: medsynth's own ImplementationClassUID (file meta of every file it writes): the 2.25 form of
#: uuid5(NAMESPACE_URL, "https://medsynth.invalid/dicom/implementation-class"), fixed forever
IMPLEMENTATION_CLASS_UID = UID("2.25.165226128838348244470776687708967495242")
_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_MAX_ROOT = 54  # pydicom's limit on the prefix, leaving room for a unique suffix in 64 characters


def normalise_root(root: str | None) -> str | None:
    """``root`` with a trailing dot, validated (ConfigError); None stays None (2.25 UUID form)."""
    if root is None or root.strip() in ("", "2.25", "2.25."):
        return None
    r = root.strip().rstrip(".")
    if not _ROOT_RE.match(r):
        raise ConfigError(f"UID root {root!r} is not a valid UID prefix (digits and dots, no leading zeros)")
    if len(r) + 1 > _MAX_ROOT:
        raise ConfigError(f"UID root {root!r} is longer than {_MAX_ROOT - 1} characters")
    return r + "."


def run_namespace(facts: Mapping[str, Any], reproducible: bool) -> str:
    """The namespace of one run: a hex SHA-256 of ``facts`` (JSON-ready: preset, pack identity or
    input hash, options ...) plus, unless ``reproducible``, a fresh 128-bit nonce."""
    payload: dict[str, Any] = {"facts": dict(facts)}
    if not reproducible:
        payload["nonce"] = secrets.token_hex(16)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UidFactory:
    """Makes UIDs for one writer run.

    ``uid(*role)`` returns a UID for the named role (e.g. ``("study", 0, 1)``); with a seed the
    same namespace and role always give the same UID, without one every call is fresh and random.
    """

    def __init__(self, root: str | None = None, seed: int | None = None, namespace: str = "") -> None:
        self.root = normalise_root(root)
        self.seed = seed
        self.namespace = namespace

    def uid(self, *role: object) -> UID:
        """A UID for ``role`` (deterministic iff the factory has a seed)."""
        if self.seed is None:
            return generate_uid(prefix=self.root)
        name = "/".join(["medsynth", self.namespace, str(self.seed), *(str(r) for r in role)])
        if self.root is None:
            return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")
        return generate_uid(prefix=self.root, entropy_srcs=[name])
