"""UID namespaces end to end: `medsynth generate` of a CT and an MR with the same seed and
--reproducible-uids share no UID or PatientID, and both land in a real Orthanc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from _packs import make_tiny_pack
from medsynth.cli.main import cli
from medsynth.dicom_io.uids import UidFactory, run_namespace


def test_namespace_names_every_uid() -> None:
    a, b = run_namespace({"preset": "ct-pelvis"}, True), run_namespace({"preset": "mr-brain"}, True)
    assert a == run_namespace({"preset": "ct-pelvis"}, True) != b
    assert run_namespace({"preset": "ct-pelvis"}, False) != run_namespace({"preset": "ct-pelvis"}, False)
    assert UidFactory(seed=7, namespace=a).uid("study", 0) != UidFactory(seed=7, namespace=b).uid("study", 0)
    assert UidFactory(seed=7, namespace=a).uid("study", 0) == UidFactory(seed=7, namespace=a).uid("study", 0)


def test_generate_ct_and_mr_same_seed_share_nothing_and_both_land_in_orthanc(tmp_path: Path) -> None:
    from _orthanc import start_orthanc

    make_tiny_pack(tmp_path / "ct", size=16, default_steps=2, model_id="ct-body")
    make_tiny_pack(tmp_path / "mr", size=16, default_steps=2, model_id="mr-brain", labels=("t1", "t2", "flair", "t1c"),
                   presets=("mr-brain",), modality="MR", physical_range=(0.0, 4095.0), unit="US", seed=1)
    common = ["--patients", "2", "--studies", "2", "--slices", "2", "--seed", "7", "--reproducible-uids", "--json"]
    ids: dict[str, set[str]] = {}
    for name, preset in (("ct", "ct-pelvis"), ("mr", "mr-brain")):
        res = CliRunner().invoke(cli, ["generate", "-m", preset, "--model", str(tmp_path / name), "-o",
                                       str(tmp_path / f"out-{name}"), *common])
        assert res.exit_code == 0, res.output
        files = json.loads((tmp_path / f"out-{name}" / "manifest.json").read_text())["files"]
        ids[name] = {f[k] for f in files for k in ("sop_instance_uid", "series_instance_uid", "study_instance_uid",
                                                   "patient_id")}
    assert not ids["ct"] & ids["mr"]
    try:
        pacs = start_orthanc(tmp_path / "orthanc")
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        for name in ("ct", "mr"):
            res = CliRunner().invoke(cli, ["push", str(tmp_path / f"out-{name}"), "--host", "127.0.0.1", "--port",
                                           str(pacs.dicom_port), "--called-aet", pacs.aet, "--no-progress"])
            assert res.exit_code == 0, res.output
        assert len(pacs.get_json("/instances")) == 2 * (2 * 2 * 2)  # every instance of both runs is stored
        assert len(pacs.get_json("/patients")) == 4
    finally:
        pacs.stop()
