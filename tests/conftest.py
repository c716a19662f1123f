"""Shared fixtures: where the real scans live, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $MEDSYNTH_SHARED_DATA."""
    return Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.fail(f"real test data not found at {d}; set MEDSYNTH_SHARED_DATA")
    return d
