"""``generate --shard i/n`` and ``merge-shards``: the union of the shards is one run, file for file
(bundled ct-body pack, 2 steps); Slurm array defaults; the Ray example with 2 local workers; clear
errors for shards that do not belong together."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medsynth.cli.main import cli
from medsynth.errors import ConfigError
from medsynth.shard import Shard, parse_shard, shard_from_env

REPO = Path(__file__).resolve().parents[1]
RUN = ("-m", "ct-pelvis", "--steps", "2", "--slices", "3", "--patients", "3", "--studies", "2", "--seed", "9",
       "--reproducible-uids", "--threads", "1")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), env=env)
    return res.exit_code, res.output


def digests(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One unsharded run (batch 4), shard 0/2 by --shard, shard 1/2 from Slurm's variables (batch 8)."""
    base = tmp_path_factory.mktemp("shard")
    code, text = run("generate", *RUN, "--batch-size", "4", "-o", str(base / "one"), "--json")
    assert code == 0, text
    code, text = run("generate", *RUN, "--shard", "0/2", "-o", str(base / "s0"), "--json")
    assert code == 0, text
    code, text = run("generate", *RUN, "-o", str(base / "s1"), "--json",
                     env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert code == 0, text
    return {"one": base / "one", "s0": base / "s0", "s1": base / "s1", "base": base}


def test_shards_split_by_patient_with_global_paths(runs: dict[str, Path]) -> None:
    m0 = json.loads((runs["s0"] / "manifest.json").read_text())
    m1 = json.loads((runs["s1"] / "manifest.json").read_text())
    assert m0["shard"] == {"index": 0, "count": 2, "patients": [0, 2]}
    assert m1["shard"] == {"index": 1, "count": 2, "patients": [1]}
    assert sorted(p.name for p in runs["s0"].glob("PT*")) == ["PT000000", "PT000002"]
    assert sorted(p.name for p in runs["s1"].glob("PT*")) == ["PT000001"]
    assert (len(m0["files"]), len(m1["files"])) == (12, 6)
    assert m0["uid_namespace"] == m1["uid_namespace"]


def test_merged_shards_equal_one_run_file_for_file(runs: dict[str, Path]) -> None:
    out = runs["base"] / "merged"
    shard_before = digests(runs["s0"])
    code, text = run("merge-shards", str(runs["s1"]), str(runs["s0"]), "-o", str(out), "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert (summary["shards"], summary["patients"], summary["studies"], summary["files"]) == (2, 3, 6, 18)
    one, merged = digests(runs["one"]), digests(out)
    assert set(one) == set(merged)
    differing = {path for path in one if one[path] != merged[path]}
    assert differing == {"manifest.json"}  # every image and the DICOMDIR are byte-identical
    m_one = json.loads((runs["one"] / "manifest.json").read_text())
    m_merged = json.loads((out / "manifest.json").read_text())
    assert [s["index"] for s in m_merged.pop("merged_from")] == [0, 1]
    m_one["generator"].pop("batch_size")
    m_merged["generator"].pop("batch_size")
    assert m_merged == m_one
    assert digests(runs["s0"]) == shard_before  # the shard folders are not modified


def test_merge_refuses_shards_that_do_not_belong_together(runs: dict[str, Path], tmp_path: Path) -> None:
    code, text = run("merge-shards", str(runs["s0"]), "-o", str(tmp_path / "a"))
    assert code != 0 and "1/2 missing" in text and "Traceback" not in text
    code, text = run("merge-shards", str(runs["s0"]), str(runs["s0"]), "-o", str(tmp_path / "b"))
    assert code != 0 and "given twice" in text
    code, text = run("merge-shards", str(runs["one"]), "-o", str(tmp_path / "c"))
    assert code != 0 and "no shard entry" in text
    other = tmp_path / "other"
    code, text = run("generate", *[a if a != "9" else "10" for a in RUN], "--shard", "1/2", "-o", str(other), "--json")
    assert code == 0, text
    code, text = run("merge-shards", str(runs["s0"]), str(other), "-o", str(tmp_path / "d"))
    assert code != 0 and "another run" in text and str(other) in text
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing written on refusal


def test_shard_needs_seed_reproducible_uids_and_patients(tmp_path: Path) -> None:
    base = ["generate", "-m", "ct-pelvis", "--steps", "2", "--slices", "2", "-o", str(tmp_path / "x")]
    code, text = run(*base, "--shard", "0/2", "--seed", "1")
    assert code != 0 and "--reproducible-uids" in text
    code, text = run(*base, "--shard", "0/2", "--seed", "1", "--reproducible-uids")
    assert code != 0 and "cannot fill 2 shards" in text
    code, text = run(*base, "--shard", "2/2")
    assert code != 0 and "0..1" in text
    code, text = run(*base, "--shard", "half")
    assert code != 0 and "INDEX/COUNT" in text
    assert not (tmp_path / "x").exists()


def test_shard_parsing_and_slurm_defaults() -> None:
    assert parse_shard(" 3/8 ") == Shard(3, 8)
    assert list(Shard(1, 3).patients(8)) == [1, 4, 7]
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                           "SLURM_ARRAY_TASK_MIN": "2"}) == Shard(3, 4)  # --array=2-5
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_ray_example_two_local_workers_equals_one_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """examples/ray_generate.py: 2 shards on a local Ray instance with 2 workers, merged."""
    out = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "ray_generate.py"), "-m", "ct-pelvis",
                           "--patients", "3", "--studies", "2", "--slices", "3", "--steps", "2", "--seed", "9",
                           "--workers", "2", "-o", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, merged = digests(runs["one"]), digests(out / "merged")
    assert {p for p in one if one[p] != merged.get(p)} == {"manifest.json"}
    assert set(one) == set(merged)


COHORT = """seed = 5
patients = 3
steps = 1
names = "international"
types_per_patient = [[1, 1], [2, 1]]
[[study]]
preset = "ct-chest"
slices = 2
studies = 2
[[study]]
preset = "xr-chest"
"""


def test_cohort_shards_merged_equal_one_cohort_run(tmp_path: Path) -> None:
    """`generate --cohort F --shard 0/2` + the Slurm task 1 of 2, merged: the unsharded cohort run
    file for file — images, DICOMDIRs and cohort.json byte-identical, each preset folder's
    manifest.json the same bytes once its `merged_from` entry is taken out. (3 patients, CT priors and
    currents, one X-ray study: shard 1 has no X-ray patient, so xr-chest/ merges from shard 0 alone.)"""
    path = tmp_path / "tiny.toml"
    path.write_text(COHORT, encoding="utf-8")
    gen = ("generate", "--cohort", str(path), "--threads", "1", "--no-progress")
    assert run(*gen, "-o", str(tmp_path / "one"))[0] == 0
    code, text = run(*gen, "--shard", "0/2", "-o", str(tmp_path / "s0"))
    assert code == 0, text
    code, text = run(*gen, "-o", str(tmp_path / "s1"), env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert code == 0, text
    c0, c1 = (json.loads((tmp_path / s / "cohort.json").read_text()) for s in ("s0", "s1"))
    assert [p["index"] for p in c0["patient_list"]] == [0, 2] and [p["index"] for p in c1["patient_list"]] == [1]
    assert c0["shard"]["cohort"] == c1["shard"]["cohort"] and sorted(c1["folders"]) == ["ct-chest"]
    assert sorted(p.name for p in (tmp_path / "s1" / "ct-chest").glob("PT*")) == ["PT000001"]

    code, text = run("merge-shards", str(tmp_path / "s1"), str(tmp_path / "s0"), "-o", str(tmp_path / "m"), "--json")
    assert code == 0, text
    summary = json.loads(text)
    one, merged = digests(tmp_path / "one"), digests(tmp_path / "m")
    assert (summary["shards"], summary["patients"], summary["files"]) == (2, 3, len(one) - 5)  # 2 DICOMDIRs, manifests
    assert set(one) == set(merged)
    assert {p for p in one if one[p] != merged[p]} == {"ct-chest/manifest.json", "xr-chest/manifest.json"}
    for name, shards in (("ct-chest", [0, 1]), ("xr-chest", [0])):
        m = json.loads((tmp_path / "m" / name / "manifest.json").read_text())
        assert [s["index"] for s in m.pop("merged_from")] == shards
        assert json.dumps(m, indent=2) + "\n" == (tmp_path / "one" / name / "manifest.json").read_text()

    code, text = run("merge-shards", str(tmp_path / "s0"), "-o", str(tmp_path / "x"))
    assert code != 0 and "1/2 missing" in text and not (tmp_path / "x").exists()
    code, text = run(*gen, "--shard", "0/4", "-o", str(tmp_path / "y"))
    assert code != 0 and "cannot fill 4 shards" in text
