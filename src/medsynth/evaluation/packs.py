"""Evaluating a model pack against its training data: the numbers for its model card and QUALITY.md.

Steps: find (or rebuild) the pack's training dataset, sample synthetic images from the pack with
its default sampler, steps and guidance (onnxruntime, :mod:`medsynth.sampling`), conditions and
slice positions drawn like the training set's, run :func:`medsynth.evaluation.evaluate_sets` with
the training set as both the real and the train set, then check the acceptance thresholds below.

Where the training dataset comes from, first match wins:

1. ``$MEDSYNTH_PACK_DATASETS/<model_id>/`` — a prepared dataset folder;
2. ``pack.json`` → ``training.dataset_path`` (as recorded by ``medsynth train``), if it still exists;
3. ``pack.json`` → ``training.prepare``: a list of ``medsynth prepare`` recipes, each a JSON object
   with ``inputs`` (paths relative to the shared data folder) and the :class:`medsynth.prepare.PrepareConfig`
   fields (``preset``, ``label``, ``z_range`` as "LOW:HIGH", ``slice_spacing_mm``, ``split``,
   ``min_body_fraction``, ``label_from_folder``, ``n4``); the parts are prepared into a temporary
   folder and concatenated.

When the pack lists ``data_sources`` with sha256 digests, a found dataset must name the same
sources, so that a pack is never judged against data it was not trained on.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation.evaluate import EvaluationConfig, EvaluationReport, evaluate_sets
from medsynth.evaluation.inputs import load_real_dataset
from medsynth.pack import ModelPack, bundled_packs_dir, load_pack

ENV_DATASETS = "MEDSYNTH_PACK_DATASETS"


@dataclass(frozen=True)
class PackThresholds:
    """Acceptance thresholds of a bundled pack (justified in QUALITY.md).

    * ``max_copy_fraction``: at most 5 % of samples may have a training image at SSIM ≥ 0.99
      (``EvaluationConfig.copy_threshold``). Distinct real images never get there (adjacent 3 mm CT slices reach 0.98, X-rays
      far less), so such a sample is a copy.
    * ``max_excess_memorisation``: the fraction of samples at or above the report's memorisation
      threshold (0.95) may exceed the real-vs-real baseline fraction by at most 0.15.
    * ``max_intensity_kl``: KL(real ‖ synthetic) of the intensity histograms ≤ 0.5 nats (the
      baseline is ~0.003; a 1-pixel blur gives 0.1, a +50 HU shift 4, bone-white saturation 6).
    * ``max_tissue_tv`` (CT): total variation between tissue-class fractions ≤ 0.15 (a +50 HU
      shift gives 0.12, +100 HU 0.43, the baseline 0.02).
    """

    max_copy_fraction: float = 0.05
    max_excess_memorisation: float = 0.15
    max_intensity_kl: float = 0.5
    max_tissue_tv: float = 0.15


def bundled_packs() -> list[Path]:
    """Folders under the installed package's ``packs/`` that hold a ``pack.json``."""
    root = bundled_packs_dir()
    return sorted(p for p in root.iterdir() if (p / "pack.json").is_file()) if root.is_dir() else []


def _sources_match(dataset: Path, pack: ModelPack) -> bool:
    wanted = {str(s.get("sha256")) for s in pack.metadata.data_sources if s.get("sha256")}
    if not wanted:
        return True
    ds = load_real_dataset(dataset, "train")
    from medsynth.dataset import load_dataset

    have = {s.sha256 for s in load_dataset(ds.path).manifest.sources}
    return wanted <= have


def training_dataset(pack: ModelPack, shared_data: Path | None, workdir: Path) -> Path:
    """The prepared training dataset of ``pack`` (see the module docstring); EvaluationError if none."""
    tried: list[str] = []
    env = os.environ.get(ENV_DATASETS)
    candidates = []
    if env:
        candidates.append(Path(env) / pack.metadata.model_id)
    recorded = pack.metadata.training.get("dataset_path")
    if isinstance(recorded, str):
        candidates.append(Path(recorded))
    for c in candidates:
        if (c / "manifest.json").is_file():
            if _sources_match(c, pack):
                return c
            tried.append(f"{c} (other sources than pack.json's data_sources)")
        else:
            tried.append(f"{c} (no dataset)")
    recipes = pack.metadata.training.get("prepare")
    if isinstance(recipes, list) and recipes:
        if shared_data is None:
            raise EvaluationError("the pack's training.prepare recipe needs the shared data folder", pack.root)
        return rebuild_dataset(recipes, shared_data, workdir, pack.metadata.presets[0], pack.root)
    tried.append("pack.json training.prepare (absent)")
    raise EvaluationError(
        f"no training dataset for pack {pack.metadata.model_id}: tried {'; '.join(tried)}. "
        f"Set ${ENV_DATASETS} to a folder holding {pack.metadata.model_id}/ or add a training.prepare recipe",
        pack.root,
    )


def rebuild_dataset(recipes: list[Any], shared_data: Path, workdir: Path, preset: str, where: Path) -> Path:
    """Prepare each ``training.prepare`` recipe part under ``workdir`` and concatenate them (a dataset folder)."""
    from medsynth.dataset import DatasetManifest, load_dataset, save_dataset
    from medsynth.prepare import PrepareConfig, ZRange, prepare_dataset

    parts = []
    for k, r in enumerate(recipes):
        if not isinstance(r, dict) or not isinstance(r.get("inputs"), list):
            raise EvaluationError(f"training.prepare[{k}] must be an object with an 'inputs' list", where)
        opts = {key: r[key] for key in ("preset", "label", "slice_spacing_mm", "split", "min_body_fraction",
                                        "label_from_folder", "n4") if r.get(key) is not None}
        if r.get("z_range"):
            opts["z_range"] = ZRange.parse(str(r["z_range"]))
        opts.setdefault("preset", preset)
        out = workdir / f"part{k}"
        prepare_dataset([shared_data / str(i) for i in r["inputs"]], out, PrepareConfig(**opts))
        parts.append(load_dataset(out))
    if len(parts) == 1:
        return parts[0].root
    names = parts[0].manifest.labels
    if any(p.manifest.labels != names or p.manifest.matrix != parts[0].manifest.matrix for p in parts):
        raise EvaluationError("training.prepare parts differ in labels or matrix", where)
    m0 = parts[0].manifest
    sources = tuple(s for p in parts for s in p.manifest.sources)
    offsets = np.cumsum([0] + [len(p.manifest.sources) for p in parts])
    merged = DatasetManifest(
        m0.preset, m0.matrix, m0.pixel_spacing_mm, m0.physical_range, m0.unit, names, sources,
        tuple(int(s) + int(offsets[i]) for i, p in enumerate(parts) for s in p.manifest.slice_sources),
    )
    out = workdir / "dataset"
    save_dataset(out, merged, np.concatenate([np.asarray(p.slices) for p in parts]),
                 np.concatenate([np.asarray(p.labels) for p in parts]),
                 np.concatenate([np.asarray(p.positions) for p in parts]))
    return out


def sample_pack(
    pack: ModelPack, labels: npt.NDArray[np.int64], positions: npt.NDArray[np.float32], seed: int = 0,
    batch: int = 16,
) -> npt.NDArray[np.float32]:
    """Sample one image per entry of ``labels`` ``[N]`` (class indices) / ``positions`` ``[N]`` with the pack's
    default sampler, steps and guidance, on the CPU → ``[N, H, W]`` in model space."""
    from medsynth.sampling.diffusion import DiffusionSchedule
    from medsynth.sampling.runtime import open_denoiser
    from medsynth.sampling.samplers import Conditioning, SamplerConfig, numpy_noise, sample

    meta = pack.metadata
    denoiser = open_denoiser(pack, device="cpu")
    schedule = DiffusionSchedule.from_config(meta.schedule)
    # pack.json may spell the sampler "dpmpp_2m" (export) where the sampler names it "dpmpp-2m"
    sampler = meta.default_sampler.replace("_", "-")
    cfg = SamplerConfig(sampler=sampler, steps=meta.default_steps,  # type: ignore[arg-type]
                        guidance=meta.default_guidance)
    rng = np.random.default_rng(seed)
    h, w = meta.matrix
    out = []
    for s in range(0, len(labels), batch):
        lab = labels[s : s + batch].astype(np.int64)
        cond = Conditioning(lab, meta.null_class,
                            positions[s : s + batch].astype(np.float32) if meta.uses_position else None)
        x_t = rng.standard_normal((len(lab), 1, h, w), dtype=np.float32)
        out.append(sample(denoiser, schedule, meta.prediction_type, x_t, cond, cfg, noise=numpy_noise(rng))[:, 0])
    return np.concatenate(out).astype(np.float32)


def evaluate_pack(
    pack_dir: Path, shared_data: Path | None, n_images: int = 64, seed: int = 0,
    config: EvaluationConfig | None = None,
) -> tuple[EvaluationReport, ModelPack]:
    """Sample ``n_images`` from the pack (conditions and positions drawn from its training set) and
    evaluate them against the training set (real = train)."""
    from medsynth.evaluation.inputs import ImageSet

    pack = load_pack(pack_dir)
    with tempfile.TemporaryDirectory(prefix="medsynth-eval-") as tmp:
        ds_path = training_dataset(pack, shared_data, Path(tmp))
        real = load_real_dataset(ds_path, "train")
        from medsynth.dataset import load_dataset

        positions_all = np.asarray(load_dataset(ds_path).positions, dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(real), size=n_images, replace=len(real) < n_images)
    names = real.class_names
    lut = np.array([pack.metadata.labels.index(n) if n in pack.metadata.labels else -1 for n in names])
    labels = lut[real.labels[pick]]
    if np.any(labels < 0):
        raise EvaluationError(f"the training set has labels {list(names)} the pack does not know "
                              f"({list(pack.metadata.labels)})", pack.root)
    images = sample_pack(pack, labels, positions_all[pick], seed=seed)
    synth = ImageSet(pack.root, "dataset", images, real.labels[pick], names, real.physical_range, real.unit,
                     real.preset)
    return evaluate_sets(real, synth, real, config or EvaluationConfig(seed=seed)), pack


def check_thresholds(report: EvaluationReport, t: PackThresholds | None = None) -> list[str]:
    """The thresholds a pack's evaluation breaks, as sentences (empty: it passes)."""
    t = t or PackThresholds()
    m = report.data["metrics"]
    fails = []
    memo = m["memorisation"]
    copy_frac = memo["fraction_copies"]["synthetic"]
    if copy_frac > t.max_copy_fraction:
        fails.append(f"{copy_frac:.1%} of samples are copies of a training image (SSIM >= {memo['copy_threshold']}); "
                     f"allowed {t.max_copy_fraction:.0%}")
    fa = memo["fraction_above"]
    if fa["synthetic"] > fa["baseline"] + t.max_excess_memorisation:
        fails.append(f"{fa['synthetic']:.1%} of samples have a training image at SSIM >= {memo['threshold']} "
                     f"vs {fa['baseline']:.1%} for real images; allowed +{t.max_excess_memorisation:.0%}")
    kl = m["intensity"]["kl"]["synthetic"]
    if kl > t.max_intensity_kl:
        fails.append(f"intensity histogram KL {kl:.3f} > {t.max_intensity_kl}")
    if m.get("tissue_fractions"):
        tv = m["tissue_fractions"]["total_variation"]["synthetic"]
        if tv > t.max_tissue_tv:
            fails.append(f"tissue-class fractions differ by {tv:.3f} (total variation) > {t.max_tissue_tv}")
    return fails


def markdown_block(report: EvaluationReport, pack: ModelPack, thresholds: PackThresholds | None = None) -> str:
    """A markdown section for the pack's MODEL_CARD.md and QUALITY.md."""
    from medsynth.evaluation.report import summary_rows

    d = report.data
    p = d["protocol"]
    lines = [
        f"### {pack.metadata.model_id}: measured quality (`medsynth evaluate`, medsynth {d['software_version']})",
        "",
        f"{p['synthetic_used']} samples ({pack.metadata.default_sampler}, {pack.metadata.default_steps} steps, "
        f"guidance {pack.metadata.default_guidance:g}, seed {p['seed']}) against the training set "
        f"({d['inputs']['real']['images']} images: real half B n={p['real_half_b']}, baseline real half A "
        f"n={p['real_half_a']}).",
        "",
        "| metric | synthetic vs real | real vs real (baseline) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(d)]
    tf = d["metrics"].get("tissue_fractions")
    if tf:
        lines += ["", "| tissue class | real | synthetic |", "|---|---:|---:|"]
        lines += [f"| {k} | {tf['real_b'][k]:.3f} | {tf['synthetic'][k]:.3f} |" for k in tf["real_b"]]
    fails = check_thresholds(report, thresholds)
    lines += ["", "Acceptance thresholds (QUALITY.md): " + ("all met." if not fails else "NOT met: " + "; ".join(fails))]
    return "\n".join(lines) + "\n"
