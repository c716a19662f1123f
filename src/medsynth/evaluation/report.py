"""Writing an evaluation: report.json, a self-contained report.html (PNGs embedded), the PNGs, and a
rich table for the terminal.

The folder is assembled under a temporary name beside the target and renamed into place, so an
interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.errors import OutputError
from medsynth.outputs import require_usable_output

if TYPE_CHECKING:
    from rich.table import Table

    from medsynth.evaluation.evaluate import EvaluationReport

# (JSON path, label, format) of the rows of the summary table
_ROWS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("ssim_nearest",), "SSIM, nearest real image ↑", ".3f"),
    (("mse_nearest",), "MSE, nearest real image ↓", ".4f"),
    (("ssim_random",), "SSIM, random pairs", ".3f"),
    (("mse_random",), "MSE, random pairs", ".4f"),
    (("diversity", "kl"), "diversity: KL of nearest-SSIM distributions ↓", ".3f"),
    (("intensity", "kl"), "intensity histogram KL ↓", ".4f"),
    (("intensity", "chi2_cramers_v"), "intensity chi-square, Cramér's V ↓", ".3f"),
    (("intensity", "mean"), "mean intensity", ".1f"),
    (("tissue_fractions", "total_variation"), "tissue fractions, total variation ↓", ".3f"),
    (("frechet",), "Fréchet distance (fixed features) ↓", ".2f"),
    (("power_spectrum",), "radial power spectrum distance, dB ↓", ".2f"),
    (("adjacent_slices",), "adjacent-slice SSIM (series coherence)", ".3f"),
    (("discriminator",), "real-vs-synthetic discriminator accuracy (0.5 = indistinguishable) ↓", ".3f"),
    (("classifier", "accuracy"), "classifier accuracy (trained on real B)", ".3f"),
    (("train_on_synthetic", "tstr"), "train on synthetic, test on real: balanced accuracy (baseline: as many real) ↑",
     ".3f"),
    (("train_on_synthetic", "augmentation"), "real + synthetic training, balanced accuracy (baseline: real alone) ↑",
     ".3f"),
    (("memorisation", "fraction_above"), "memorisation: fraction ≥ threshold ↓", ".3f"),
    (("memorisation", "fraction_copies"), "memorisation: fraction ≥ copy threshold ↓", ".3f"),
    (("memorisation", "nearest_train_ssim"), "memorisation: mean nearest-train SSIM", ".3f"),
)


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node if isinstance(node, dict) and "synthetic" in node else None


def summary_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, synthetic vs real B, real A vs real B) strings for every metric that was computed."""
    rows = []
    for path, label, fmt in _ROWS:
        node = _get(data["metrics"], path)
        if node is None:
            continue
        if path[0] == "memorisation":
            memo = data["metrics"]["memorisation"]
            label = label.replace("copy threshold", f"{memo['copy_threshold']:g}").replace(
                "threshold", f"{memo['threshold']:g}")
        rows.append((label, _with_ci(node.get("synthetic"), node.get("ci"), fmt),
                     _with_ci(node.get("baseline"), node.get("baseline_ci"), fmt)))
    return rows


def _with_ci(value: float | None, ci: list[float] | None, fmt: str) -> str:
    """``0.123 [0.100, 0.150]`` (the 95 % bootstrap interval when there is one), ``–`` for no value."""
    if value is None:
        return "–"
    text = format(value, fmt)
    return f"{text} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else text


def rich_table(data: dict[str, Any]) -> Table:
    """The summary as a rich Table (synthetic value beside its real-vs-real baseline)."""
    from rich.table import Table

    p = data["protocol"]
    table = Table(title=f"medsynth evaluate — {data['inputs']['synthetic']['path']}",
                  caption=f"synthetic n={p['synthetic_used']} vs real B n={p['real_half_b']}; "
                          f"baseline: real A n={p['real_half_a']} vs real B. ↑/↓: better direction when "
                          "no baseline applies; otherwise closer to the baseline is better.")
    table.add_column("metric")
    table.add_column("synthetic vs real", justify="right")
    table.add_column("real vs real (baseline)", justify="right")
    for row in summary_rows(data):
        table.add_row(*row)
    return table


def check_output(out: Path, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty folder without ``force``."""
    require_usable_output(out, force, "replace the report in it")


def write_report(report: EvaluationReport, out: Path, force: bool = False) -> None:
    """Write report.json, report.html and the PNGs into ``out`` atomically (temp folder, then rename)."""
    check_output(out, force)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot create the report folder ({exc.strerror})", out) from None
    try:
        (tmp / "report.json").write_text(json.dumps(report.data, indent=2) + "\n", encoding="utf-8")
        for name, png in report.figures.items():
            (tmp / name).write_bytes(png)
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
        if out.is_dir():
            # only reached with force (check_output): replace the old report folder
            shutil.rmtree(out)
        tmp.replace(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the report ({exc.strerror or exc})", out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_CAPTIONS = {
    "sample_grid.png": "Real images (half B, top) and synthetic images (bottom), in the preset's first display window.",
    "histograms.png": "Intensity histograms in physical units (log scale): real B, synthetic, real A.",
    "nearest_ssim.png": "Diversity: each image's SSIM to its nearest neighbour within its own set. A synthetic "
                        "curve shifted right of the real ones means less diverse (mode collapse).",
    "memorisation.png": "Each synthetic image's SSIM to its nearest training image, beside the same for real A vs "
                        "real B. The red line is the memorisation threshold.",
    "closest_pairs.png": "The synthetic images closest to a training image, side by side with it.",
}


def render_html(report: EvaluationReport) -> str:
    """A self-contained HTML page: summary table, protocol, pictures (base64 PNG), full JSON."""
    d = report.data
    e = html.escape
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in summary_rows(d))
    figs = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        f"<figcaption>{e(_CAPTIONS.get(name, name))}</figcaption></figure>"
        for name, png in report.figures.items()
    )
    m = d["metrics"]
    extra = ""
    if m.get("tissue_fractions"):
        tf = m["tissue_fractions"]
        extra += "<h2>CT tissue fractions</h2><table><tr><th>class (HU)</th><th>real B</th><th>synthetic</th>" \
                 "<th>real A</th></tr>"
        for k in tf["real_b"]:
            rng = tf["classes_hu"].get(k)
            label = f"{k} [{rng[0]}, {rng[1]})" if rng else f"{k} (none of the above)"
            extra += (f"<tr><td>{e(label)}</td><td>{tf['real_b'][k]:.3f}</td><td>{tf['synthetic'][k]:.3f}</td>"
                      f"<td>{tf['real_a'][k]:.3f}</td></tr>")
        extra += "</table>"
    if m.get("classifier") and m["classifier"].get("synthetic"):
        c = m["classifier"]
        extra += f"<h2>Classifier test</h2><p>{e(c['model'])}</p><table><tr><th>class</th>" \
                 "<th>accuracy on real A (n)</th><th>accuracy on synthetic (n)</th></tr>"
        for k, v in c["real_heldout"].items():
            s = c["synthetic"][k]

            def fmt(x: dict[str, Any]) -> str:
                return "–" if x["accuracy"] is None else f"{x['accuracy']:.3f} ({x['n']})"

            extra += f"<tr><td>{e(k)}</td><td>{fmt(v)}</td><td>{fmt(s)}</td></tr>"
        extra += "</table>"
    protocol = "".join(f"<li><b>{e(str(k))}</b>: {e(json.dumps(v) if not isinstance(v, str) else v)}</li>"
                       for k, v in d["protocol"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medsynth evaluation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{margin:1.5em 0}}img{{max-width:100%}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head><body>
<h1>medsynth evaluation</h1>
<p>Synthetic: <code>{e(d['inputs']['synthetic']['path'])}</code> — real: <code>{e(d['inputs']['real']['path'])}</code>
{'— train: <code>' + e(d['inputs']['train']['path']) + '</code>' if d['inputs']['train'] else ''}</p>
<p>Every synthetic value is measured against real half B; the baseline measures real half A against real half B
in exactly the same way. A synthetic value near its baseline means "as close to real as other real images".</p>
<table><tr><th>metric</th><th>synthetic vs real</th><th>real vs real (baseline)</th></tr>{rows}</table>
{extra}
{figs}
<h2>Protocol</h2><ul>{protocol}</ul>
<h2>report.json</h2><pre>{e(json.dumps(d, indent=2))}</pre>
</body></html>
"""
