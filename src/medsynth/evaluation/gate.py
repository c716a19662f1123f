"""The acceptance gate: thresholds that a bad pack cannot pass.

The thresholds were chosen on the *validation* split of `benchmarks/calibrate_metrics.py`
(real CT volumes and PneumoniaMNIST's val split, degraded in known ways) — never on a pack's own
numbers — and hold on the *test* split (other patients); QUALITY.md prints both tables. Each check
names the bad image sets it stops:

* ``max_copy_excess``: fraction of samples with a training image at SSIM ≥ 0.99 at most 0.05 above
  the same fraction for held-out real patients (copies of training slices: 1.0).
* ``max_discriminator``: cross-validated real-vs-synthetic accuracy ≤ 0.90 (shuffled pixels, blur,
  noise: ≥ 0.95; other real patients: 0.6–0.8 with these few volumes).
* ``max_spectrum_excess_db``: radial power-spectrum distance at most 3 dB above its real-vs-real
  baseline (blur, noise, shuffled pixels: 4–15 dB above).
* ``max_intensity_kl`` 0.5 and ``max_tissue_tv`` 0.15 (CT): first-order statistics (a +50 HU shift:
  KL ≈ 1, TV ≈ 0.1–0.2).
* ``max_adjacent_gap``: mean neighbour SSIM of generated series within 0.15 of real volumes'
  (incoherent series: gap ≥ 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medsynth.evaluation.evaluate import EvaluationReport


@dataclass(frozen=True)
class GateThresholds:
    """See the module docstring for where each number comes from."""

    max_copy_excess: float = 0.05
    max_discriminator: float = 0.90
    max_discriminator_excess: float = 0.10
    max_discriminator_ceiling: float = 0.97
    max_spectrum_excess_db: float = 3.0
    max_frechet_ratio: float = 2.0
    max_intensity_kl: float = 0.5
    max_tissue_tv: float = 0.15
    max_tissue_excess: float = 0.10
    max_adjacent_gap: float = 0.10


def check_gate(report: EvaluationReport | dict[str, Any], t: GateThresholds | None = None) -> list[str]:
    """The gate checks an evaluation breaks, one sentence each (empty: it passes)."""
    t = t or GateThresholds()
    data = report.data if isinstance(report, EvaluationReport) else report
    m = data["metrics"]
    fails: list[str] = []
    memo = m.get("memorisation")
    if memo:
        fc = memo["fraction_copies"]
        if fc["synthetic"] > fc["baseline"] + t.max_copy_excess:
            fails.append(f"copies: {fc['synthetic']:.1%} of samples have a training image at SSIM >= "
                         f"{memo['copy_threshold']} (real baseline: {fc['baseline']:.1%}; allowed +{t.max_copy_excess:.0%})")
    disc = m.get("discriminator")
    if disc and disc.get("synthetic") is not None:
        limit = min(t.max_discriminator_ceiling, max(t.max_discriminator, disc["baseline"] + t.max_discriminator_excess))
        if disc["synthetic"] > limit:
            fails.append(f"discriminator: real and synthetic told apart with accuracy {disc['synthetic']:.2f} "
                         f"> {limit:.2f} (real vs real: {disc['baseline']:.2f})")
    ps = m.get("power_spectrum")
    if ps and ps["synthetic"] > ps["baseline"] + t.max_spectrum_excess_db:
        fails.append(f"power spectrum: {ps['synthetic']:.1f} dB from real vs {ps['baseline']:.1f} dB real vs real "
                     f"(allowed +{t.max_spectrum_excess_db:g} dB)")
    fd = m.get("frechet")
    if fd and fd["synthetic"] > t.max_frechet_ratio * max(fd["baseline"], 1e-6):
        fails.append(f"Fréchet distance {fd['synthetic']:.1f} > {t.max_frechet_ratio:g}x its real-vs-real "
                     f"baseline {fd['baseline']:.1f}")
    kl = m["intensity"]["kl"]["synthetic"]
    if kl > t.max_intensity_kl:
        fails.append(f"intensity histogram KL {kl:.3f} > {t.max_intensity_kl}")
    if m.get("tissue_fractions"):
        tvs = m["tissue_fractions"]["total_variation"]
        limit = max(t.max_tissue_tv, tvs["baseline"] + t.max_tissue_excess)
        if tvs["synthetic"] > limit:
            fails.append(f"tissue-class fractions differ by {tvs['synthetic']:.3f} (total variation) > {limit:.3f}")
    adj = m.get("adjacent_slices")
    if adj and abs(adj["synthetic"] - adj["real_b"]) > t.max_adjacent_gap:
        fails.append(f"series coherence: neighbour SSIM {adj['synthetic']:.3f} vs {adj['real_b']:.3f} in real "
                     f"volumes (allowed ±{t.max_adjacent_gap})")
    return fails
