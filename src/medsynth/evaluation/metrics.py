"""Image-set metrics in pure numpy/scipy (no torch): SSIM, MSE, histograms, KL, chi-square, tissue classes.

Every image array here is float32 ``[N, H, W]`` in model space [-1, 1] unless a docstring says
"physical" (HU for CT, scanner units "US" for MR and DX).

SSIM follows Wang et al. (2004) exactly as MONAI's ``SSIMMetric`` and scikit-image compute it with
``gaussian_weights=True``: a normalised Gaussian window (default 7×7, σ = 1.5), "valid" region
only (no padding), constants ``C1 = (0.01·L)²`` and ``C2 = (0.03·L)²`` with ``L = data_range = 2``
for [-1, 1], the SSIM map averaged over the valid pixels. It is written here by hand (not taken
from MONAI or scikit-image) because evaluation must run without torch, and because comparing every
image of one set with every image of another (nearest-neighbour search) needs a vectorised
all-pairs form that neither library offers: the local cross-moments of all pairs of a block are
one batched matrix product over the window's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from medsynth.errors import EvaluationError

FloatArray = npt.NDArray[np.float32]
ProgressFn = Callable[[int, int], None]  # (done, total) units of work


@dataclass(frozen=True)
class SSIMConfig:
    """SSIM parameters. ``data_range`` is 2 for model space [-1, 1]; ``window`` is odd, in pixels."""

    window: int = 7
    sigma: float = 1.5
    data_range: float = 2.0
    k1: float = 0.01
    k2: float = 0.03

    @property
    def c1(self) -> float:
        return (self.k1 * self.data_range) ** 2

    @property
    def c2(self) -> float:
        return (self.k2 * self.data_range) ** 2


def gaussian_window(size: int, sigma: float) -> npt.NDArray[np.float64]:
    """Normalised 2-D Gaussian window ``[size, size]`` (sums to 1)."""
    if size < 1 or size % 2 == 0:
        raise EvaluationError(f"SSIM window must be an odd number of pixels, got {size}")
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    g2 = np.outer(g, g)
    return g2 / g2.sum()


def _check_stack(x: npt.ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise EvaluationError(f"{name} must be images [N, H, W], got shape {a.shape}")
    if a.shape[0] == 0:
        raise EvaluationError(f"{name} holds no images")
    if not np.all(np.isfinite(a)):
        raise EvaluationError(f"{name} contains NaN or infinite values")
    return a


def _patches(x: FloatArray, k: int) -> FloatArray:
    """``[N, H, W]`` → every valid k×k window, ``[N, P, k*k]`` with ``P = (H-k+1)(W-k+1)``."""
    n, h, w = x.shape
    if h < k or w < k:
        raise EvaluationError(f"images of {h}x{w} pixels are smaller than the {k}x{k} SSIM window")
    v = sliding_window_view(x, (k, k), axis=(1, 2))
    return np.ascontiguousarray(v.reshape(n, (h - k + 1) * (w - k + 1), k * k))


def _local_moments(p: FloatArray, g: FloatArray) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Local means and variances ``[N, P]`` from patches ``[N, P, K]`` and flat window ``[K]``."""
    mu = p @ g
    var = (p * p) @ g - mu * mu
    return mu, var


def _ssim_from_moments(
    mx: npt.NDArray[Any], my: npt.NDArray[Any], vx: npt.NDArray[Any], vy: npt.NDArray[Any],
    cxy: npt.NDArray[Any], cfg: SSIMConfig,
) -> npt.NDArray[Any]:
    """SSIM map from broadcastable local moments (mean over the last axis is the caller's job)."""
    c1, c2 = np.float32(cfg.c1), np.float32(cfg.c2)
    num = (2.0 * mx * my + c1) * (2.0 * cxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return num / den


def ssim_pairs(a: npt.ArrayLike, b: npt.ArrayLike, cfg: SSIMConfig = SSIMConfig()) -> npt.NDArray[np.float64]:
    """SSIM of each pair ``(a[i], b[i])``; ``a`` and ``b`` are ``[N, H, W]`` (or one ``[H, W]``). → ``[N]``."""
    x, y = _check_stack(a, "first image set"), _check_stack(b, "second image set")
    if x.shape != y.shape:
        raise EvaluationError(f"paired image sets differ in shape: {x.shape} vs {y.shape}")
    g = gaussian_window(cfg.window, cfg.sigma).ravel().astype(np.float32)
    out = np.empty(x.shape[0], dtype=np.float64)
    h, w = x.shape[1:]
    # patches of a chunk take step·P·K floats: keep them near 64 MB whatever the matrix (512² CT)
    step = int(np.clip(2**24 // max(1, (h - cfg.window + 1) * (w - cfg.window + 1) * cfg.window**2), 1, 256))
    for s in range(0, x.shape[0], step):
        px, py = _patches(x[s : s + step], cfg.window), _patches(y[s : s + step], cfg.window)
        mx, vx = _local_moments(px, g)
        my, vy = _local_moments(py, g)
        cxy = (px * py) @ g - mx * my
        out[s : s + step] = _ssim_from_moments(mx, my, vx, vy, cxy, cfg).mean(axis=1)
    return out


def ssim(a: npt.ArrayLike, b: npt.ArrayLike, cfg: SSIMConfig = SSIMConfig()) -> float:
    """SSIM of two single images ``[H, W]``."""
    return float(ssim_pairs(a, b, cfg)[0])


def ssim_matrix(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    cfg: SSIMConfig = SSIMConfig(),
    block: int = 64,
    progress: ProgressFn | None = None,
) -> npt.NDArray[np.float32]:
    """SSIM between every image of ``a`` ``[Na, H, W]`` and every image of ``b`` ``[Nb, H, W]`` → ``[Na, Nb]``.

    Vectorised: for a block of ``a`` and a block of ``b`` the local cross-moments of all pairs are
    one batched matrix product ``[P, na, K] @ [P, K, nb]`` over the K window pixels. Cost grows as
    ``Na · Nb · P``; :func:`nearest_ssim` searches large sets on a downsampled copy first.
    """
    x, y = _check_stack(a, "first image set"), _check_stack(b, "second image set")
    if x.shape[1:] != y.shape[1:]:
        raise EvaluationError(f"image sets differ in matrix: {x.shape[1:]} vs {y.shape[1:]}")
    k = cfg.window
    g = gaussian_window(k, cfg.sigma).ravel().astype(np.float32)
    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float32)
    blocks_a = range(0, x.shape[0], block)
    blocks_b = range(0, y.shape[0], block)
    total, done = len(blocks_a) * len(blocks_b), 0
    for sa in blocks_a:
        pa = _patches(x[sa : sa + block], k)  # [na, P, K]
        ma, va = _local_moments(pa, g)
        pa_t = np.ascontiguousarray((pa * g).transpose(1, 0, 2))  # [P, na, K], window-weighted
        ma_t, va_t = ma.T[:, :, None], va.T[:, :, None]  # [P, na, 1]
        del pa
        for sb in blocks_b:
            pb = _patches(y[sb : sb + block], k)
            mb, vb = _local_moments(pb, g)
            pb_t = np.ascontiguousarray(pb.transpose(1, 2, 0))  # [P, K, nb]
            mb_t, vb_t = mb.T[:, None, :], vb.T[:, None, :]  # [P, 1, nb]
            out[sa : sa + block, sb : sb + block] = _block_mean_ssim(pa_t, ma_t, va_t, pb_t, mb_t, vb_t, cfg)
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def _block_mean_ssim(
    pa_t: FloatArray, ma_t: FloatArray, va_t: FloatArray,
    pb_t: FloatArray, mb_t: FloatArray, vb_t: FloatArray, cfg: SSIMConfig, chunk: int = 48,
) -> FloatArray:
    """Mean SSIM ``[na, nb]`` of all pairs of two blocks, from weighted patches ``pa_t`` ``[P, na, K]``,
    patches ``pb_t`` ``[P, K, nb]`` and their local moments ``[P, na, 1]`` / ``[P, 1, nb]``.

    Works through the P window positions in chunks small enough to stay in the CPU cache and
    updates in place: about 8× faster here than one pass over the whole ``[P, na, nb]`` block.
    """
    c1, c2 = np.float32(cfg.c1), np.float32(cfg.c2)
    n_pix = pa_t.shape[0]
    acc = np.zeros((pa_t.shape[1], pb_t.shape[2]), dtype=np.float64)
    for s in range(0, n_pix, chunk):
        sl = slice(s, s + chunk)
        cs = np.matmul(pa_t[sl], pb_t[sl])  # E[xy] per pair and pixel
        mm = ma_t[sl] * mb_t[sl]
        cs -= mm  # covariance
        cs *= 2.0
        cs += c2
        mm *= 2.0
        mm += c1
        cs *= mm  # numerator
        den = (ma_t[sl] * ma_t[sl] + c1) + mb_t[sl] * mb_t[sl]
        den *= (va_t[sl] + c2) + vb_t[sl]
        cs /= den
        acc += cs.sum(axis=0, dtype=np.float64)
    return (acc / n_pix).astype(np.float32)


def area_downsample(x: npt.ArrayLike, out_hw: tuple[int, int]) -> FloatArray:
    """Area-average resize of ``[N, H, W]`` to ``[N, h, w]`` (fractional overlaps weighted; exact box mean
    when ``H/h`` and ``W/w`` are integers). Hand-written as two small matrix products so that it is
    vectorised over the whole stack and needs neither PIL nor scipy per image."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    _, h_in, w_in = arr.shape
    rh = _area_matrix(h_in, out_hw[0])
    rw = _area_matrix(w_in, out_hw[1])
    return np.einsum("ih,nhw,jw->nij", rh, arr, rw, optimize=True).astype(np.float32)


def _area_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    edges = np.linspace(0.0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            m[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
        m[i] /= m[i].sum()
    return m.astype(np.float32)


@dataclass(frozen=True)
class NearestResult:
    """For each query image: the index of its nearest pool image by SSIM, and that SSIM."""

    index: npt.NDArray[np.int64]  # [Nq]
    ssim: npt.NDArray[np.float64]  # [Nq]
    exact: bool  # True: brute force at full resolution; False: coarse search + full-resolution rescoring


# Above this many pair-pixels (Nq · Nb · P) the search runs on a 2×-downsampled copy first.
EXACT_SEARCH_BUDGET = 3.0e8


def nearest_ssim(
    query: npt.ArrayLike,
    pool: npt.ArrayLike,
    cfg: SSIMConfig = SSIMConfig(),
    exclude_self: bool = False,
    candidates: int = 8,
    progress: ProgressFn | None = None,
) -> NearestResult:
    """Nearest neighbour by SSIM: for each ``query[i]`` ``[Nq, H, W]`` the ``pool`` image ``[Nb, H, W]`` of
    maximal SSIM.

    ``exclude_self`` (query and pool the same set) skips the diagonal, for within-set diversity.
    Small searches are brute force. Large ones (more than :data:`EXACT_SEARCH_BUDGET` pair-pixels on
    matrices ≥ 48 px) rank every pool image by SSIM on 2×-area-downsampled copies, then rescore the
    ``candidates`` best at full resolution: the returned SSIM is always a true full-resolution SSIM,
    and the neighbour is the true one whenever it ranks among the candidates at half resolution
    (``tests/test_evaluation.py`` checks this against brute force).
    """
    q, p = _check_stack(query, "query images"), _check_stack(pool, "pool images")
    if exclude_self and q.shape[0] != p.shape[0]:
        raise EvaluationError("exclude_self needs the query and pool to be the same set")
    if exclude_self and q.shape[0] < 2:
        raise EvaluationError("within-set nearest neighbours need at least 2 images")
    h, w = q.shape[1:]
    n_pix = (h - cfg.window + 1) * (w - cfg.window + 1)
    coarse = min(h, w) >= 48 and q.shape[0] * p.shape[0] * n_pix > EXACT_SEARCH_BUDGET
    if not coarse:
        m = ssim_matrix(q, p, cfg, progress=progress)
        if exclude_self:
            np.fill_diagonal(m, -np.inf)
        idx = np.argmax(m, axis=1).astype(np.int64)
        return NearestResult(idx, m[np.arange(q.shape[0]), idx].astype(np.float64), exact=True)
    hw = (h // 2, w // 2)
    m = ssim_matrix(area_downsample(q, hw), area_downsample(p, hw), cfg, progress=progress)
    if exclude_self:
        np.fill_diagonal(m, -np.inf)
    k = min(candidates, p.shape[0] - (1 if exclude_self else 0))
    cand = np.argpartition(-m, k - 1, axis=1)[:, :k]  # [Nq, k]
    qi = np.repeat(np.arange(q.shape[0]), k)
    s = ssim_pairs(q[qi], p[cand.ravel()], cfg).reshape(q.shape[0], k)
    best = np.argmax(s, axis=1)
    rows = np.arange(q.shape[0])
    return NearestResult(cand[rows, best].astype(np.int64), s[rows, best], exact=False)


def mse_pairs(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean squared error of each pair ``(a[i], b[i])`` ``[N, H, W]`` in model space → ``[N]``."""
    x, y = _check_stack(a, "first image set"), _check_stack(b, "second image set")
    if x.shape != y.shape:
        raise EvaluationError(f"paired image sets differ in shape: {x.shape} vs {y.shape}")
    d = x.astype(np.float64) - y.astype(np.float64)
    return np.mean(d * d, axis=(1, 2))


def histogram_counts(values: npt.ArrayLike, edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts of ``values`` (any shape) in the bins ``edges``; values outside are clipped into the end bins."""
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    return counts.astype(np.int64)


def kl_divergence(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike, pseudo_count: float = 0.5) -> float:
    """KL(P ‖ Q) in nats between two histograms given as counts over the same bins.

    Each bin gets ``pseudo_count`` added before normalising (additive, Jeffreys-style smoothing),
    so that an empty bin in Q gives a finite value; identical histograms give exactly 0.
    """
    p = np.asarray(p_counts, dtype=np.float64) + pseudo_count
    q = np.asarray(q_counts, dtype=np.float64) + pseudo_count
    if p.shape != q.shape or p.ndim != 1:
        raise EvaluationError(f"histograms must be 1-D and alike, got {p.shape} and {q.shape}")
    p /= p.sum()
    q /= q.sum()
    return float(max(0.0, np.sum(p * np.log(p / q))))


@dataclass(frozen=True)
class ChiSquareResult:
    """Pearson chi-square test of homogeneity of two binned samples (2 × k contingency table).

    ``cramers_v`` = sqrt(chi2 / n) is the effect size: unlike the p-value it does not shrink with the
    number of pixels, which are many and not independent, so it is the number to compare with the
    real-vs-real baseline.
    """

    statistic: float
    dof: int
    p_value: float
    cramers_v: float
    n: int


def chi_square(counts_a: npt.ArrayLike, counts_b: npt.ArrayLike) -> ChiSquareResult:
    """Chi-square homogeneity test (scipy.stats.chi2_contingency) of two count histograms over the same bins."""
    from scipy.stats import chi2_contingency

    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise EvaluationError(f"histograms must be 1-D and alike, got {a.shape} and {b.shape}")
    keep = (a + b) > 0
    table = np.stack([a[keep], b[keep]])
    n = int(table.sum())
    if table.shape[1] < 2:
        # every value in a single bin in both samples: the samples agree perfectly
        return ChiSquareResult(0.0, 0, 1.0, 0.0, n)
    res = chi2_contingency(table, correction=False)
    stat = float(res[0])
    return ChiSquareResult(stat, int(res[2]), float(res[1]), float(np.sqrt(stat / n)), n)


def cramers_v(counts_a: npt.ArrayLike, counts_b: npt.ArrayLike) -> float:
    """Cramér's V = √(χ²/n) of two count histograms, in plain numpy (no test, no p-value): the same
    value as :func:`chi_square`'s, cheap enough for bootstrap resampling."""
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    keep = (a + b) > 0
    table = np.stack([a[keep], b[keep]])
    n = table.sum()
    if table.shape[1] < 2 or n == 0:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    return float(np.sqrt(np.sum((table - expected) ** 2 / expected) / n))


# CT tissue classes in HU, half-open [low, high). Values outside every named class count as "other"
# (partial-volume and contrast-enhanced ranges: -500..-150 and 150..300 HU).
CT_TISSUE_CLASSES: dict[str, tuple[float, float]] = {
    "air": (-np.inf, -900.0),
    "lung": (-900.0, -500.0),
    "fat": (-150.0, -30.0),
    "soft_tissue": (-30.0, 150.0),
    "bone": (300.0, np.inf),
}


def tissue_fractions(hu: npt.ArrayLike) -> dict[str, float]:
    """Fraction of pixels of ``hu`` (any shape, HU) in each of :data:`CT_TISSUE_CLASSES`, plus "other"."""
    v = np.asarray(hu, dtype=np.float64).ravel()
    if v.size == 0:
        raise EvaluationError("no pixels to classify")
    out: dict[str, float] = {}
    for name, (lo, hi) in CT_TISSUE_CLASSES.items():
        out[name] = float(np.mean((v >= lo) & (v < hi)))
    out["other"] = float(max(0.0, 1.0 - sum(out.values())))
    return out


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance ½·Σ|p−q| between two class-fraction dicts with the same keys."""
    return float(0.5 * sum(abs(p[k] - q[k]) for k in p))


NN_SSIM_EDGES = np.linspace(0.0, 1.0, 41)  # 40 bins of 0.025 for nearest-SSIM distributions


def nn_ssim_kl(real_nn: npt.ArrayLike, synth_nn: npt.ArrayLike) -> float:
    """KL(real ‖ synthetic) between two distributions of nearest-neighbour SSIMs (MT-DDPM's diversity
    comparison), histogrammed over [0, 1] in 40 bins (negative SSIMs fall in the first bin) with
    :func:`kl_divergence`'s smoothing."""
    return kl_divergence(histogram_counts(real_nn, NN_SSIM_EDGES), histogram_counts(synth_nn, NN_SSIM_EDGES))
