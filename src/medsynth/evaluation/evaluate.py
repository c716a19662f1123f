"""`medsynth evaluate` as a library function: synthetic images measured against real ones.

Protocol (the same for every metric, so that each number has a real-vs-real baseline beside it):

1. The real set (patients the model was not trained on) is split into two halves A and B **by
   volume** — every slice of a volume (patient series) lies on one side
   (:func:`medsynth.evaluation.splits.volume_halves`); a set with a single volume is cut into
   blocks with gaps, and the report says so.
2. Half B is the *reference*. The synthetic set and half A are each measured against B in
   exactly the same way: the synthetic value is "synthetic vs real B", the baseline "real A vs
   real B". A synthetic value close to the baseline means "as close to real as other patients".
3. Large sets are subsampled at random (seeded): at most ``max_query`` synthetic images and A
   images, ``max_reference`` B images, ``max_diversity`` per set for the diversity score, and
   ``max_train`` training images for the memorisation search.
4. Every metric carries a 95 % bootstrap interval (``ci``, ``baseline_ci``), resampling whole
   volumes / generated series.

Metrics (see QUALITY.md for how to read them):

* SSIM and MSE (the X-ray DDPM paper), with two pairings: *nearest* (each query image with the B
  image of maximal SSIM; its MSE is that pair's MSE) and *random* (each query image with a random
  B image). SSIM-based metrics run on area-downsampled working copies of at most
  ``ssim_max_side`` pixels a side (128: 512² CT costs what 128² does).
* Diversity (MT-DDPM): each image's nearest SSIM within its own set (sets of equal size ``m``:
  B, synthetic and A subsets), and KL(real B ‖ synthetic) between those distributions.
* Intensity agreement (the malaria DDPM paper): histograms in physical units (HU / US),
  KL(real B ‖ synthetic) and a chi-square homogeneity test; for CT, tissue-class fractions.
* Fréchet distance in a fixed offline feature space (:mod:`medsynth.evaluation.features`).
* Texture: radial power-spectrum distance (:mod:`medsynth.evaluation.texture`), full resolution.
* Series coherence: mean SSIM of neighbouring slices of a volume / generated series.
* A real-vs-synthetic discriminator (:mod:`medsynth.evaluation.discriminator`): cross-validated
  accuracy, 0.5 = indistinguishable; baseline: real A against real B.
* Per-condition breakdown: intensity KL, spectrum distance, mean intensity, tissue TV per label.
* Classifier test (labelled data): logistic regression trained on real B, accuracy per class on
  real A (held out) and on the synthetic images (labels = generation condition).
* Train-on-synthetic / test-on-real (labelled data): the same classifier trained on as many real-A
  images as there are synthetic ones, on the synthetic images, and on both (augmentation), each
  tested on real B; balanced accuracies with volume-bootstrap intervals.
* Memorisation (``train`` given): each synthetic image's nearest training image by SSIM; the
  fraction at or above ``memorisation_threshold`` and ``copy_threshold``. Baseline: real A's
  nearest training image (held-out patients when ``real`` holds patients not in ``train``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth import __version__
from medsynth.errors import EvaluationError
from medsynth.evaluation import metrics as M
from medsynth.evaluation.discriminator import DiscriminatorKind
from medsynth.evaluation.inputs import ImageSet, conform, load_real_dataset, load_synthetic, subset

REPORT_FORMAT_VERSION = 1
ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class EvaluationConfig:
    """Options of an evaluation. ``memorisation_threshold`` is an SSIM in [0, 1] (see QUALITY.md)."""

    seed: int = 0
    max_query: int = 500
    max_reference: int = 1500
    max_diversity: int = 300
    max_train: int = 5000
    memorisation_threshold: float = 0.95
    copy_threshold: float = 0.99
    histogram_bins: int = 128
    closest_pairs: int = 8
    ssim: M.SSIMConfig = field(default_factory=M.SSIMConfig)
    ssim_max_side: int = 128
    bootstrap: int = 100
    discriminator: DiscriminatorKind = "auto"
    discriminator_folds: int = 5
    max_discriminator: int = 150
    max_adjacent_pairs: int = 300

    def __post_init__(self) -> None:
        from medsynth.errors import ConfigError

        for name in ("memorisation_threshold", "copy_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("max_query", "max_reference", "max_diversity", "max_train", "histogram_bins", "discriminator_folds",
                     "max_discriminator", "max_adjacent_pairs"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} must be at least 2, got {getattr(self, name)}")
        if self.ssim_max_side < 16:
            raise ConfigError(f"ssim_max_side must be at least 16, got {self.ssim_max_side}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.discriminator not in ("auto", "cnn", "logistic"):
            raise ConfigError(f"unknown discriminator {self.discriminator!r}; choose auto, cnn or logistic")
        if self.closest_pairs < 0:
            raise ConfigError(f"closest_pairs must be >= 0, got {self.closest_pairs}")


@dataclass
class EvaluationReport:
    """The result: ``data`` (JSON-ready, what report.json holds) and PNG figures by file name."""

    data: dict[str, Any]
    figures: dict[str, bytes]
    output: Path | None = None


@dataclass(frozen=True)
class _Sets:
    """The arrays the metrics use, all ``[n, H, W]`` in model space."""

    a: npt.NDArray[np.float32]  # real half A (query side of the baseline)
    b: npt.NDArray[np.float32]  # real half B (reference)
    s: npt.NDArray[np.float32]  # synthetic (query)
    a_labels: npt.NDArray[np.int64]
    b_labels: npt.NDArray[np.int64]
    s_labels: npt.NDArray[np.int64]
    a_groups: npt.NDArray[np.int64]  # volume (real) / series (synthetic) of each image
    b_groups: npt.NDArray[np.int64]
    s_groups: npt.NDArray[np.int64]
    a_order: npt.NDArray[np.float32]  # position of the image within its volume/series
    b_order: npt.NDArray[np.float32]
    s_order: npt.NDArray[np.float32]


def _pair(synthetic: float | np.floating[Any], baseline: float | np.floating[Any], better: str, **extra: Any) -> dict[str, Any]:
    """One metric: synthetic-vs-real value, the real-vs-real baseline, and which direction is better."""
    return {"synthetic": float(synthetic), "baseline": float(baseline), "better": better, **extra}


def _stats(v: npt.NDArray[np.float64]) -> dict[str, float]:
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "median": float(np.median(v)),
            "min": float(np.min(v)), "max": float(np.max(v))}


def _require_scipy() -> None:
    """A clean error instead of an ImportError deep inside a metric when scipy is absent."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise EvaluationError("medsynth evaluate needs scipy: pip install 'medsynth[eval]'")


def evaluate(
    real: str | Path,
    synthetic: str | Path | None = None,
    output: str | Path | None = None,
    train: str | Path | None = None,
    config: EvaluationConfig | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    pack: str | Path | None = None,
    pack_images: int = 64,
    pack_steps: int | None = None,
) -> EvaluationReport:
    """Measure ``synthetic`` (a prepared dataset, or a generated DICOM/NIfTI folder) — or, with ``pack``,
    images that :func:`medsynth.generate.generate` makes from that pack (``pack_images`` of them, one
    condition per label of ``real``, the pack's default sampler and guidance, ``pack_steps`` or its
    default steps, written as NIfTI to a temporary folder and read back) — against the prepared
    dataset ``real`` (use patients the model was not trained on); with ``train`` (a prepared
    dataset) also measure memorisation.

    With ``output`` the report folder (report.json, report.html, PNGs) is written atomically; an
    existing non-empty folder is refused unless ``force``. Returns the report.
    Raises :class:`EvaluationError` for unusable inputs (empty sets, mismatched matrix or units).
    """
    import tempfile

    from medsynth.evaluation.report import check_output, write_report

    _require_scipy()
    cfg = config or EvaluationConfig()
    if (synthetic is None) == (pack is None):
        raise EvaluationError("give either the synthetic images or a model pack to generate them with, not both")
    out = Path(output) if output is not None else None
    if out is not None:
        check_output(out, force)
    t0 = time.perf_counter()
    real_set = load_real_dataset(real, "real")
    train_set = conform(load_real_dataset(train, "train"), real_set, "train") if train is not None else None
    with tempfile.TemporaryDirectory(prefix="medsynth-evaluate-") as tmp:
        if pack is not None:
            from medsynth.evaluation.packs import synthesize_with_generate

            if progress is not None:
                progress("generate (medsynth generate)", 0, 1)
            synth_set = synthesize_with_generate(Path(pack), real_set, Path(tmp), pack_images, cfg.seed, pack_steps)
            if progress is not None:
                progress("generate (medsynth generate)", 1, 1)
        else:
            assert synthetic is not None
            synth_set = load_synthetic(synthetic, real_set)
        report = evaluate_sets(real_set, synth_set, train_set, cfg, progress)
    if pack is not None:
        report.data["inputs"]["synthetic"]["path"] = f"medsynth generate --model {pack}"
        report.data["inputs"]["generate"] = {"pack": str(pack), "images": pack_images, "steps": pack_steps,
                                             "format": "nifti"}
    report.data["elapsed_s"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        write_report(report, out, force)
        report.output = out
    return report


def evaluate_sets(
    real: ImageSet,
    synthetic: ImageSet,
    train: ImageSet | None = None,
    config: EvaluationConfig | None = None,
    progress: ProgressCallback | None = None,
    baseline: ImageSet | None = None,
) -> EvaluationReport:
    """The metrics on already loaded sets (all in ``real``'s model space); see the module docstring.

    ``baseline`` (optional): another real set — for a model pack, its *training* patients — measured
    against the whole of ``real`` (held-out patients) as the baseline, instead of splitting ``real``
    into halves: "how close do the patients the model learned from come to unseen patients" is the
    best a perfect generator of them can score, and every held-out volume stays in the reference.
    """
    from medsynth.evaluation.figures import make_figures
    from medsynth.evaluation.splits import Split, volume_halves
    from medsynth.evaluation.texture import working_copy

    cfg = config or EvaluationConfig()
    if len(real) < 4:
        raise EvaluationError(f"the real set needs at least 4 images to split into two halves, has {len(real)}",
                              real.path)
    if len(synthetic) < 2:
        raise EvaluationError(f"the synthetic set needs at least 2 images, has {len(synthetic)}", synthetic.path)
    rng = np.random.default_rng(cfg.seed)
    if baseline is None:
        split = volume_halves(real.groups, real.positions, cfg.seed, real.labels)
        a_set = real
    else:
        split = Split(np.arange(len(baseline), dtype=np.int64), np.arange(len(real), dtype=np.int64),
                      "baseline set: another real set (the training patients) against all of the real set",
                      int(len(np.unique(baseline.groups))), int(len(np.unique(real.groups))))
        a_set = baseline
    ia = split.a[subset(len(split.a), cfg.max_query, rng)]
    ib = split.b[subset(len(split.b), cfg.max_reference, rng)]
    isyn = subset(len(synthetic), cfg.max_query, rng)
    sets = _Sets(np.asarray(a_set.images[ia]), np.asarray(real.images[ib]), np.asarray(synthetic.images[isyn]),
                 a_set.labels[ia], real.labels[ib], synthetic.labels[isyn],
                 a_set.groups[ia], real.groups[ib], synthetic.groups[isyn],
                 a_set.order[ia], real.order[ib], synthetic.order[isyn])
    # SSIM-based metrics on working copies (≤ ssim_max_side px a side); everything else at full resolution
    wa, wb, ws = (working_copy(v, cfg.ssim_max_side) for v in (sets.a, sets.b, sets.s))
    ci = _Bootstrap(cfg, sets)

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    metrics: dict[str, Any] = {}
    # --- SSIM / MSE, nearest and random pairing ------------------------------------------------
    nn_s = M.nearest_ssim(ws, wb, cfg.ssim, progress=stage("nearest real image (synthetic)"))
    nn_a = M.nearest_ssim(wa, wb, cfg.ssim, progress=stage("nearest real image (real baseline)"))
    mse_nn_s = M.mse_pairs(ws, wb[nn_s.index])
    mse_nn_a = M.mse_pairs(wa, wb[nn_a.index])
    rs = rng.integers(0, len(wb), size=len(ws))
    ra = rng.integers(0, len(wb), size=len(wa))
    ssim_r_s, ssim_r_a = M.ssim_pairs(ws, wb[rs], cfg.ssim), M.ssim_pairs(wa, wb[ra], cfg.ssim)
    mse_r_s, mse_r_a = M.mse_pairs(ws, wb[rs]), M.mse_pairs(wa, wb[ra])
    metrics["ssim_nearest"] = ci.pair_means(nn_s.ssim, nn_a.ssim, "closer to baseline",
                                            synthetic_std=float(nn_s.ssim.std()), baseline_std=float(nn_a.ssim.std()),
                                            exact_search=nn_s.exact and nn_a.exact)
    metrics["mse_nearest"] = ci.pair_means(mse_nn_s, mse_nn_a, "closer to baseline",
                                           synthetic_std=float(mse_nn_s.std()), baseline_std=float(mse_nn_a.std()))
    metrics["ssim_random"] = ci.pair_means(ssim_r_s, ssim_r_a, "closer to baseline",
                                           synthetic_std=float(ssim_r_s.std()), baseline_std=float(ssim_r_a.std()))
    metrics["mse_random"] = ci.pair_means(mse_r_s, mse_r_a, "closer to baseline",
                                          synthetic_std=float(mse_r_s.std()), baseline_std=float(mse_r_a.std()))

    # --- diversity (MT-DDPM) -----------------------------------------------------------------
    m = min(cfg.max_diversity, len(sets.a), len(sets.b), len(sets.s))
    div: dict[str, Any] = {"set_size": m}
    if m >= 2:
        # random subsets of equal size: the nearest-neighbour SSIM grows with the set's size
        ja, jb, js = (subset(len(v), m, rng) for v in (wa, wb, ws))
        xa, xb, xs = wa[ja], wb[jb], ws[js]
        da = M.nearest_ssim(xa, xa, cfg.ssim, exclude_self=True, progress=stage("diversity (real A)"))
        db = M.nearest_ssim(xb, xb, cfg.ssim, exclude_self=True, progress=stage("diversity (real B)"))
        dsy = M.nearest_ssim(xs, xs, cfg.ssim, exclude_self=True, progress=stage("diversity (synthetic)"))
        div.update(
            # the interval resamples whole volumes/series (their slices are correlated), not single slices
            kl=ci.pair(lambda q, r: M.nn_ssim_kl(r, q), dsy.ssim, da.ssim, db.ssim, "lower",
                       gs=sets.s_groups[js], ga=sets.a_groups[ja], gr=sets.b_groups[jb]),
            within_set_nearest_ssim={"synthetic": _stats(dsy.ssim), "real_b": _stats(db.ssim),
                                     "real_a": _stats(da.ssim)},
        )
        nn_within = {"real B": db.ssim, "synthetic": dsy.ssim, "real A": da.ssim}
    else:
        nn_within = {}
    metrics["diversity"] = div

    # --- intensity agreement -------------------------------------------------------------------
    lo, hi = real.physical_range
    edges = np.linspace(lo, hi, cfg.histogram_bins + 1)
    per_image = {k: np.stack([M.histogram_counts(real.to_physical(im), edges) for im in v])
                 for k, v in (("b", sets.b), ("s", sets.s), ("a", sets.a))}
    counts = {k: v.sum(axis=0) for k, v in per_image.items()}
    means = {k: real.to_physical(v).mean(axis=(1, 2)) for k, v in (("b", sets.b), ("s", sets.s), ("a", sets.a))}
    chi_s, chi_a = M.chi_square(counts["b"], counts["s"]), M.chi_square(counts["b"], counts["a"])

    def kl(q: npt.NDArray[Any], r: npt.NDArray[Any]) -> float:
        return M.kl_divergence(r.sum(axis=0), q.sum(axis=0))

    def cramers_v(q: npt.NDArray[Any], r: npt.NDArray[Any]) -> float:
        return M.cramers_v(r.sum(axis=0), q.sum(axis=0))

    metrics["intensity"] = {
        "unit": real.unit,
        "bins": cfg.histogram_bins,
        "range": [lo, hi],
        "kl": ci.pair(kl, per_image["s"], per_image["a"], per_image["b"], "lower"),
        "chi2_cramers_v": ci.pair(cramers_v, per_image["s"], per_image["a"], per_image["b"], "lower"),
        "chi2_test": {"synthetic": asdict(chi_s), "baseline": asdict(chi_a)},
        "mean": ci.pair_means(means["s"], means["a"], "closer to baseline", real_b=float(means["b"].mean())),
    }
    tissue: dict[str, npt.NDArray[np.float64]] = {}
    if real.unit == "HU":
        names = list(M.CT_TISSUE_CLASSES) + ["other"]
        tissue = {k: np.array([[M.tissue_fractions(real.to_physical(im))[n] for n in names] for im in v])
                  for k, v in (("b", sets.b), ("s", sets.s), ("a", sets.a))}

        def tv(q: npt.NDArray[Any], r: npt.NDArray[Any]) -> float:
            return float(0.5 * np.abs(q.mean(axis=0) - r.mean(axis=0)).sum())

        tf = {k: dict(zip(names, (float(x) for x in v.mean(axis=0)), strict=True)) for k, v in tissue.items()}
        metrics["tissue_fractions"] = {
            "classes_hu": {k: [None if not np.isfinite(a) else a, None if not np.isfinite(b) else b]
                           for k, (a, b) in M.CT_TISSUE_CLASSES.items()},
            "real_b": tf["b"], "synthetic": tf["s"], "real_a": tf["a"],
            "total_variation": ci.pair(tv, tissue["s"], tissue["a"], tissue["b"], "lower"),
        }
    else:
        metrics["tissue_fractions"] = None

    # --- Fréchet distance ------------------------------------------------------------------------
    from medsynth.evaluation.features import FEATURE_SPACE, frechet_distance, image_features, standardiser

    if progress is not None:
        progress("features", 0, 1)
    fb, fs, fa = (image_features(working_copy(v, 128)) for v in (sets.b, sets.s, sets.a))
    mu, sd = standardiser(fb)
    zb, zs, za = (fb - mu) / sd, (fs - mu) / sd, (fa - mu) / sd
    # the estimate grows as sets shrink: the baseline uses as many real-A images as there are synthetic ones
    i_eq = subset(len(za), len(zs), np.random.default_rng(cfg.seed + 3))
    metrics["frechet"] = ci.pair(frechet_distance, zs, za[i_eq], zb, "lower", feature_space=FEATURE_SPACE,
                                 n_boot=min(cfg.bootstrap, 100), ga=sets.a_groups[i_eq],
                                 baseline_images=int(len(i_eq)))
    if progress is not None:
        progress("features", 1, 1)

    # --- texture: radial power spectrum ------------------------------------------------------------
    from medsynth.evaluation.texture import SPECTRUM_BINS, radial_log_spectra, spectrum_distance

    if progress is not None:
        progress("power spectra", 0, 1)
    spec = {k: radial_log_spectra(v) for k, v in (("b", sets.b), ("s", sets.s), ("a", sets.a))}
    metrics["power_spectrum"] = ci.pair(spectrum_distance, spec["s"], spec["a"], spec["b"], "lower", unit="dB",
                                        bins=SPECTRUM_BINS)
    metrics["power_spectrum"]["mean_log10_power"] = {k: [round(float(x), 4) for x in v.mean(axis=0)]
                                                     for k, v in (("real_b", spec["b"]), ("synthetic", spec["s"]),
                                                                  ("real_a", spec["a"]))}
    if progress is not None:
        progress("power spectra", 1, 1)

    # --- adjacent-slice consistency (series) ----------------------------------------------------------
    metrics["adjacent_slices"] = _adjacent(ci, cfg, sets, (wa, wb, ws))

    # --- real-vs-synthetic discriminator --------------------------------------------------------------
    metrics["discriminator"] = _discriminator(cfg, sets, stage)

    # --- per-condition breakdown ---------------------------------------------------------------
    metrics["per_condition"] = _per_condition(real, ci, sets, per_image, spec, tissue, means)

    # --- classifier test ----------------------------------------------------------------------
    metrics["classifier"] = _classifier_test(real, sets)
    metrics["train_on_synthetic"] = _train_on_synthetic(real, sets, cfg.seed)

    # --- memorisation ---------------------------------------------------------------------------
    memo_nn: npt.NDArray[np.float64] | None = None
    closest: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]] = []
    if train is not None:
        itr = subset(len(train), cfg.max_train, rng)
        pool_full = np.asarray(train.images[itr])
        pool = working_copy(pool_full, cfg.ssim_max_side)
        nn_t = M.nearest_ssim(ws, pool, cfg.ssim, progress=stage("memorisation (nearest training image)"))
        memo_groups = sets.a_groups
        if baseline is not None and (train is baseline or train.path == baseline.path):
            # the baseline set is the training set: its baseline is the held-out patients' nearest training image
            nn_at = M.nearest_ssim(wb, pool, cfg.ssim, progress=stage("memorisation (held-out baseline)"))
            memo_groups = sets.b_groups
        elif train is real or train.path == real.path:
            # real A is part of the training set: its baseline is its nearest image in real B (other volumes)
            nn_at = nn_a
        else:
            nn_at = M.nearest_ssim(wa, pool, cfg.ssim, progress=stage("memorisation (real baseline)"))
        memo_nn = nn_t.ssim
        thr, cthr = cfg.memorisation_threshold, cfg.copy_threshold
        order = np.argsort(-nn_t.ssim)[: cfg.closest_pairs]
        pairs = [{"synthetic_index": int(isyn[i]), "train_index": int(itr[nn_t.index[i]]),
                  "ssim": float(nn_t.ssim[i])} for i in order]
        closest = [(sets.s[i], pool_full[nn_t.index[i]], float(nn_t.ssim[i])) for i in order]
        metrics["memorisation"] = {
            "threshold": thr,
            "baseline_is": ("held-out real patients against the same training images" if memo_groups is sets.b_groups
                            else "real half A against real half B (the real set is the training set)"
                            if nn_at is nn_a else "real half A (held-out patients when --real holds patients "
                            "not in --train) against the same training images"),
            "fraction_above": ci.pair_means((nn_t.ssim >= thr).astype(float), (nn_at.ssim >= thr).astype(float),
                                            "lower", ga=memo_groups),
            "copy_threshold": cthr,
            "fraction_copies": ci.pair_means((nn_t.ssim >= cthr).astype(float), (nn_at.ssim >= cthr).astype(float),
                                             "lower", ga=memo_groups),
            "nearest_train_ssim": ci.pair_means(nn_t.ssim, nn_at.ssim, "lower", ga=memo_groups,
                                                synthetic_max=float(nn_t.ssim.max()),
                                                baseline_max=float(nn_at.ssim.max())),
            "train_images_searched": int(len(pool)),
            "exact_search": nn_t.exact,
            "closest_pairs": pairs,
        }
        nn_a_memo = nn_at.ssim
    else:
        metrics["memorisation"] = None
        nn_a_memo = nn_a.ssim

    data: dict[str, Any] = {
        "format_version": REPORT_FORMAT_VERSION,
        "software_version": __version__,
        "inputs": {"real": real.describe(), "synthetic": synthetic.describe(),
                   "train": train.describe() if train is not None else None,
                   "baseline": baseline.describe() if baseline is not None else None},
        "protocol": {
            "seed": cfg.seed,
            "reference": "real half B" if baseline is None else "the whole real set (B)",
            "baseline": ("real half A measured against real half B exactly as the synthetic images are"
                         if baseline is None else "the baseline set (A) measured against the real set exactly as "
                         "the synthetic images are"),
            "split": split.kind,
            "real_volumes_a": split.volumes_a,
            "real_volumes_b": split.volumes_b,
            "real_half_a": int(len(sets.a)),
            "real_half_b": int(len(sets.b)),
            "synthetic_used": int(len(sets.s)),
            "synthetic_series": int(len(np.unique(sets.s_groups))),
            "confidence_intervals": f"95 % percentile bootstrap, {cfg.bootstrap} resamples of whole volumes/series "
                                    "(query and reference sides; nearest-neighbour metrics resample the query side); "
                                    "plug-in divergences and distances bias-shifted to their point estimate, means "
                                    "and accuracies plain percentile (within their bounds)",
            "resolution": f"SSIM, diversity, nearest-neighbour and memorisation on area-downsampled copies of at most "
                          f"{cfg.ssim_max_side} px a side; Fréchet features on copies of at most 128 px; histograms, "
                          "tissue fractions and power spectra at full resolution",
            "pairing": {
                "nearest": "each query image with the real-B image of maximal SSIM (MSE of that same pair)",
                "random": "each query image with a uniformly random real-B image (seeded)",
            },
            "ssim": {"window": cfg.ssim.window, "sigma": cfg.ssim.sigma, "data_range": cfg.ssim.data_range,
                     "kernel": "gaussian", "region": "valid"},
            "diversity": "nearest SSIM of each image within its own set (sets of equal size), "
                         "KL(real B || synthetic) over 40 bins on [0, 1]",
            "intensity": f"{cfg.histogram_bins}-bin histograms over [{lo:g}, {hi:g}] {real.unit}, "
                         "KL(real B || synthetic) with 0.5 pseudo-counts; Pearson chi-square (Cramer's V)",
            "memorisation_threshold": cfg.memorisation_threshold,
        },
        "metrics": metrics,
    }
    figures = make_figures(real, sets.b, sets.s, sets.a, counts, edges, nn_within, memo_nn,
                           nn_a_memo, cfg.memorisation_threshold, closest)
    return EvaluationReport(data, figures)


def _interval(resampled: npt.NDArray[np.float64], estimate: float, bias_shift: bool = True) -> list[float]:
    """95 % interval of bootstrap ``resampled`` values around the point ``estimate``.

    ``bias_shift`` (plug-in divergences such as KL, the Fréchet distance, total variation): the
    replicates are shifted so that their mean is the estimate — these statistics grow when
    resampling duplicates images, and without the shift their interval would miss the estimate;
    the lower end is clipped at 0. Without it (means, accuracies, fractions — bounded quantities
    whose resampled mean is the estimate already): the plain percentile interval, which stays
    within the range the replicates take (an accuracy of 1.0 everywhere gives [1, 1], never an
    upper end below 1). Either way the interval is widened, if need be, to contain the estimate."""
    vals = resampled[np.isfinite(resampled)]
    if len(vals) == 0:
        return [float(estimate), float(estimate)]
    if bias_shift:
        vals = vals - (float(np.mean(vals)) - float(estimate))
    lo, hi = (float(v) for v in np.percentile(vals, [2.5, 97.5]))
    if bias_shift and resampled.min() >= 0.0:  # a non-negative statistic (divergence, distance) stays so
        lo = max(lo, 0.0)
    return [min(lo, float(estimate)), max(hi, float(estimate))]


class _Bootstrap:
    """Percentile bootstrap CIs of a statistic ``stat(query_items, reference_items)``, resampling
    whole groups (volumes, series) of the query and of the reference (real B) set."""

    def __init__(self, cfg: EvaluationConfig, sets: _Sets) -> None:
        self.n = cfg.bootstrap
        self.seed = cfg.seed
        self.groups = {"s": sets.s_groups, "a": sets.a_groups, "b": sets.b_groups}

    def _ci(self, stat: Callable[[Any, Any], float], q: npt.NDArray[Any], r: npt.NDArray[Any] | None,
            gq: npt.NDArray[np.int64], groups: bool, n_boot: int, gr: npt.NDArray[np.int64] | None = None,
            bias_shift: bool = True) -> list[float] | None:
        from medsynth.evaluation.splits import GroupBootstrap

        if n_boot < 2 or len(q) < 2:
            return None
        rng = np.random.default_rng(self.seed + 7)
        bq = GroupBootstrap(gq if groups else np.arange(len(q)), rng)
        if bq.n_groups < 2:
            return None  # one volume/series: resampling cannot show between-patient variation
        br: GroupBootstrap | None = None
        if r is not None:
            if not groups:
                ref_groups = np.arange(len(r))
            elif gr is not None:
                ref_groups = gr
            elif len(r) == len(self.groups["b"]):
                ref_groups = self.groups["b"]
            else:
                ref_groups = np.arange(len(r))
            br = GroupBootstrap(ref_groups, rng)
        vals = []
        for _ in range(n_boot):
            iq = bq.draw()
            vals.append(stat(q[iq], r if br is None or r is None else r[br.draw()]))
        return _interval(np.asarray(vals, dtype=np.float64), stat(q, r), bias_shift)

    def pair(self, stat: Callable[[Any, Any], float], qs: npt.NDArray[Any], qa: npt.NDArray[Any],
             r: npt.NDArray[Any] | None, better: str, groups: bool = True, n_boot: int | None = None,
             gs: npt.NDArray[np.int64] | None = None, ga: npt.NDArray[np.int64] | None = None,
             gr: npt.NDArray[np.int64] | None = None, bias_shift: bool = True, **extra: Any) -> dict[str, Any]:
        """Synthetic ``stat(qs, r)`` and baseline ``stat(qa, r)`` with their CIs. ``gs``/``ga``/``gr``: the
        groups (volumes/series) of ``qs``/``qa``/``r`` when they are not the sets' own images (default:
        the synthetic / real-A / real-B groups); ``bias_shift``: see :func:`_interval` (False for means)."""
        nb = self.n if n_boot is None else n_boot
        gs = self.groups["s"] if gs is None else gs
        ga = self.groups["a"] if ga is None else ga
        return _pair(stat(qs, r), stat(qa, r), better, ci=self._ci(stat, qs, r, gs, groups, nb, gr, bias_shift),
                     baseline_ci=self._ci(stat, qa, r, ga, groups, nb, gr, bias_shift), **extra)

    def pair_means(self, vs: npt.NDArray[Any], va: npt.NDArray[Any], better: str, **extra: Any) -> dict[str, Any]:
        """Means of per-query-image values (``[n_s]``, ``[n_a]``) with plain percentile CIs."""
        return self.pair(lambda q, _r: float(np.mean(q)), np.asarray(vs, np.float64), np.asarray(va, np.float64),
                         None, better, bias_shift=False, **extra)


def _adjacent(ci: _Bootstrap, cfg: EvaluationConfig, sets: _Sets,
              working: tuple[npt.NDArray[np.float32], ...]) -> dict[str, Any] | None:
    """Mean SSIM of neighbouring slices of one volume/series (working copies), or None without series."""
    from medsynth.evaluation.texture import adjacent_pairs, adjacent_ssim

    wa, wb, ws = working
    pa, pb, ps = (adjacent_pairs(g, o) for g, o in ((sets.a_groups, sets.a_order), (sets.b_groups, sets.b_order),
                                                     (sets.s_groups, sets.s_order)))
    # at most max_adjacent_pairs pairs per set (seeded), which keeps long real volumes cheap
    rng = np.random.default_rng(cfg.seed + 5)
    pa, pb, ps = (p[np.sort(rng.choice(len(p), cfg.max_adjacent_pairs, replace=False))]
                  if len(p) > cfg.max_adjacent_pairs else p for p in (pa, pb, ps))
    if min(len(pa), len(pb), len(ps)) < 2:
        return None
    va, vb, vs = adjacent_ssim(wa, pa, cfg.ssim), adjacent_ssim(wb, pb, cfg.ssim), adjacent_ssim(ws, ps, cfg.ssim)
    return ci.pair(lambda q, _r: float(np.mean(q)), vs, va, None, "closer to baseline",
                   gs=sets.s_groups[ps[:, 0]], ga=sets.a_groups[pa[:, 0]], bias_shift=False, real_b=float(vb.mean()),
                   pairs={"synthetic": int(len(ps)), "real_a": int(len(pa)), "real_b": int(len(pb))},
                   note="neighbours at each set's own slice spacing (generated series: the preset's slice "
                        "thickness; real volumes: as prepared)")


def _discriminator(cfg: EvaluationConfig, sets: _Sets,
                   stage: Callable[[str], Callable[[int, int], None] | None]) -> dict[str, Any] | None:
    """Cross-validated real-vs-synthetic accuracy beside real A vs real B, with CIs (resampled groups)."""
    from medsynth.evaluation.discriminator import discriminate
    from medsynth.evaluation.splits import GroupBootstrap, cv_groups

    def groups(g: npt.NDArray[np.int64], o: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        return cv_groups(g, o, cfg.discriminator_folds)[0]

    gb, gs, ga = groups(sets.b_groups, sets.b_order), groups(sets.s_groups, sets.s_order), \
        groups(sets.a_groups, sets.a_order)
    try:
        p = stage("discriminator")
        if p is not None:
            p(0, 2)
        rs = discriminate(sets.b, gb, sets.s, gs, cfg.discriminator, cfg.seed, cfg.discriminator_folds,
                          cfg.max_discriminator)
        if p is not None:
            p(1, 2)
        ra = discriminate(sets.b, gb, sets.a, ga, cfg.discriminator, cfg.seed, cfg.discriminator_folds,
                          cfg.max_discriminator)
        if p is not None:
            p(2, 2)
    except EvaluationError as exc:
        return {"synthetic": None, "baseline": None, "note": exc.message}

    def boot(r: Any) -> list[float] | None:
        if cfg.bootstrap < 2:
            return None
        gbs = GroupBootstrap(r.groups, np.random.default_rng(cfg.seed + 11))
        vals = []
        for _ in range(cfg.bootstrap):
            i = gbs.draw()
            c, y = r.correct[i], r.labels[i]
            if (y == 0).any() and (y == 1).any():
                vals.append(0.5 * (np.mean(c[y == 0]) + np.mean(c[y == 1])))
        return _interval(np.asarray(vals, dtype=np.float64), r.accuracy, bias_shift=False)

    return _pair(rs.accuracy, ra.accuracy, "lower (0.5 = indistinguishable)", ci=boot(rs), baseline_ci=boot(ra),
                 model=rs.model, folds=rs.folds, images_per_class=int(np.sum(rs.labels == 0)),
                 note="cross-validated balanced accuracy of telling real B from the query set; folds never split "
                      "a volume or series")


def _per_condition(real: ImageSet, ci: _Bootstrap, sets: _Sets, hist: dict[str, npt.NDArray[Any]],
                   spec: dict[str, npt.NDArray[Any]], tissue: dict[str, npt.NDArray[Any]],
                   means: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """Intensity KL, power-spectrum distance, mean intensity and (CT) tissue TV per condition label:
    synthetic images of a condition against real B of that condition, real A of it as the baseline."""
    from medsynth.evaluation.texture import spectrum_distance

    out: dict[str, Any] = {}
    for c, name in enumerate(real.class_names):
        ms, ma, mb = sets.s_labels == c, sets.a_labels == c, sets.b_labels == c
        if ms.sum() < 2 or mb.sum() < 2:
            if ms.any() or mb.any():
                out[name] = {"note": f"too few images (synthetic {int(ms.sum())}, real B {int(mb.sum())}, "
                                     f"real A {int(ma.sum())})"}
            continue
        has_a = ma.sum() >= 2
        entry: dict[str, Any] = {"n": {"synthetic": int(ms.sum()), "real_a": int(ma.sum()), "real_b": int(mb.sum())}}

        def one(stat: Callable[[Any, Any], float], d: dict[str, npt.NDArray[Any]], better: str,
                ms: npt.NDArray[np.bool_] = ms, ma: npt.NDArray[np.bool_] = ma, mb: npt.NDArray[np.bool_] = mb,
                has_a: bool = has_a, bias_shift: bool = True) -> dict[str, Any]:
            qa = d["a"][ma] if has_a else d["s"][ms]
            res = ci.pair(stat, d["s"][ms], qa, d["b"][mb], better, n_boot=min(ci.n, 100),
                          gs=sets.s_groups[ms], ga=sets.a_groups[ma] if has_a else sets.s_groups[ms],
                          gr=sets.b_groups[mb], bias_shift=bias_shift)
            if not has_a:
                res["baseline"], res["baseline_ci"] = None, None
            return res

        entry["intensity_kl"] = one(lambda q, r: M.kl_divergence(r.sum(axis=0), q.sum(axis=0)), hist, "lower")
        entry["power_spectrum_db"] = one(spectrum_distance, spec, "lower")
        entry["mean_intensity"] = one(lambda q, _r: float(np.mean(q)), means, "closer to baseline", bias_shift=False)
        if tissue:
            entry["tissue_tv"] = one(lambda q, r: float(0.5 * np.abs(q.mean(axis=0) - r.mean(axis=0)).sum()),
                                     tissue, "lower")
        if not has_a:
            entry["note"] = "no real-A image of this condition: no baseline (too few held-out volumes)"
        out[name] = entry
    return out


def _classifier_test(real: ImageSet, sets: _Sets) -> dict[str, Any] | None:
    """Malaria-DDPM classifier test, or None when the data are not labelled with ≥ 2 classes."""
    from medsynth.evaluation.classifier import fit_classifier, per_class_accuracy

    names = real.class_names
    if len(names) < 2:
        return None
    present = [c for c in range(len(names)) if np.sum(sets.b_labels == c) >= 2]
    if len(present) < 2:
        return None
    known = sets.s_labels >= 0
    result: dict[str, Any] = {
        "model": "multinomial logistic regression (L2) on 64 fixed features + 8x8 pixels, trained on real B",
        "trained_on": int(len(sets.b)),
    }
    clf = fit_classifier(sets.b, sets.b_labels, len(names))
    result["real_heldout"] = per_class_accuracy(clf.predict(sets.a), sets.a_labels, names)
    if known.any():
        result["synthetic"] = per_class_accuracy(clf.predict(sets.s[known]), sets.s_labels[known], names)
        acc_s = result["synthetic"]["all"]["accuracy"]
        acc_a = result["real_heldout"]["all"]["accuracy"]
        result["accuracy"] = _pair(acc_s, acc_a, "closer to baseline")
    else:
        result["synthetic"] = None
        result["note"] = "the synthetic images carry no condition labels the real dataset knows"
    return result


def _train_on_synthetic(real: ImageSet, sets: _Sets, seed: int) -> dict[str, Any] | None:
    """Train-on-synthetic / test-on-real and augmentation (:func:`medsynth.evaluation.classifier.train_on_synthetic`):
    classifiers trained on real A (the training patients, for a pack), on the synthetic images and on
    both, tested on real B (held-out patients). ``tstr`` and ``augmentation`` are summary rows:
    synthetic-trained vs as-many-real-trained, and real+synthetic vs the real alone."""
    from medsynth.evaluation.classifier import train_on_synthetic

    if len(real.class_names) < 2:
        return None
    res = train_on_synthetic(sets.a, sets.a_labels, sets.s, sets.s_labels, sets.b, sets.b_labels, sets.b_groups,
                             len(real.class_names), seed)
    if res is None:
        return None
    acc: dict[str, dict[str, Any]] = res["balanced_accuracy"]  # type: ignore[assignment]
    out: dict[str, Any] = dict(res)
    out["tstr"] = {"synthetic": acc["synthetic"]["value"], "ci": acc["synthetic"]["ci"],
                   "baseline": acc["real"]["value"], "baseline_ci": acc["real"]["ci"], "better": "higher"}
    out["augmentation"] = {"synthetic": acc["real+synthetic"]["value"], "ci": acc["real+synthetic"]["ci"],
                           "baseline": acc["real"]["value"], "baseline_ci": acc["real"]["ci"], "better": "higher"}
    return out
