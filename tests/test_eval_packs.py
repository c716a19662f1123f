"""benchmarks/eval_packs.py --check: per-metric reproduction within the recorded intervals, the
"k/k within CI" line, the exit status, and the evaluation seed kept apart from the generation seed.
The pack evaluation itself is stubbed (the real one is tests/test_evaluation.py's bundled-pack test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_packs.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_packs_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _metrics(power: float) -> dict[str, Any]:
    return {"power_spectrum": {"synthetic": power}, "frechet": {"synthetic": 10.0},
            "intensity": {"kl": {"synthetic": 0.1}}}


def _record(seed: int = 0, eval_seed: int | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"n_images": 8, "seed": seed, "steps": None, "discriminator": "logistic",
                           "real_is_training_data": True, "gate_failures": [], "metrics": {
                               "power_spectrum": {"synthetic": 1.3, "ci": [1.1, 1.6]},
                               "frechet": {"synthetic": 11.0, "ci": [8.0, 14.0]},
                               "intensity.kl": {"synthetic": 0.1, "ci": None}}}
    if eval_seed is not None:
        rec["eval_seed"] = eval_seed
    return rec


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[tuple[int, int]], dict[str, float]]:
    mod = _load()
    seeds: list[tuple[int, int]] = []  # (generation seed, evaluation seed) of each evaluate_pack call
    value: dict[str, Any] = {"power": 1.4, "series": []}

    def fake_evaluate_pack(pack_dir: Path, shared: Path, n_images: int, seed: int, config: Any,
                           steps: int | None, series: int | None) -> tuple[Any, Any]:
        seeds.append((seed, config.seed))
        value["series"].append(series)
        report = SimpleNamespace(data={"metrics": _metrics(value["power"]),
                                       "inputs": {"real_is_training_data": True}})
        pack = SimpleNamespace(metadata=SimpleNamespace(model_id=pack_dir.name, training={}), root=pack_dir)
        return report, pack

    monkeypatch.setattr(mod, "evaluate_pack", fake_evaluate_pack)
    monkeypatch.setattr(mod, "markdown_block", lambda report, pack: "block\n")
    monkeypatch.setattr(mod, "check_thresholds", lambda report: [])
    monkeypatch.setattr(mod, "regressions", lambda report, record: [])
    monkeypatch.setattr(mod, "quality_record", lambda report, n, seed, steps, series: {"n_images": n, "seed": seed,
                                                                                  "series": series})
    return mod, seeds, value


def test_check_passes_inside_and_keeps_the_recorded_evaluation_seed(
        script: tuple[ModuleType, list[tuple[int, int]], dict[str, float]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    mod, seeds, _ = script
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"toy": _record(seed=0, eval_seed=3)}), encoding="utf-8")
    assert mod.main([str(tmp_path / "toy"), "--check", str(rec), "--seed", "1"]) == 0
    assert seeds == [(1, 3)]  # another generation seed, the record's evaluation seed (same real split)
    out = capsys.readouterr().out
    assert "toy: power_spectrum 1.4 vs recorded 1.3 [1.1, 1.6]: inside" in out
    assert "toy: 2/2 within CI (generation seed 1, evaluation seed 3)" in out
    assert "(no interval)" in out  # intensity.kl has no interval: reported, not counted


def test_check_fails_when_a_metric_leaves_its_interval(
        script: tuple[ModuleType, list[tuple[int, int]], dict[str, float]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    mod, seeds, value = script
    value["power"] = 2.5  # better-or-worse does not matter: outside the recorded interval is not reproduced
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"toy": _record()}), encoding="utf-8")  # no eval_seed: the record's seed
    assert mod.main([str(tmp_path / "toy"), "--check", str(rec), "--seed", "2"]) == 1
    assert seeds == [(2, 0)]
    out = capsys.readouterr().out
    assert "power_spectrum 2.5 vs recorded 1.3 [1.1, 1.6]: OUTSIDE" in out
    assert "toy: 1/2 within CI" in out


def test_eval_seed_flag_and_record(script: tuple[ModuleType, list[tuple[int, int]], dict[str, float]],
                                   tmp_path: Path) -> None:
    mod, seeds, _ = script
    out = tmp_path / "out.json"
    assert mod.main([str(tmp_path / "toy"), "--seed", "4", "--eval-seed", "5", "--record", str(out)]) == 0
    assert seeds == [(4, 5)]
    assert json.loads(out.read_text(encoding="utf-8"))["toy"] == {"n_images": 32, "seed": 4, "series": None,
                                                                  "eval_seed": 5}


def test_series_for_is_passed_on_recorded_and_replayed_by_check(
        script: tuple[ModuleType, list[tuple[int, int]], dict[str, Any]], tmp_path: Path) -> None:
    """--series-for ID=N reaches evaluate_pack and the record; --check replays the recorded count."""
    mod, _, value = script
    rec = tmp_path / "rec.json"
    assert mod.main([str(tmp_path / "toy"), "--series-for", "toy=16", "--record", str(rec)]) == 0
    assert json.loads(rec.read_text(encoding="utf-8"))["toy"]["series"] == 16
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"toy": {**_record(seed=0, eval_seed=0), "series": 16}}), encoding="utf-8")
    assert mod.main([str(tmp_path / "toy"), "--check", str(check), "--seed", "1"]) == 0
    assert mod.main([str(tmp_path / "other")]) == 0  # another pack: series as long as the real volumes
    assert value["series"] == [16, 16, None]
