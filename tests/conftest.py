"""Shared fixtures: where the real scans live, and small helpers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from medsynth.latent.config import AutoencoderConfig, LatentDenoiserConfig

REPO = Path(__file__).resolve().parents[1]

# the tiny latent models of `tiny_latent_runs` (seconds to train on one core)
TINY_AE = AutoencoderConfig(channels=(32, 32, 32), crop=32, batch_size=4, steps=4, checkpoint_every=2,
                            whole_slice_steps=1)
TINY_LD = LatentDenoiserConfig(channels=(32, 32), attention_levels=(False, True), batch_size=4, steps=4,
                               checkpoint_every=2, warmup_steps=2)


def pytest_configure(config: pytest.Config) -> None:
    """The CT presets default to the 512² latent pack ``ct-body-512`` (~1 s a slice). The plumbing
    tests (writers, push, shards, cohorts, CLI) only need *a* CT pack, so they sample the bundled 64²
    ``ct-body`` pixel pack in its place: ``$MEDSYNTH_MODEL_DIR`` (searched before the bundled packs,
    and inherited by subprocesses) holds a copy of it under the default's name. Tests of the real
    default delete the variable (``monkeypatch.delenv``); see test_latent.py."""
    if os.environ.get("MEDSYNTH_MODEL_DIR"):
        return
    root = Path(tempfile.mkdtemp(prefix="medsynth-test-packs-"))
    shutil.copytree(REPO / "src" / "medsynth" / "packs" / "ct-body", root / "ct-body-512")
    os.environ["MEDSYNTH_MODEL_DIR"] = str(root)
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $MEDSYNTH_SHARED_DATA."""
    return Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.fail(f"real test data not found at {d}; set MEDSYNTH_SHARED_DATA")
    return d


@pytest.fixture(scope="session")
def tiny_latent_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny latent CT pack trained in seconds on real pelvis CT: {"data", "ae", "ld", "pack"} paths.

    Shared by the latent, variants and like tests (built once per session); tests copy it before
    editing. Its pixels are meaningless: it proves plumbing, not quality.
    """
    from medsynth.latent.autoencoder import train_autoencoder
    from medsynth.latent.denoiser import train_latent
    from medsynth.latent.export import export_latent_pack
    from medsynth.prepare import PrepareConfig, ZRange, prepare_dataset

    root = tmp_path_factory.mktemp("tiny-latent")
    ds = root / "data"
    prepare_dataset([shared_data / "ct" / "abdomen_pelvis_totalseg.nii.gz"], ds,
                    PrepareConfig(preset="ct-pelvis", label="pelvis", z_range=ZRange.parse("0:0.45")))
    train_autoencoder(ds, root / "ae", TINY_AE, threads=1, show_progress=False)
    train_latent(ds, root / "ae", root / "ld", TINY_LD, threads=1, show_progress=False)
    export_latent_pack(root / "ae", root / "ld", root / "pack" / "ct-body", steps=2, guidance=1.5)
    return {"data": ds, "ae": root / "ae", "ld": root / "ld", "pack": root / "pack" / "ct-body"}
