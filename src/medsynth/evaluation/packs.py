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

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medsynth.errors import EvaluationError
from medsynth.evaluation.evaluate import EvaluationConfig, EvaluationReport, evaluate_sets
from medsynth.evaluation.gate import GateThresholds, check_gate
from medsynth.evaluation.inputs import ImageSet, conform, load_real_dataset
from medsynth.pack import ModelPack, bundled_packs_dir, load_pack

ENV_DATASETS = "MEDSYNTH_PACK_DATASETS"

# Real patients in ../shared/data that the bundled v1 packs were NOT trained on (pack.json
# training.held_out wins). ct-body: no held-out pelvis volume exists (the one pelvic CT is in its
# training set), so pelvis has no held-out number. mr-brain and mr-cardiac: every usable volume of
# that kind is in the training set, so they are measured against their training data, and say so.
HELD_OUT: dict[str, list[dict[str, Any]]] = {
    "ct-body": [
        # (the cardiac CTAs are cropped to the heart, ~18 cm field of view: not chest CTs like the training ones)
        {"inputs": ["ct/chest_lungpetctdx_A0001_kernel_B.nii.gz"], "label": "chest", "slice_spacing_mm": 0},
        {"inputs": ["ct/abdomen_pancreasctcbct_001.nii.gz"], "label": "abdomen", "slice_spacing_mm": 0},
    ],
    "xr-chest": [{"inputs": ["xr/pneumoniamnist_28.npz"], "split": "test"}],
}


def bundled_packs() -> list[Path]:
    """Folders under the installed package's ``packs/`` that hold a ``pack.json`` of a grey pixel-space
    pack (colour packs, pack.json ``channels`` 3, are measured by ``benchmarks/eval_micro.py`` and latent
    packs, a ``latent`` block, by ``benchmarks/eval_latent.py`` instead)."""
    root = bundled_packs_dir()
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if (p / "pack.json").is_file())
    metas = {p: json.loads((p / "pack.json").read_text(encoding="utf-8")) for p in found}
    return [p for p in found if metas[p].get("channels", 1) == 1 and not metas[p].get("latent")]


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
                 np.concatenate([np.asarray(p.positions) for p in parts]), _merged_volumes(parts))
    return out


def _merged_volumes(parts: list[Any]) -> npt.NDArray[np.int64]:
    """Volume index per slice of concatenated datasets: one scan prepared in two parts (e.g. its
    pelvis and abdomen z ranges) stays one volume — keyed by source sha256 and volume within it."""
    from medsynth.dataset import slice_volumes

    keys: dict[tuple[str, int], int] = {}
    out = []
    for part in parts:
        vols = slice_volumes(part)
        srcs = part.manifest.slice_sources
        for i, v in enumerate(vols.tolist()):
            sha = part.manifest.sources[srcs[i]].sha256 if len(srcs) == len(vols) else f"part{id(part)}"
            key = (sha, int(v))
            out.append(keys.setdefault(key, len(keys)))
    return np.asarray(out, dtype=np.int64)


def label_seed(seed: int, k: int) -> int:
    """The ``generate`` seed of the ``k``-th label of an evaluation at ``seed``: drawn from
    ``numpy.random.SeedSequence([seed, k])`` (in [0, 2**63)), so that labels and evaluation seeds
    never share noise (``seed + k`` would give label ``k`` at seed ``s`` the noise of label ``k - 1``
    at seed ``s + 1``, and a ``--seed 1`` re-run would repeat most of seed 0's samples)."""
    state = np.random.SeedSequence([int(seed), int(k)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def synthesize_with_generate(
    pack_dir: Path, real: ImageSet, workdir: Path, n_images: int = 64, seed: int = 0, steps: int | None = None,
    output_format: Literal["nifti", "dicom"] = "nifti", threads: int | None = None, sampler: str | None = None,
    series: int | None = None,
) -> ImageSet:
    """Synthetic images made exactly as users get them: :func:`medsynth.generate.generate` writes
    ``output_format`` files under ``workdir`` (the pack's default sampler, steps and guidance; ``steps``
    overrides for quick tests), which are read back like any generated folder.

    One condition per label present in ``real`` (about ``n_images`` in all, shared equally), each
    generated through the pack's preset for that condition (its ``default_condition``, else the
    pack's first preset); series are as long as ``real``'s median volume of that label, so series
    coherence is measured at the length users see. ``series`` instead fixes the number of series per
    label (each about ``n_images / labels / series`` slices, at least 2): a pack whose real set is
    one long volume would otherwise get a handful of series, too few for the intervals that resample
    whole series. → :class:`ImageSet` in ``real``'s model space, ``volumes`` = generated series.
    """
    from medsynth.evaluation.inputs import load_synthetic
    from medsynth.generate import GenerateConfig, generate
    from medsynth.presets import get_preset

    pack = load_pack(pack_dir)
    meta = pack.metadata
    present = [c for c in range(len(real.class_names)) if np.any(real.labels == c)]
    names = [real.class_names[c] for c in present]
    unknown = [n for n in names if n not in meta.labels]
    if unknown:
        raise EvaluationError(f"the real set has labels {unknown} the pack does not know ({list(meta.labels)})",
                              pack.root)
    presets = [get_preset(p) for p in meta.presets]
    per_label = max(2, n_images // max(1, len(names)))
    parts: list[ImageSet] = []
    for k, (c, name) in enumerate(zip(present, names, strict=True)):
        preset = next((p for p in presets if p.default_condition == name), presets[0])
        if preset.is_volume and series is not None:
            length = max(2, int(np.ceil(per_label / max(1, series))))
        elif preset.is_volume:
            sizes = np.bincount(real.groups[real.labels == c])
            length = int(np.clip(np.median(sizes[sizes > 0]), 2, per_label))
        else:
            length = 1
        patients = max(1, int(np.ceil(per_label / length)))
        out = workdir / f"label{k}"
        generate(GenerateConfig(modality=preset.name, out_dir=out, patients=patients, slices=max(length, 2)
                                if preset.is_volume else 1, condition=name, seed=label_seed(seed, k), steps=steps,
                                sampler=sampler, model=pack.root, device="cpu", threads=threads,
                                format=output_format))
        parts.append(load_synthetic(out, real))
    offsets = np.cumsum([0] + [int(p.groups.max()) + 1 for p in parts])
    return ImageSet(
        workdir, parts[0].kind, np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]), real.class_names, real.physical_range, real.unit,
        parts[0].preset, tuple(s for p in parts for s in p.skipped),
        np.concatenate([p.groups + offsets[i] for i, p in enumerate(parts)]),
        np.concatenate([p.order for p in parts]),
    )


def held_out_dataset(pack: ModelPack, shared_data: Path | None, workdir: Path) -> Path | None:
    """Real patients the pack was *not* trained on, prepared like its training set, or None when
    there are none: ``pack.json`` ``training.held_out`` (recipes as ``training.prepare``), else
    :data:`HELD_OUT` for the bundled v1 packs."""
    recipes = pack.metadata.training.get("held_out")
    if not isinstance(recipes, list):
        recipes = HELD_OUT.get(pack.metadata.model_id)
    if not recipes:
        return None
    if shared_data is None:
        raise EvaluationError("the pack's held-out recipe needs the shared data folder", pack.root)
    return rebuild_dataset(recipes, shared_data, workdir, pack.metadata.presets[0], pack.root)


def evaluate_pack(
    pack_dir: Path, shared_data: Path | None, n_images: int = 64, seed: int = 0,
    config: EvaluationConfig | None = None, steps: int | None = None, sampler: str | None = None,
    series: int | None = None,
) -> tuple[EvaluationReport, ModelPack]:
    """Generate ``n_images`` with :func:`medsynth.generate.generate` and evaluate them against real
    patients held out of the pack's training (:func:`held_out_dataset`), with the training set for
    memorisation and as the baseline (training patients measured against the held-out ones). Without held-out patients the training set is the real set, and the report says
    so (``inputs.real_is_training_data``)."""
    pack = load_pack(pack_dir)
    with tempfile.TemporaryDirectory(prefix="medsynth-eval-") as tmp:
        work = Path(tmp)
        train = load_real_dataset(training_dataset(pack, shared_data, work / "train"), "train")
        held = held_out_dataset(pack, shared_data, work / "held_out")
        real = load_real_dataset(held, "real") if held is not None else train
        train = conform(train, real, "train") if held is not None else real
        synth = synthesize_with_generate(pack.root, real, work / "generated", n_images, seed, steps, sampler=sampler,
                                         series=series)
        # baseline: the training patients against the held-out ones (what a perfect generator of them scores)
        report = evaluate_sets(real, synth, train, config or EvaluationConfig(seed=seed),
                               baseline=train if held is not None else None)
        # the images outlive the temporary folder
        report.data["inputs"]["real_is_training_data"] = held is None
        report.data["inputs"]["held_out_recipe"] = pack.metadata.training.get("held_out") or \
            HELD_OUT.get(pack.metadata.model_id)
        report.data["inputs"]["generate"] = {"steps": steps or pack.metadata.default_steps,
                                             "sampler": sampler or pack.metadata.default_sampler,
                                             "guidance": pack.metadata.default_guidance, "format": "nifti"}
    return report, pack


def check_thresholds(report: EvaluationReport, t: GateThresholds | None = None) -> list[str]:
    """The acceptance-gate checks a pack's evaluation breaks (:func:`medsynth.evaluation.gate.check_gate`)."""
    return check_gate(report, t)


def markdown_block(report: EvaluationReport, pack: ModelPack, thresholds: GateThresholds | None = None) -> str:
    """A markdown section for the pack's MODEL_CARD.md and QUALITY.md."""
    from medsynth.evaluation.report import summary_rows

    d = report.data
    p = d["protocol"]
    gen = d["inputs"].get("generate", {})
    if d["inputs"].get("real_is_training_data"):
        against = (f"its **training** set ({d['inputs']['real']['images']} images: "
                   f"{recipe_names(pack.metadata.training.get('prepare'))}): no held-out patient of this "
                   "kind exists in the shared data, so these numbers are not from unseen patients")
    else:
        against = (f"real patients held out of training ({d['inputs']['real']['images']} images, "
                   f"{d['inputs']['real'].get('volumes')} volumes: "
                   f"{recipe_names(d['inputs'].get('held_out_recipe'))}; none of them in the training set "
                   f"{recipe_names(pack.metadata.training.get('prepare'))})")
    per = d["metrics"].get("per_condition") or {}
    lines = [
        f"### {pack.metadata.model_id}: measured quality (`medsynth evaluate`, medsynth {d['software_version']})",
        "",
        f"{p['synthetic_used']} images in {p.get('synthetic_series')} series made by `medsynth generate` "
        f"({gen.get('sampler', pack.metadata.default_sampler)}, {gen.get('steps', pack.metadata.default_steps)} steps, "
        f"guidance {pack.metadata.default_guidance:g}, seed {p['seed']} (one derived seed per label), read back from NIfTI) against {against}. "
        + (f"Baseline: the pack's training patients (n={p['real_half_a']}, {p['real_volumes_a']} volumes) measured "
           f"against the held-out ones (n={p['real_half_b']}, {p['real_volumes_b']} volumes) exactly as the generated "
           "images are. " if d["inputs"].get("baseline") else
           f"Real split by {p['split']}: half B n={p['real_half_b']} ({p['real_volumes_b']} volumes), baseline half A "
           f"n={p['real_half_a']} ({p['real_volumes_a']} volumes). ")
        + "Conditions measured: "
        f"{', '.join(k for k, v in per.items() if 'n' in v) or '–'}. Brackets: 95 % bootstrap intervals.",
        "",
        "| metric | synthetic vs real | real vs real (baseline) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(d)]
    tf = d["metrics"].get("tissue_fractions")
    if tf:
        lines += ["", "| tissue class | real | synthetic |", "|---|---:|---:|"]
        lines += [f"| {k} | {tf['real_b'][k]:.3f} | {tf['synthetic'][k]:.3f} |" for k in tf["real_b"]]
    rows = [(k, v) for k, v in per.items() if "n" in v]
    if rows:
        def cell(x: dict[str, Any] | None, fmt: str) -> str:
            if not x:
                return "–"
            base = "–" if x.get("baseline") is None else format(x["baseline"], fmt)
            return f"{format(x['synthetic'], fmt)} ({base})"

        lines += ["", "| condition (n synthetic / held-out) | intensity KL (baseline) | power spectrum, dB (baseline) "
                      "| tissue TV (baseline) |", "|---|---:|---:|---:|"]
        lines += [f"| {k} ({v['n']['synthetic']} / {v['n']['real_b']}) | {cell(v.get('intensity_kl'), '.3f')} | "
                  f"{cell(v.get('power_spectrum_db'), '.2f')} | {cell(v.get('tissue_tv'), '.3f')} |" for k, v in rows]
        missing = [k for k, v in per.items() if "n" not in v]
        if missing:
            lines += ["", f"Not measured (too few images): {', '.join(missing)}."]
    tstr = d["metrics"].get("train_on_synthetic")
    if tstr:
        acc, n = tstr["balanced_accuracy"], tstr["n_train"]
        real_names = list(d["inputs"]["real"].get("labels") or pack.metadata.labels)

        def ba(key: str) -> str:
            v = acc[key]
            ci = f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v.get("ci") else ""
            return f"{v['value']:.3f}{ci}"

        gain = tstr["augmentation_gain"]
        gci = f" [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]" if gain.get("ci") else ""
        cls = ", ".join(real_names[c] for c in tstr.get("classes", []) if c < len(real_names))
        lines += ["", f"Train on synthetic, test on real (classes {cls}; {tstr['n_test']} real images of "
                      f"{'held-out patients' if not d['inputs'].get('real_is_training_data') else 'real half B'}; "
                      f"{tstr['model']}; balanced accuracy):", "",
                  "| classifier trained on | images | balanced accuracy on real |", "|---|---:|---:|",
                  f"| real ({'training patients' if d['inputs'].get('baseline') else 'real half A'}), as many as "
                  f"synthetic | {n['real']} | {ba('real')} |",
                  f"| synthetic (`medsynth generate`) | {n['synthetic']} | {ba('synthetic')} |",
                  f"| real + synthetic (augmentation) | {n['real+synthetic']} | {ba('real+synthetic')} |",
                  f"| every real {'training-patient' if d['inputs'].get('baseline') else 'half-A'} image of the "
                  f"baseline | {n['real_all']} | {ba('real_all')} |",
                  "", f"Augmentation gain (real + synthetic − real): {gain['value']:+.3f}{gci}."]
    fails = check_thresholds(report, thresholds)
    lines += ["", "Acceptance gate (QUALITY.md): " + ("all met." if not fails else "NOT met: " + "; ".join(fails))]
    return "\n".join(lines) + "\n"


def recipe_names(recipes: Any) -> str:
    """The volumes of ``training.prepare`` / held-out recipes as text: input paths (relative to the
    shared data), their label and z range or split."""
    if not isinstance(recipes, list) or not recipes:
        return "–"
    parts = []
    for r in recipes:
        if not isinstance(r, dict):
            continue
        extra = [str(r["label"])] if r.get("label") else []
        if r.get("z_range"):
            extra.append(f"z {r['z_range']}")
        if r.get("split"):
            extra.append(f"{r['split']} split")
        names = ", ".join(f"`{i}`" for i in r.get("inputs", []))
        parts.append(names + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def write_pack_quality(pack_dir: Path, report: EvaluationReport, pack: ModelPack, n_images: int,
                       command: str = "python benchmarks/eval_packs.py --write") -> list[str]:
    """Write one evaluation into the pack: ``pack.json`` ``quality`` (what `generate`'s "below the
    acceptance thresholds" note reads), the ``## Quality`` section of MODEL_CARD.md (the
    :func:`markdown_block`) and the warning under the card's title. Every old number is replaced.
    The ONNX files are untouched (their sha256s stay valid); the pack's identity changes with pack.json.
    → the gate failures."""
    from medsynth.evaluation.report import summary_rows

    d = report.data
    fails = check_thresholds(report)
    held = not d["inputs"].get("real_is_training_data")
    meta_path = pack_dir / "pack.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["quality"] = {
        "measured_by": command,
        "real_set": "held-out patients" if held else "training set (no held-out patient exists)",
        "real_volumes": recipe_names(d["inputs"].get("held_out_recipe")) if held else
        recipe_names(pack.metadata.training.get("prepare")),
        "generate": d["inputs"].get("generate"),
        "evaluated_images": n_images,
        "seed": d["protocol"]["seed"],
        "thresholds_met": not fails,
        "failures": fails,
        "summary": {a: {"synthetic": b, "baseline": c} for a, b, c in summary_rows(d)},
    }
    tstr = d["metrics"].get("train_on_synthetic")
    if tstr:
        meta["quality"]["train_on_synthetic"] = {k: tstr[k] for k in ("n_train", "n_test", "balanced_accuracy",
                                                                    "augmentation_gain")}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    card = pack_dir / "MODEL_CARD.md"
    text = card.read_text(encoding="utf-8")
    head, sep, tail = text.partition("## Quality\n")
    _, sep2, rest = tail.partition("## Limitations")
    if not sep or not sep2:
        raise EvaluationError("MODEL_CARD.md has no '## Quality' / '## Limitations' sections", card)
    title, _, body = head.partition("\n")
    body = "\n".join(line for line in body.split("\n") if not line.startswith("> **Experimental")
                     and not line.startswith("> **Below the acceptance gate"))
    while "\n\n\n" in body:
        body = body.replace("\n\n\n", "\n\n")
    warning = ("" if not fails else
               "\n> **Below the acceptance gate of QUALITY.md** (measured on "
               + ("held-out patients" if held else "its training set") + ": " + "; ".join(fails)
               + "). A CPU-trained starter pack; `medsynth generate` says so in its notes. Retrain it longer "
               "(packaging/packs.toml) before relying on it.\n")
    card.write_text(title + "\n" + warning + "\n" + body.lstrip("\n") + "## Quality\n\n" + block_with_source(report, pack, command)
                    + "\n## Limitations" + rest, encoding="utf-8")
    return fails


def block_with_source(report: EvaluationReport, pack: ModelPack, command: str) -> str:
    """:func:`markdown_block` with the command that measured it."""
    return markdown_block(report, pack) + f"\nMeasured by `{command}` (it writes this section).\n"


# metrics compared by the regression check: (JSON path, better direction)
REGRESSION_METRICS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("discriminator",), "lower"),
    (("power_spectrum",), "lower"),
    (("frechet",), "lower"),
    (("intensity", "kl"), "lower"),
    (("tissue_fractions", "total_variation"), "lower"),
    (("memorisation", "fraction_copies"), "lower"),
    (("diversity", "kl"), "lower"),
)


def _node(metrics: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = metrics
    for k in path:
        node = node.get(k) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and node.get("synthetic") is not None else None


def quality_record(report: EvaluationReport, n_images: int, seed: int, steps: int | None,
                   series: int | None = None) -> dict[str, Any]:
    """What ``benchmarks/pack_quality.json`` keeps per pack: how it was measured (``series``: generated
    series per label, None = as long as the real volumes), the gate's verdict, and the regression
    metrics with their intervals."""
    m = report.data["metrics"]
    rec: dict[str, Any] = {"n_images": n_images, "series": series, "seed": seed, "steps": steps,
                           "discriminator": (m.get("discriminator") or {}).get("model"),
                           "real_is_training_data": report.data["inputs"].get("real_is_training_data"),
                           "gate_failures": check_gate(report), "metrics": {}}
    for path, _ in REGRESSION_METRICS:
        node = _node(m, path)
        if node is not None:
            rec["metrics"][".".join(path)] = {k: node.get(k) for k in ("synthetic", "ci", "baseline", "baseline_ci")}
    return rec


def regressions(report: EvaluationReport, record: dict[str, Any]) -> list[str]:
    """How ``report`` is worse than the recorded ``record`` (:func:`quality_record`): a gate check that
    passed now fails, or a metric is now worse than the far end of its recorded 95 % interval (or,
    without an interval, worse by more than 10 %)."""
    out = []
    now = {f.split(":")[0].split(" ")[0] for f in check_gate(report)}
    before = {f.split(":")[0].split(" ")[0] for f in record.get("gate_failures", [])}
    out += [f"gate check '{k}' now fails (it passed when recorded)" for k in sorted(now - before)]
    m = report.data["metrics"]
    for path, _better in REGRESSION_METRICS:
        key = ".".join(path)
        old, node = record.get("metrics", {}).get(key), _node(m, path)
        if old is None or node is None:
            continue
        limit = old["ci"][1] if old.get("ci") else abs(old["synthetic"]) * 1.1 + 1e-9
        if node["synthetic"] > limit:
            out.append(f"{key}: {node['synthetic']:.4g} is worse than recorded {old['synthetic']:.4g} "
                       f"(allowed up to {limit:.4g})")
    return out
