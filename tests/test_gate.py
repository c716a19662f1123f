"""The acceptance gate fails bad image sets and bad packs, and passes real held-out patients.

Real data from ../shared/data, on the *test* split of benchmarks/calibrate_metrics.py (the gate's
thresholds were chosen on the validation split): CT volumes the bundled ct-body pack never saw and
PneumoniaMNIST's test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medsynth.evaluation import EvaluationConfig, ImageSet, evaluate_sets
from medsynth.evaluation.gate import check_gate
from medsynth.evaluation.inputs import load_real_dataset
from medsynth.evaluation.splits import volume_halves
from medsynth.prepare import PrepareConfig, prepare_dataset

CT_TEST = ["ct/chest_lungpetctdx_A0001_kernel_B.nii.gz", "ct/cardiac_cta_totalseg_1.nii.gz",
           "ct/cardiac_cta_totalseg_2.nii.gz", "ct/abdomen_pancreasctcbct_001.nii.gz"]
CT_TRAIN = ["ct/abdomen_pelvis_totalseg.nii.gz", "ct/chest_pyradiomics_lung1.nrrd", "ct/chest_pyradiomics_lung2.nrrd",
            "ct/upper_abdomen_dicom"]
FAST = EvaluationConfig(discriminator="logistic", bootstrap=20, max_query=64, max_reference=128, max_train=256,
                        max_diversity=64)


def _blur(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(im, sigma, mode="nearest") for im in x]).astype(np.float32)


def _shuffle(x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(im.ravel()).reshape(im.shape) for im in x]).astype(np.float32)


@pytest.fixture(scope="module")
def ct_test(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    out = tmp_path_factory.mktemp("gate") / "ct"
    prepare_dataset([shared_data / f for f in CT_TEST], out, PrepareConfig(preset="ct-pelvis", label="abdomen",
                                                                           slice_spacing_mm=0))
    return load_real_dataset(out)


@pytest.fixture(scope="module")
def xr_test(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    out = tmp_path_factory.mktemp("gate") / "xr"
    prepare_dataset([shared_data / "xr" / "pneumoniamnist_28.npz"], out, PrepareConfig(preset="xr-chest",
                                                                                       split="test"))
    return load_real_dataset(out)


def _image_sets(real: ImageSet) -> tuple[ImageSet, dict[str, ImageSet]]:
    """(training set = real half B, {name: query set}) — the halves evaluate_sets itself uses."""
    sp = volume_halves(real.groups, real.positions, FAST.seed, real.labels)

    def take(idx: np.ndarray, images: np.ndarray | None = None) -> ImageSet:
        imgs = np.asarray(real.images[idx]) if images is None else images
        return replace(real, images=np.clip(imgs, -1, 1).astype(np.float32), labels=real.labels[idx],
                       volumes=real.groups[idx], positions=real.order[idx])

    a = np.asarray(real.images[sp.a])
    shift = 50.0 * 2 / (real.physical_range[1] - real.physical_range[0]) if real.unit == "HU" else 0.0
    sets = {"real": take(sp.a), "shuffled": take(sp.a, _shuffle(a)), "blurred": take(sp.a, _blur(a)),
            "copies": take(sp.b[: len(sp.a)])}
    if shift:
        sets["+50 HU"] = take(sp.a, a + shift)
    return take(sp.b), sets


@pytest.mark.parametrize("which", ["ct", "xr"])
def test_gate_fails_bad_image_sets_and_passes_held_out_patients(which: str, request: pytest.FixtureRequest) -> None:
    real: ImageSet = request.getfixturevalue(f"{which}_test")
    train, sets = _image_sets(real)
    fails = {name: check_gate(evaluate_sets(real, s, train, FAST)) for name, s in sets.items()}
    assert fails["real"] == [], fails["real"]  # other real patients pass
    assert any(f.startswith(("discriminator", "power spectrum")) for f in fails["shuffled"]), fails["shuffled"]
    assert any(f.startswith("power spectrum") for f in fails["blurred"]), fails["blurred"]
    assert any(f.startswith("copies") for f in fails["copies"]), fails["copies"]
    if "+50 HU" in fails:
        assert any(f.startswith("intensity") for f in fails["+50 HU"]), fails["+50 HU"]


def _bank_pack(root: Path, bank: np.ndarray, model_id: str, training: dict[str, Any]) -> Path:
    """A torch-free pack whose ONNX denoiser answers every call with one image of ``bank`` [K, H, W],
    chosen by the noisy input (argmax of a fixed projection; prediction_type "sample"): its samples
    are bank images, different ones for different noise — a stand-in for a model that learned
    exactly that bank."""
    import onnx
    from onnx import TensorProto, helper

    from medsynth.pack import NoiseScheduleConfig, PackMetadata, save_pack_metadata, sha256_file

    k, h, w = bank.shape
    proj = np.random.default_rng(0).standard_normal((h * w, k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["sample"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "proj"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["idx"], axis=1, keepdims=0),
         helper.make_node("Gather", ["bank", "idx"], ["prediction"], axis=0)],
        "bank",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["B", 1, h, w]),
         helper.make_tensor_value_info("timestep", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["B", 1, h, w])],
        [helper.make_tensor("proj", TensorProto.FLOAT, list(proj.shape), proj.ravel().tolist()),
         helper.make_tensor("bank", TensorProto.FLOAT, [k, 1, h, w], bank.astype(np.float32).ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root.mkdir(parents=True)
    onnx.save(model, str(root / "model.onnx"))
    save_pack_metadata(root, PackMetadata(
        model_id=model_id, presets=("ct-pelvis", "ct-abdomen", "ct-chest"), modality="CT", matrix=(h, w),
        pixel_spacing_mm=(6.0, 6.0), physical_range=(-1024.0, 2047.0), unit="HU", schedule=NoiseScheduleConfig(),
        prediction_type="sample", labels=("pelvis", "abdomen", "chest"), null_class=3, uses_position=False,
        default_guidance=1.0, default_sampler="ddim", default_steps=2,
        files={"model.onnx": sha256_file(root / "model.onnx")}, software_version="test", training=training))
    return root


def test_gate_fails_bad_packs_through_generate(tmp_path: Path, shared_data: Path, ct_test: ImageSet) -> None:
    """Bad packs (samples = copies of training slices, shuffled pixels, blurred slices) evaluated exactly as
    bundled packs are: `medsynth generate` → NIfTI → held-out patients, training set for memorisation."""
    from medsynth.evaluation.packs import evaluate_pack

    train_recipe = [{"inputs": CT_TRAIN, "label": "abdomen", "slice_spacing_mm": 0}]
    held_recipe = [{"inputs": CT_TEST, "label": "abdomen", "slice_spacing_mm": 0}]
    prepare_dataset([shared_data / f for f in CT_TRAIN], tmp_path / "train",
                    PrepareConfig(preset="ct-pelvis", label="abdomen", slice_spacing_mm=0))
    train = np.asarray(load_real_dataset(tmp_path / "train").images)
    rng = np.random.default_rng(1)
    held = np.asarray(ct_test.images)
    banks = {"copier": train[rng.choice(len(train), 48, replace=False)],
             "shuffler": _shuffle(held[rng.choice(len(held), 48, replace=False)]),
             "blurrer": _blur(held[rng.choice(len(held), 48, replace=False)], 1.5)}
    expected = {"copier": ("copies",), "shuffler": ("discriminator", "power spectrum"), "blurrer": ("power spectrum",)}
    for name, bank in banks.items():
        pack = _bank_pack(tmp_path / name, bank, name, {"prepare": train_recipe, "held_out": held_recipe})
        report, _ = evaluate_pack(pack, shared_data, n_images=32, config=FAST)
        assert report.data["inputs"]["real_is_training_data"] is False
        assert report.data["inputs"]["real"]["volumes"] == 4
        # baseline: the training patients against the held-out ones; generated by medsynth generate
        assert report.data["protocol"]["split"].startswith("baseline set") and report.data["protocol"]["real_volumes_a"] == 4
        assert report.data["inputs"]["synthetic"]["kind"] == "nifti" and report.data["protocol"]["synthetic_used"] == 32
        fails = check_gate(report)
        assert any(f.startswith(expected[name]) for f in fails), (name, fails)
