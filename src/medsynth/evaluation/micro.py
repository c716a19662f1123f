"""Evaluation of colour microscopy packs (``micro-malaria``), as the malaria DDPM paper does it, plus ours.

Three measurements, each beside its real-vs-real baseline (real images always split by patient):

* **Classifier test** (the paper's): a small CNN (:func:`fit_cnn`) is trained on real cells of the
  training patients only; its per-class accuracy on held-out patients' real cells is the baseline,
  its per-class accuracy on synthetic cells of each condition says whether the cells show what
  their label says (a parasitized cell the CNN calls uninfected has no visible parasite).
* **Colour histograms**: KL divergence and chi-square (Cramér's V, the effect size that does not
  grow with the number of pixels) of per-channel 8-bit histograms (R, G, B; 32 bins), synthetic vs
  held-out real cells of the same class; baseline: as many training-patient real cells vs the same
  held-out cells.
* **Memorisation**: each synthetic cell's nearest training cell by SSIM (on luminance); fractions
  at or above 0.95 and 0.99 ("copies"); baseline: held-out real cells against the same training cells.

Arrays are model space float32 [N, 3, H, W] in [-1, 1] (what ``prepare`` writes) unless stated.
Needs torch (the ``[train]`` extra) for the CNN only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation import metrics as M

HIST_BINS = 32
MEMORISATION_THRESHOLD = 0.95
COPY_THRESHOLD = 0.99
#: rows of QUALITY.md's micro gate: synthetic accuracy within this of held-out real, per class
ACCURACY_TOLERANCE = 0.10


# --------------------------------------------------------------------------------------- inputs

def read_dicom_cells(folder: Path) -> npt.NDArray[np.float32]:
    """The RGB images of a ``generate`` DICOM output folder (files in ``manifest.json`` order) →
    model space [N, 3, H, W] (8-bit stored values 0..255 → [-1, 1])."""
    import pydicom

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    out = []
    for rec in manifest["files"]:
        ds = pydicom.dcmread(folder / rec["path"])
        if ds.PhotometricInterpretation != "RGB" or int(ds.SamplesPerPixel) != 3:
            raise EvaluationError("not an RGB image", folder / rec["path"])
        out.append(ds.pixel_array)
    if not out:
        raise EvaluationError("the folder holds no images", folder)
    rgb = np.stack(out).astype(np.float64)  # [N, H, W, 3]
    return (np.moveaxis(rgb, -1, 1) / 127.5 - 1.0).astype(np.float32)


def to_uint8(x: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Model space [..., 3, H, W] → 8-bit values, same layout."""
    return np.clip(np.rint((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def luminance(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Model space RGB [N, 3, H, W] → luminance [N, H, W] (Rec. 601 weights), still in [-1, 1]."""
    a = np.asarray(x, dtype=np.float32)
    return (0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2]).astype(np.float32)


# --------------------------------------------------------------------------------------- classifier

@dataclass(frozen=True)
class CnnConfig:
    """The classifier: three conv blocks (``widths``), global average pooling, a linear layer;
    Adam, ``epochs`` over the training cells in batches of ``batch_size`` with random flips and
    90° rotations (a cell on a slide has no orientation)."""

    widths: tuple[int, ...] = (16, 32, 64)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1


class CnnClassifier:
    """A fitted CNN: :meth:`predict` gives class indices [N] for images [N, 3, H, W]."""

    def __init__(self, net: Any, threads: int) -> None:
        self.net, self.threads = net, threads

    def predict(self, images: npt.ArrayLike, batch: int = 256) -> npt.NDArray[np.int64]:
        import torch

        torch.set_num_threads(self.threads)
        x = np.array(images, dtype=np.float32)  # a writable copy
        out = []
        self.net.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out.append(self.net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).argmax(1).numpy())
        return np.concatenate(out).astype(np.int64)


def fit_cnn(images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int,
            cfg: CnnConfig = CnnConfig()) -> CnnClassifier:
    """Train the classifier on real images [N, 3, H, W] with labels [N] (deterministic in ``cfg.seed``)."""
    import torch
    from torch import nn

    x = np.array(images, dtype=np.float32)  # a writable copy (datasets are memory-mapped read-only)
    y = np.array(labels, dtype=np.int64)
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise EvaluationError(f"need images [N, C, H, W] and labels [N], got {x.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise EvaluationError("the classifier test needs real images of at least two classes")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    layers: list[nn.Module] = []
    c_in = x.shape[1]
    for w in cfg.widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, n_classes))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    net.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = xt[idx]
            k = int(rng.integers(0, 4))
            xb = torch.rot90(xb, k, dims=(2, 3))
            if rng.random() < 0.5:
                xb = torch.flip(xb, dims=(3,))
            loss = nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return CnnClassifier(net, cfg.threads)


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of a proportion k/n (None for n = 0)."""
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def accuracy(pred: npt.NDArray[np.int64], truth: int | npt.NDArray[np.int64]) -> dict[str, Any]:
    """Fraction of ``pred`` equal to ``truth`` with n and its Wilson interval."""
    t = np.broadcast_to(np.asarray(truth), pred.shape)
    k, n = int(np.sum(pred == t)), int(pred.size)
    return {"accuracy": k / n if n else None, "n": n, "ci": wilson_interval(k, n)}


# --------------------------------------------------------------------------------------- histograms

def colour_histograms(x: npt.ArrayLike, bins: int = HIST_BINS) -> npt.NDArray[np.int64]:
    """Per-channel counts [3, bins] of the 8-bit values of RGB images [N, 3, H, W] (model space)."""
    v = to_uint8(x)
    edges = np.linspace(0.0, 256.0, bins + 1)
    return np.stack([M.histogram_counts(v[:, c], edges) for c in range(v.shape[1])])


def colour_distance(a: npt.ArrayLike, b: npt.ArrayLike, bins: int = HIST_BINS) -> dict[str, Any]:
    """KL(a ‖ b) and chi-square (Cramér's V, statistic) of the per-channel colour histograms,
    per channel (R, G, B) and their mean."""
    ha, hb = colour_histograms(a, bins), colour_histograms(b, bins)
    kl = [M.kl_divergence(ha[c], hb[c]) for c in range(3)]
    chi = [M.chi_square(ha[c], hb[c]) for c in range(3)]
    return {"kl": float(np.mean(kl)), "kl_rgb": kl, "cramers_v": float(np.mean([r.cramers_v for r in chi])),
            "cramers_v_rgb": [r.cramers_v for r in chi], "chi2_rgb": [r.statistic for r in chi],
            "dof": chi[0].dof, "bins": bins}


# --------------------------------------------------------------------------------------- memorisation

def nearest_train_ssim(query: npt.ArrayLike, train: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """SSIM [N] of each query cell's nearest training cell (luminance, Gaussian 7×7, data range 2)."""
    return M.nearest_ssim(luminance(query), luminance(train)).ssim


def memorisation(synthetic: npt.ArrayLike, held_out: npt.ArrayLike, train: npt.ArrayLike) -> dict[str, Any]:
    """Nearest-training-cell SSIM of synthetic cells and of held-out real cells (the baseline)."""
    s, h = nearest_train_ssim(synthetic, train), nearest_train_ssim(held_out, train)

    def summary(v: npt.NDArray[np.float64]) -> dict[str, Any]:
        return {"median": float(np.median(v)), "p99": float(np.percentile(v, 99)), "max": float(np.max(v)),
                f"frac_ge_{MEMORISATION_THRESHOLD}": float(np.mean(v >= MEMORISATION_THRESHOLD)),
                f"frac_ge_{COPY_THRESHOLD}": float(np.mean(v >= COPY_THRESHOLD)), "n": int(v.size)}

    syn, base = summary(s), summary(h)
    copies = syn[f"frac_ge_{COPY_THRESHOLD}"] > base[f"frac_ge_{COPY_THRESHOLD}"] + 0.05
    return {"synthetic": syn, "held_out_real": base, "copies": bool(copies), "n_train": int(np.asarray(train).shape[0])}


# --------------------------------------------------------------------------------------- the whole table

def evaluate_micro(train: npt.ArrayLike, train_labels: npt.ArrayLike, held_out: npt.ArrayLike,
                   held_out_labels: npt.ArrayLike, synthetic: Mapping[str, npt.ArrayLike], classes: tuple[str, ...],
                   cnn: CnnConfig = CnnConfig(), seed: int = 0,
                   classifier: CnnClassifier | None = None) -> dict[str, Any]:
    """Every measurement of the module docstring. ``synthetic`` maps a class name to its generated
    cells [N, 3, H, W]; real images come with integer labels indexing ``classes``. ``classifier``:
    a CNN already fitted (with ``cnn``) on these training cells, reused instead of fitting one
    (a sweep over sampling settings judges every setting with the same CNN)."""
    xr, yr = np.asarray(train, np.float32), np.asarray(train_labels, np.int64)
    xh, yh = np.asarray(held_out, np.float32), np.asarray(held_out_labels, np.int64)
    clf = classifier if classifier is not None else fit_cnn(xr, yr, len(classes), cnn)
    pred_h = clf.predict(xh)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"classes": list(classes), "n_train": int(len(xr)), "n_held_out": int(len(xh)),
                           "classifier": {"model": f"CNN {list(cnn.widths)}, {cnn.epochs} epochs, flips/rot90",
                                          "held_out_real_all": accuracy(pred_h, yh)}, "per_class": {}}
    all_syn = []
    for ci, name in enumerate(classes):
        xs = np.asarray(synthetic.get(name, np.zeros((0, *xr.shape[1:]))), np.float32)
        real_h = xh[yh == ci]
        row: dict[str, Any] = {"held_out_real": accuracy(pred_h[yh == ci], ci)}
        if len(xs):
            all_syn.append(xs)
            row["synthetic"] = accuracy(clf.predict(xs), ci)
            gap = row["synthetic"]["accuracy"] - row["held_out_real"]["accuracy"]
            row["accuracy_gap"] = gap
            row["within_tolerance"] = bool(abs(gap) <= ACCURACY_TOLERANCE)
            pool = np.flatnonzero(yr == ci)
            base_idx = rng.choice(pool, size=min(len(pool), len(xs)), replace=False)
            row["colour_synthetic_vs_held_out"] = colour_distance(xs, real_h)
            row["colour_baseline_train_vs_held_out"] = colour_distance(xr[base_idx], real_h)
        out["per_class"][name] = row
    if all_syn:
        out["memorisation"] = memorisation(np.concatenate(all_syn), xh, xr)
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (one row per measurement and class)."""
    def pct(d: dict[str, Any] | None) -> str:
        if not d or d.get("accuracy") is None:
            return "–"
        lo, hi = d["ci"]
        return f"{100 * d['accuracy']:.1f} % [{100 * lo:.0f}–{100 * hi:.0f}] (n {d['n']})"

    lines = ["| measurement | class | synthetic | real-vs-real baseline |", "|---|---|---|---|"]
    for name, row in result["per_class"].items():
        lines.append(f"| CNN accuracy (synthetic vs held-out real patients) | {name} | {pct(row.get('synthetic'))} | "
                     f"{pct(row['held_out_real'])} |")
    for name, row in result["per_class"].items():
        s, b = row.get("colour_synthetic_vs_held_out"), row.get("colour_baseline_train_vs_held_out")
        if s and b:
            lines.append(f"| colour KL (R,G,B mean, nats) | {name} | {s['kl']:.4f} | {b['kl']:.4f} |")
            lines.append(f"| colour chi-square, Cramér's V | {name} | {s['cramers_v']:.4f} | {b['cramers_v']:.4f} |")
    mem = result.get("memorisation")
    if mem:
        s, b = mem["synthetic"], mem["held_out_real"]
        lines.append(f"| nearest-training-cell SSIM, median / max | all | {s['median']:.3f} / {s['max']:.3f} | "
                     f"{b['median']:.3f} / {b['max']:.3f} |")
        lines.append(f"| fraction SSIM ≥ {MEMORISATION_THRESHOLD} / ≥ {COPY_THRESHOLD} (copies) | all | "
                     f"{s[f'frac_ge_{MEMORISATION_THRESHOLD}']:.3f} / {s[f'frac_ge_{COPY_THRESHOLD}']:.3f} | "
                     f"{b[f'frac_ge_{MEMORISATION_THRESHOLD}']:.3f} / {b[f'frac_ge_{COPY_THRESHOLD}']:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- the pack's record

def gate(result: dict[str, Any]) -> list[str]:
    """The failures of QUALITY.md's micro gate: per class, synthetic CNN accuracy more than
    :data:`ACCURACY_TOLERANCE` below (or above) held-out real; copies of training cells."""
    failures = []
    for name, row in result["per_class"].items():
        if "accuracy_gap" in row and not row["within_tolerance"]:
            failures.append(f"classifier accuracy on synthetic {name} cells {100 * row['synthetic']['accuracy']:.1f} % "
                            f"vs {100 * row['held_out_real']['accuracy']:.1f} % on held-out real cells "
                            f"({100 * row['accuracy_gap']:+.1f} points; tolerance ±{100 * ACCURACY_TOLERANCE:.0f})")
    mem = result.get("memorisation")
    if mem and mem["copies"]:
        failures.append("copies of training cells (nearest-train SSIM ≥ 0.99 more often than held-out real + 0.05)")
    return failures


def write_micro_quality(pack_dir: Path, result: dict[str, Any], command: str) -> None:
    """Record ``result`` in the pack: pack.json ``quality`` and MODEL_CARD.md's Quality section (plus
    the data citation, the held-out patients and a gate banner when a threshold is missed)."""
    meta_path = pack_dir / "pack.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    failures = gate(result)
    meta["quality"] = {
        "evaluation": "micro (benchmarks/eval_micro.py)", "command": command, "thresholds_met": not failures,
        "failures": failures,
        "per_class": {k: {"synthetic": v.get("synthetic"), "held_out_real": v["held_out_real"],
                          "accuracy_gap": v.get("accuracy_gap"),
                          "colour_kl": v.get("colour_synthetic_vs_held_out", {}).get("kl"),
                          "colour_kl_baseline": v.get("colour_baseline_train_vs_held_out", {}).get("kl"),
                          "colour_cramers_v": v.get("colour_synthetic_vs_held_out", {}).get("cramers_v"),
                          "colour_cramers_v_baseline": v.get("colour_baseline_train_vs_held_out", {}).get("cramers_v")}
                      for k, v in result["per_class"].items()},
        "memorisation": result.get("memorisation"),
        # a count: patient (slide) ids of the source data never reach a pack; the split rule reproduces them
        "held_out_patients": len(result.get("held_out_patients", [])),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    card_path = pack_dir / "MODEL_CARD.md"
    card = card_path.read_text(encoding="utf-8")
    card = card.replace("**synthetic** GM slices of", "**synthetic** RGB light-microscopy images (thin blood-smear red "
                        "cells, Giemsa) of", 1)
    head, _, rest = card.partition("## Quality")
    _, _, tail = rest.partition("## Limitations")
    head = re.sub(r"> \*\*Below the acceptance gate[^\n]*\n\n", "", head)  # a previous run's banner
    if failures:
        title, _, body = head.partition("\n\n")
        head = (f"{title}\n\n> **Below the acceptance gate of QUALITY.md** ({'; '.join(failures)}). A CPU-trained "
                f"starter pack; `medsynth generate` says so in its notes.\n\n{body}")
    patients = len(result.get("held_out_patients", []))
    quality = (
        "## Quality\n\n"
        f"Measured by `{command}` (medsynth's own `generate` path: DICOM written and read back; "
        f"{result.get('synthetic_per_class', '?')} synthetic cells per condition, seed {result.get('seed', '?')}).\n\n"
        "Data: NIH/NLM malaria cell images, public domain (NLM-produced), from Rajaraman S, Antani SK, Poostchi M, "
        "et al. *Pre-trained convolutional neural networks as feature extractors toward improved malaria parasite "
        "detection in thin blood smear images.* PeerJ 6:e4568 (2018). The 2,400-cell subset in "
        "`../shared/data/micro/malaria_nih_cells/` is split **by patient** (file names carry the slide/patient id): "
        f"{result.get('split', '')}. Training patients: {result['n_train']} cells; held-out patients: "
        f"{result['n_held_out']} cells of {patients} patients (the split rule above reproduces which; their ids "
        "are not repeated in the pack).\n\n"
        "The CNN (the paper's classifier test) is trained on the training patients' real cells only; its accuracy "
        "on the held-out patients' real cells is the baseline for its accuracy on synthetic cells of each "
        "condition. Colour histograms: per-channel 8-bit histograms (32 bins), synthetic vs held-out real cells "
        "of the class, beside as many training-patient real cells vs the same held-out cells. Memorisation: "
        "nearest training cell by SSIM (luminance), beside the held-out real cells' own. Brackets: 95 % Wilson "
        "intervals.\n\n" + markdown_table(result) + "\n\n"
        + (f"Gate: **missed** — {'; '.join(failures)}.\n\n" if failures else "Gate: met (every class within "
           f"{100 * ACCURACY_TOLERANCE:.0f} points of held-out real; no copies).\n\n"))
    tail = ("\n\nEach cell is rescaled to fill the 64×64 matrix (aspect kept, padded with the black smear "
            "background), so relative cell size is not modelled and the files carry no PixelSpacing. Trained on a "
            "CPU for few steps on one public 2,400-cell subset (one lab, one stain protocol): expect the colour range "
            "and cell shapes of this data set, not of other smears. Synthetic cells are not validated for training "
            "or testing parasite detectors for clinical use. Always look at samples before use.\n")
    card_path.write_text(head + quality + "## Limitations" + tail, encoding="utf-8")
