"""The report's pictures as PNG bytes, drawn with Pillow (no matplotlib dependency).

Plots are simple line charts drawn by hand with ``PIL.ImageDraw``: matplotlib is not a
dependency of medsynth and a few histograms do not justify one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from medsynth.evaluation.inputs import ImageSet
from medsynth.evaluation.metrics import NN_SSIM_EDGES, histogram_counts

COLOURS = {"real B": (31, 119, 180), "synthetic": (230, 110, 20), "real A": (140, 140, 140),
           "synthetic vs train": (230, 110, 20), "real A vs real B": (31, 119, 180)}
_FONT = ImageFont.load_default()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _display_window(real: ImageSet) -> tuple[float, float]:
    """(low, high) physical values shown black..white: the preset's first window, else the full range."""
    from medsynth.errors import ConfigError
    from medsynth.presets import get_preset

    if real.preset:
        try:
            w = get_preset(real.preset).windows[0]
            return w.center - w.width / 2.0, w.center + w.width / 2.0
        except (ConfigError, IndexError):
            pass
    return real.physical_range


def _to_uint8(real: ImageSet, img: npt.NDArray[np.float32], window: tuple[float, float]) -> Image.Image:
    phys = real.to_physical(img)
    lo, hi = window
    g = np.clip((phys - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    return Image.fromarray(np.rint(g).astype(np.uint8), mode="L")


def _tile(real: ImageSet, img: npt.NDArray[np.float32], window: tuple[float, float], size: int) -> Image.Image:
    return _to_uint8(real, img, window).resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def sample_grid(real: ImageSet, real_imgs: npt.NDArray[np.float32], synth_imgs: npt.NDArray[np.float32],
                per_row: int = 8, rows: int = 2, size: int = 96) -> bytes:
    """Real images (top block) over synthetic images (bottom block), each ``rows`` × ``per_row`` tiles."""
    window = _display_window(real)
    pad, head = 4, 18
    width = per_row * (size + pad) + pad
    height = 2 * (head + rows * (size + pad)) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for title, imgs in (("real (half B)", real_imgs), ("synthetic", synth_imgs)):
        draw.text((pad, y), f"{title}  window {window[0]:g}..{window[1]:g} {real.unit}", fill=(0, 0, 0), font=_FONT)
        y += head
        for k in range(min(len(imgs), per_row * rows)):
            r, c = divmod(k, per_row)
            canvas.paste(_tile(real, imgs[k], window, size), (pad + c * (size + pad), y + r * (size + pad)))
        y += rows * (size + pad)
    return _png(canvas)


def closest_pairs(real: ImageSet, pairs: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]],
                  threshold: float, size: int = 96) -> bytes:
    """Each synthetic image beside its nearest training image, with their SSIM (red when ≥ threshold)."""
    window = _display_window(real)
    pad, head = 6, 16
    cols = 4
    n_rows = max(1, math.ceil(len(pairs) / cols))
    cell_w = 2 * size + 3 * pad
    canvas = Image.new("RGB", (cols * cell_w + pad, n_rows * (size + head + pad) + pad + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), "closest pairs: synthetic (left) | nearest training image (right)", fill=(0, 0, 0),
              font=_FONT)
    for k, (syn, tr, s) in enumerate(pairs):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * cell_w, head + pad + r * (size + head + pad)
        colour = (200, 0, 0) if s >= threshold else (0, 0, 0)
        draw.text((x0, y0), f"SSIM {s:.3f}", fill=colour, font=_FONT)
        canvas.paste(_tile(real, syn, window, size), (x0, y0 + head))
        canvas.paste(_tile(real, tr, window, size), (x0 + size + pad, y0 + head))
    return _png(canvas)


def line_plot(series: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]], title: str,
              xlabel: str, ylabel: str, log_y: bool = False, vline: float | None = None,
              size: tuple[int, int] = (720, 340)) -> bytes:
    """A line chart of ``{name: (x, y)}`` with axes, ticks, legend and an optional vertical marker."""
    w, h = size
    left, right, top, bottom = 64, 16, 36, 44
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    xs = np.concatenate([v[0] for v in series.values()]) if series else np.array([0.0, 1.0])
    ys_raw = [np.asarray(v[1], dtype=np.float64) for v in series.values()]
    floor = 1e-5
    ys_t = [np.log10(np.maximum(y, floor)) if log_y else y for y in ys_raw]
    all_y = np.concatenate(ys_t) if ys_t else np.array([0.0, 1.0])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = (float(all_y.min()), float(all_y.max())) if log_y else (0.0, float(all_y.max()))
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y1 = y0 + 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    draw.text((left, 4), title, fill=(0, 0, 0), font=_FONT)
    draw.text((w // 2 - 3 * len(xlabel), h - 16), xlabel, fill=(0, 0, 0), font=_FONT)
    draw.text((4, 20), ylabel + (" (log10)" if log_y else ""), fill=(0, 0, 0), font=_FONT)
    for t in np.linspace(x0, x1, 6):
        p = px(float(t), y0)
        draw.line([p, (p[0], p[1] + 4)], fill=(0, 0, 0))
        draw.text((p[0] - 14, p[1] + 6), f"{t:.3g}", fill=(0, 0, 0), font=_FONT)
    for t in np.linspace(y0, y1, 5):
        p = px(x0, float(t))
        draw.line([(p[0] - 4, p[1]), p], fill=(0, 0, 0))
        draw.text((4, p[1] - 6), f"{t:.3g}", fill=(0, 0, 0), font=_FONT)
    if vline is not None and x0 <= vline <= x1:
        a, b = px(vline, y0), px(vline, y1)
        draw.line([a, b], fill=(200, 0, 0), width=1)
        draw.text((b[0] + 3, b[1] + 2), f"{vline:g}", fill=(200, 0, 0), font=_FONT)
    for k, ((name, (x, _)), y) in enumerate(zip(series.items(), ys_t, strict=True)):
        colour = COLOURS.get(name, (0, 150, 0))
        pts = [px(float(a), float(b)) for a, b in zip(x, y, strict=True)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        lx, ly = w - right - 170, top + 6 + 14 * k
        draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=colour, width=3)
        draw.text((lx + 26, ly), name, fill=(0, 0, 0), font=_FONT)
    return _png(canvas)


def _density(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                                                         npt.NDArray[np.float64]]:
    c = histogram_counts(values, edges).astype(np.float64)
    return (edges[:-1] + edges[1:]) / 2.0, c / max(c.sum(), 1.0)


def make_figures(
    real: ImageSet,
    b: npt.NDArray[np.float32],
    s: npt.NDArray[np.float32],
    a: npt.NDArray[np.float32],
    counts: dict[str, npt.NDArray[np.int64]],
    edges: npt.NDArray[np.float64],
    nn_within: dict[str, npt.NDArray[np.float64]],
    memo_nn: npt.NDArray[np.float64] | None,
    baseline_nn: npt.NDArray[np.float64],
    threshold: float,
    pairs: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]],
) -> dict[str, bytes]:
    """All PNGs of the report by file name."""
    centres = (edges[:-1] + edges[1:]) / 2.0
    def spread(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:  # evenly over the set (slice order)
        return x[np.unique(np.linspace(0, len(x) - 1, min(16, len(x))).astype(np.int64))]

    figs = {"sample_grid.png": sample_grid(real, spread(b), spread(s))}
    hist = {name: (centres, counts[k] / max(counts[k].sum(), 1)) for name, k in
            (("real B", "b"), ("synthetic", "s"), ("real A", "a"))}
    figs["histograms.png"] = line_plot(hist, "intensity histograms", real.unit, "fraction of pixels", log_y=True)
    if nn_within:
        figs["nearest_ssim.png"] = line_plot({k: _density(v, NN_SSIM_EDGES) for k, v in nn_within.items()},
                                             "diversity: nearest SSIM within each set", "SSIM", "fraction of images")
    if memo_nn is not None:
        figs["memorisation.png"] = line_plot(
            {"synthetic vs train": _density(memo_nn, NN_SSIM_EDGES),
             "real A vs real B": _density(baseline_nn, NN_SSIM_EDGES)},
            "memorisation: SSIM to the nearest training (or real B) image", "SSIM", "fraction of images",
            vline=threshold)
        if pairs:
            figs["closest_pairs.png"] = closest_pairs(real, pairs, threshold)
    return figs
