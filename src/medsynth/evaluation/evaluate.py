"""`medsynth evaluate` as a library function: synthetic images measured against real ones.

Protocol (the same for every metric, so that each number has a real-vs-real baseline beside it):

1. The real set is split at random (seeded) into two disjoint halves, A and B.
2. Half B is the *reference*. The synthetic set and half A are each measured against B in
   exactly the same way: the synthetic value is "synthetic vs real B", the baseline "real A vs
   real B". A synthetic value close to the baseline means "as close to real as other real images".
3. Large sets are subsampled at random (seeded): at most ``max_query`` synthetic images and A
   images, ``max_reference`` B images, ``max_diversity`` per set for the diversity score, and
   ``max_train`` training images for the memorisation search.

Metrics (see QUALITY.md for how to read them):

* SSIM and MSE (the X-ray DDPM paper), with two pairings: *nearest* (each query image with the B
  image of maximal SSIM; its MSE is that pair's MSE) and *random* (each query image with a random
  B image).
* Diversity (MT-DDPM): each image's nearest SSIM within its own set (sets of equal size ``m``:
  B, synthetic and A subsets), and KL(real B ‖ synthetic) between those distributions.
* Intensity agreement (the malaria DDPM paper): histograms in physical units (HU / US),
  KL(real B ‖ synthetic) and a chi-square homogeneity test; for CT, tissue-class fractions.
* Fréchet distance in a fixed offline feature space (:mod:`medsynth.evaluation.features`).
* Classifier test (labelled data): logistic regression trained on real B, accuracy per class on
  real A (held out) and on the synthetic images (labels = generation condition).
* Memorisation (``train`` given): each synthetic image's nearest training image by SSIM; the
  fraction at or above ``memorisation_threshold``. Baseline: real A's nearest in real B.
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

    def __post_init__(self) -> None:
        from medsynth.errors import ConfigError

        for name in ("memorisation_threshold", "copy_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("max_query", "max_reference", "max_diversity", "max_train", "histogram_bins"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} must be at least 2, got {getattr(self, name)}")
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
    synthetic: str | Path,
    output: str | Path | None = None,
    train: str | Path | None = None,
    config: EvaluationConfig | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> EvaluationReport:
    """Measure ``synthetic`` (a prepared dataset, or a generated DICOM/NIfTI folder) against the prepared
    dataset ``real``; with ``train`` (a prepared dataset) also measure memorisation.

    With ``output`` the report folder (report.json, report.html, PNGs) is written atomically; an
    existing non-empty folder is refused unless ``force``. Returns the report.
    Raises :class:`EvaluationError` for unusable inputs (empty sets, mismatched matrix or units).
    """
    from medsynth.evaluation.report import check_output, write_report

    _require_scipy()
    cfg = config or EvaluationConfig()
    out = Path(output) if output is not None else None
    if out is not None:
        check_output(out, force)
    t0 = time.perf_counter()
    real_set = load_real_dataset(real, "real")
    synth_set = load_synthetic(synthetic, real_set)
    train_set = conform(load_real_dataset(train, "train"), real_set, "train") if train is not None else None
    report = evaluate_sets(real_set, synth_set, train_set, cfg, progress)
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
) -> EvaluationReport:
    """The metrics on already loaded sets (all in ``real``'s model space); see the module docstring."""
    from medsynth.evaluation.figures import make_figures

    cfg = config or EvaluationConfig()
    if len(real) < 4:
        raise EvaluationError(f"the real set needs at least 4 images to split into two halves, has {len(real)}",
                              real.path)
    if len(synthetic) < 2:
        raise EvaluationError(f"the synthetic set needs at least 2 images, has {len(synthetic)}", synthetic.path)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(real))
    half = len(real) // 2
    ia = np.sort(perm[:half])[subset(half, cfg.max_query, rng)]
    ib = np.sort(perm[half:])[subset(len(real) - half, cfg.max_reference, rng)]
    isyn = subset(len(synthetic), cfg.max_query, rng)
    sets = _Sets(real.images[ia], real.images[ib], synthetic.images[isyn],
                 real.labels[ia], real.labels[ib], synthetic.labels[isyn])

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    metrics: dict[str, Any] = {}
    # --- SSIM / MSE, nearest and random pairing ------------------------------------------------
    nn_s = M.nearest_ssim(sets.s, sets.b, cfg.ssim, progress=stage("nearest real image (synthetic)"))
    nn_a = M.nearest_ssim(sets.a, sets.b, cfg.ssim, progress=stage("nearest real image (real baseline)"))
    mse_nn_s = M.mse_pairs(sets.s, sets.b[nn_s.index])
    mse_nn_a = M.mse_pairs(sets.a, sets.b[nn_a.index])
    rs = rng.integers(0, len(sets.b), size=len(sets.s))
    ra = rng.integers(0, len(sets.b), size=len(sets.a))
    ssim_r_s, ssim_r_a = M.ssim_pairs(sets.s, sets.b[rs], cfg.ssim), M.ssim_pairs(sets.a, sets.b[ra], cfg.ssim)
    mse_r_s, mse_r_a = M.mse_pairs(sets.s, sets.b[rs]), M.mse_pairs(sets.a, sets.b[ra])
    metrics["ssim_nearest"] = _pair(nn_s.ssim.mean(), nn_a.ssim.mean(), "closer to baseline",
                                    synthetic_std=float(nn_s.ssim.std()), baseline_std=float(nn_a.ssim.std()),
                                    exact_search=nn_s.exact and nn_a.exact)
    metrics["mse_nearest"] = _pair(mse_nn_s.mean(), mse_nn_a.mean(), "closer to baseline",
                                   synthetic_std=float(mse_nn_s.std()), baseline_std=float(mse_nn_a.std()))
    metrics["ssim_random"] = _pair(ssim_r_s.mean(), ssim_r_a.mean(), "closer to baseline",
                                   synthetic_std=float(ssim_r_s.std()), baseline_std=float(ssim_r_a.std()))
    metrics["mse_random"] = _pair(mse_r_s.mean(), mse_r_a.mean(), "closer to baseline",
                                  synthetic_std=float(mse_r_s.std()), baseline_std=float(mse_r_a.std()))

    # --- diversity (MT-DDPM) -----------------------------------------------------------------
    m = min(cfg.max_diversity, len(sets.a), len(sets.b), len(sets.s))
    div: dict[str, Any] = {"set_size": m}
    if m >= 2:
        # random subsets of equal size: the nearest-neighbour SSIM grows with the set's size
        xa, xb, xs = (v[subset(len(v), m, rng)] for v in (sets.a, sets.b, sets.s))
        da = M.nearest_ssim(xa, xa, cfg.ssim, exclude_self=True, progress=stage("diversity (real A)"))
        db = M.nearest_ssim(xb, xb, cfg.ssim, exclude_self=True, progress=stage("diversity (real B)"))
        ds = M.nearest_ssim(xs, xs, cfg.ssim, exclude_self=True, progress=stage("diversity (synthetic)"))
        div.update(
            kl=_pair(M.nn_ssim_kl(db.ssim, ds.ssim), M.nn_ssim_kl(db.ssim, da.ssim), "lower"),
            within_set_nearest_ssim={"synthetic": _stats(ds.ssim), "real_b": _stats(db.ssim),
                                     "real_a": _stats(da.ssim)},
        )
        nn_within = {"real B": db.ssim, "synthetic": ds.ssim, "real A": da.ssim}
    else:
        nn_within = {}
    metrics["diversity"] = div

    # --- intensity agreement -------------------------------------------------------------------
    lo, hi = real.physical_range
    edges = np.linspace(lo, hi, cfg.histogram_bins + 1)
    phys = {k: real.to_physical(v) for k, v in (("b", sets.b), ("s", sets.s), ("a", sets.a))}
    counts = {k: M.histogram_counts(v, edges) for k, v in phys.items()}
    chi_s, chi_a = M.chi_square(counts["b"], counts["s"]), M.chi_square(counts["b"], counts["a"])
    metrics["intensity"] = {
        "unit": real.unit,
        "bins": cfg.histogram_bins,
        "range": [lo, hi],
        "kl": _pair(M.kl_divergence(counts["b"], counts["s"]), M.kl_divergence(counts["b"], counts["a"]), "lower"),
        "chi2_cramers_v": _pair(chi_s.cramers_v, chi_a.cramers_v, "lower"),
        "chi2_test": {"synthetic": asdict(chi_s), "baseline": asdict(chi_a)},
        "mean": _pair(float(phys["s"].mean()), float(phys["a"].mean()), "closer to baseline",
                      real_b=float(phys["b"].mean())),
    }
    if real.unit == "HU":
        tf = {k: M.tissue_fractions(v) for k, v in phys.items()}
        metrics["tissue_fractions"] = {
            "classes_hu": {k: [None if not np.isfinite(a) else a, None if not np.isfinite(b) else b]
                           for k, (a, b) in M.CT_TISSUE_CLASSES.items()},
            "real_b": tf["b"], "synthetic": tf["s"], "real_a": tf["a"],
            "total_variation": _pair(M.total_variation(tf["b"], tf["s"]), M.total_variation(tf["b"], tf["a"]),
                                     "lower"),
        }
    else:
        metrics["tissue_fractions"] = None

    # --- Fréchet distance ------------------------------------------------------------------------
    from medsynth.evaluation.features import FEATURE_SPACE, frechet_distance, image_features, standardiser

    if progress is not None:
        progress("features", 0, 1)
    fb, fs, fa = image_features(sets.b), image_features(sets.s), image_features(sets.a)
    mu, sd = standardiser(fb)
    zb, zs, za = (fb - mu) / sd, (fs - mu) / sd, (fa - mu) / sd
    metrics["frechet"] = _pair(frechet_distance(zb, zs), frechet_distance(zb, za), "lower",
                               feature_space=FEATURE_SPACE)
    if progress is not None:
        progress("features", 1, 1)

    # --- classifier test ----------------------------------------------------------------------
    metrics["classifier"] = _classifier_test(real, sets)

    # --- memorisation ---------------------------------------------------------------------------
    memo_nn: npt.NDArray[np.float64] | None = None
    closest: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]] = []
    if train is not None:
        itr = subset(len(train), cfg.max_train, rng)
        pool = train.images[itr]
        nn_t = M.nearest_ssim(sets.s, pool, cfg.ssim, progress=stage("memorisation (nearest training image)"))
        memo_nn = nn_t.ssim
        thr = cfg.memorisation_threshold
        order = np.argsort(-nn_t.ssim)[: cfg.closest_pairs]
        pairs = [{"synthetic_index": int(isyn[i]), "train_index": int(itr[nn_t.index[i]]),
                  "ssim": float(nn_t.ssim[i])} for i in order]
        closest = [(sets.s[i], pool[nn_t.index[i]], float(nn_t.ssim[i])) for i in order]
        metrics["memorisation"] = {
            "threshold": thr,
            "fraction_above": _pair(np.mean(nn_t.ssim >= thr), np.mean(nn_a.ssim >= thr), "lower"),
            "copy_threshold": cfg.copy_threshold,
            "fraction_copies": _pair(np.mean(nn_t.ssim >= cfg.copy_threshold),
                                     np.mean(nn_a.ssim >= cfg.copy_threshold), "lower"),
            "nearest_train_ssim": _pair(nn_t.ssim.mean(), nn_a.ssim.mean(), "lower",
                                        synthetic_max=float(nn_t.ssim.max()), baseline_max=float(nn_a.ssim.max())),
            "train_images_searched": int(len(pool)),
            "exact_search": nn_t.exact,
            "closest_pairs": pairs,
        }
    else:
        metrics["memorisation"] = None

    data: dict[str, Any] = {
        "format_version": REPORT_FORMAT_VERSION,
        "software_version": __version__,
        "inputs": {"real": real.describe(), "synthetic": synthetic.describe(),
                   "train": train.describe() if train is not None else None},
        "protocol": {
            "seed": cfg.seed,
            "reference": "real half B",
            "baseline": "real half A measured against real half B exactly as the synthetic images are",
            "real_half_a": int(len(sets.a)),
            "real_half_b": int(len(sets.b)),
            "synthetic_used": int(len(sets.s)),
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
                           nn_a.ssim, cfg.memorisation_threshold, closest)
    return EvaluationReport(data, figures)


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
