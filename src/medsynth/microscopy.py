"""Microscopy (``micro-malaria``): RGB thin-smear cell images → a colour training dataset.

The NIH malaria cell images (Rajaraman et al., PeerJ 6:e4568, 2018) are segmented red cells of
46–390 px on a black background, named ``C<slide>P<patient>ThinF_IMG_<date>_<time>_cell_<n>.png``
(a few slides carry no ``P<n>``: then the slide, e.g. ``C12N``, stands for the patient). Cells of
one patient are strongly correlated (same smear, stain and camera), so the data are split **by
patient, never by cell**: :func:`is_held_out` sends about one patient in five (a fixed hash of the
patient id, :data:`SPLIT_SALT`) to the held-out set, which no training run sees.

:func:`prepare_micro` (what ``medsynth prepare --modality micro-malaria`` runs) reads RGB
PNG/JPEG/TIFF cells, resizes each with its aspect ratio kept (anti-aliased) so that its longer
side fills the preset's matrix, pads the rest with the image's own background colour (the median
of its border pixels: black for this data set) and writes ``slices.npy`` float32 [N, 3, H, W] in
[-1, 1] (0..255 → -1..1 per channel), ``labels.npy``, ``positions.npy`` (0.5), ``volumes.npy``
(a neutral patient index: evaluation splits by it) and a colour ``contact_sheet.png``.
``--split train`` (default) keeps the training patients, ``--split test`` the held-out ones.
Patient ids never reach the manifest (sources are ``source-0001``…, one per patient).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medsynth.dataset import DatasetManifest, SourceRecord, save_dataset
from medsynth.errors import ConfigError, InputError, MedsynthError, OutputError
from medsynth.outputs import atomic_write
from medsynth.presets import Preset

if TYPE_CHECKING:
    from medsynth.prepare import PrepareConfig, PrepareReport

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLIT_SALT = "medsynth-micro-0"
HELD_OUT_MODULUS = 5  # one patient in five is held out

_PATIENT_RE = re.compile(r"^C\d+[A-Za-z]*?P(\d+)")
_SLIDE_RE = re.compile(r"^(C\d+[A-Za-z]*?)(?:_|thin|Thin)")


def patient_id(file_name: str) -> str:
    """The patient of an NIH malaria cell file name: ``P<n>`` from ``C<slide>P<n>…``, else the
    slide (``C12N`` from ``C12NThinF_…``); InputError for a name of neither form."""
    m = _PATIENT_RE.match(file_name)
    if m:
        return f"P{int(m.group(1))}"
    m = _SLIDE_RE.match(file_name)
    if m:
        return m.group(1)
    raise InputError("file name carries no slide/patient id (C<slide>P<patient>…); cannot split by patient",
                     Path(file_name))


def is_held_out(patient: str) -> bool:
    """True for the held-out patients: sha256(SPLIT_SALT:patient) mod HELD_OUT_MODULUS == 0."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{patient}".encode()).hexdigest()
    return int(digest[:8], 16) % HELD_OUT_MODULUS == 0


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """An RGB image file → uint8 [H, W, 3]; InputError for unreadable or non-colour images
    (RGBA is composited on black, palette images are expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            mode = opened.mode
            if mode in ("L", "I", "I;16", "F", "1", "LA"):
                raise InputError(f"a {mode} (grey) image; micro-malaria needs RGB colour", path)
            im: Image.Image = opened
            if mode == "P":
                im = im.convert("RGBA")
                mode = "RGBA"
            if mode == "RGBA":
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the image ({exc.__class__.__name__})", path) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 4:
        raise InputError(f"image of shape {rgb.shape} is not a usable RGB image", path)
    return rgb


def background_colour(rgb: npt.NDArray[np.uint8]) -> tuple[int, int, int]:
    """The smear background of a cell image: the median colour of its border pixels."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float64)
    r, g, b = (int(round(v)) for v in np.median(border, axis=0))
    return (r, g, b)


def letterbox(rgb: npt.NDArray[np.uint8], matrix: tuple[int, int],
              fill: tuple[int, int, int] | None = None) -> npt.NDArray[np.uint8]:
    """uint8 [h, w, 3] → [H, W, 3] (``matrix``): resized with the aspect ratio kept (Lanczos,
    anti-aliased), longer side filling the matrix, centred and padded with ``fill`` (default:
    :func:`background_colour`)."""
    from PIL import Image

    rows, cols = matrix
    h, w = rgb.shape[:2]
    scale = min(rows / h, cols / w)
    nh, nw = max(1, min(rows, round(h * scale))), max(1, min(cols, round(w * scale)))
    fill = background_colour(rgb) if fill is None else fill
    resized = Image.fromarray(rgb, mode="RGB").resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (cols, rows), fill)
    canvas.paste(resized, ((cols - nw) // 2, (rows - nh) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def to_model(rgb: npt.NDArray[np.uint8], preset: Preset) -> npt.NDArray[np.float32]:
    """uint8 [..., H, W, 3] → model space float32 [..., 3, H, W] in [-1, 1]."""
    return np.moveaxis(preset.intensity.to_model(rgb.astype(np.float64)), -1, -3).astype(np.float32)


def to_rgb8(model: npt.NDArray[np.floating], preset: Preset) -> npt.NDArray[np.uint8]:
    """Model space [..., 3, H, W] → uint8 [..., H, W, 3] (what the DICOM/PNG writers store)."""
    phys = preset.intensity.to_physical(np.moveaxis(np.asarray(model), -3, -1))
    return np.clip(np.rint(phys), 0, 255).astype(np.uint8)


def write_colour_contact_sheet(path: Path, slices: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                               preset: Preset, max_tiles: int = 64, tile: int = 128) -> None:
    """A PNG grid of up to ``max_tiles`` evenly chosen RGB images [N, 3, H, W], captioned with
    index and label."""
    from PIL import Image, ImageDraw

    n = slices.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, max_tiles)).round().astype(int))
    cols = min(8, len(idx))
    rows = int(math.ceil(len(idx) / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(idx):
        im = Image.fromarray(to_rgb8(slices[i], preset), mode="RGB").resize((tile, tile),
                                                                          Image.Resampling.BILINEAR)
        x0, y0 = (k % cols) * tile, (k // cols) * tile
        sheet.paste(im, (x0, y0))
        draw.text((x0 + 3, y0 + 2), f"{i} {preset.conditions[int(labels[i])]}", fill=(255, 255, 255))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _labels_by_name(config_labels_file: Path | None, preset: Preset) -> dict[str, str]:
    """Base name (and relative path as written) → label, from a labels file."""
    if config_labels_file is None:
        return {}
    from medsynth.prepare import load_label_rules

    out: dict[str, str] = {}
    for rule in load_label_rules(config_labels_file, preset):
        out[rule.name] = rule.label
        out[Path(rule.name).name] = rule.label
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_micro(inputs: Sequence[str | Path], output: Path, config: PrepareConfig, preset: Preset,
                  *, on_file: Callable[[Path], None] | None = None) -> PrepareReport:
    """Prepare RGB cell images for ``preset`` (see the module docstring); the report is that of
    :func:`medsynth.prepare.prepare_dataset`."""
    from medsynth.dicom_io.reader import Skipped, discover_files
    from medsynth.prepare import LabelOrigin, PrepareReport, SourceSummary, _folder_label, _publish
    if config.split == "val":
        raise ConfigError("micro-malaria has a train and a held-out (test) split by patient; no val split")
    if config.z_range is not None or config.n4:
        raise ConfigError("--z-range and --n4 do not apply to microscopy images")
    keep_held_out = config.split == "test"
    labels_by_name = _labels_by_name(config.labels_file, preset)
    files, problems = discover_files(inputs)
    report = PrepareReport(output=output, preset=preset.name, labels=preset.conditions, inputs=len(inputs),
                           files_read=len(files))
    report.skipped.extend(problems)
    labels_file = config.labels_file.resolve() if config.labels_file is not None else None
    # patient → list of (file, label index, model-space image)
    by_patient: dict[str, list[tuple[Path, int, npt.NDArray[np.float32]]]] = {}
    origins: dict[str, set[str]] = {}
    for f in files:
        if labels_file is not None and f.resolve() == labels_file:
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            report.skipped.append(Skipped(f, "not a PNG/JPEG/TIFF/BMP image"))
            continue
        if on_file is not None:
            on_file(f)
        try:
            patient = patient_id(f.name)
            if is_held_out(patient) != keep_held_out:
                continue  # the other split's patient: not an error, not reported per file
            rel = f.parent.name + "/" + f.name
            if labels_by_name:
                label = labels_by_name.get(rel) or labels_by_name.get(f.name)
                if label is None:
                    raise InputError("not named in the labels file", f)
                origin = LabelOrigin.FILE
            elif config.label_from_folder and (fl := _folder_label(f, preset)) is not None:
                label, origin = fl, LabelOrigin.FOLDER
            elif config.label_from_folder and config.label is None:
                raise InputError(f"no parent folder is named after a condition ({', '.join(preset.conditions)})", f)
            elif config.label is not None:
                label, origin = config.label, LabelOrigin.FLAG
            else:
                label, origin = preset.default_condition, LabelOrigin.DEFAULT
            img = to_model(letterbox(read_rgb(f), preset.matrix), preset)
            by_patient.setdefault(patient, []).append((f, preset.condition_index(label), img))
            origins.setdefault(patient, set()).add(origin.value)
        except MedsynthError as exc:
            report.skipped.append(Skipped(exc.path or f, exc.message))
    if not by_patient:
        reasons = "; ".join(str(s) for s in report.skipped[:3]) or "no cell images of this split"
        raise InputError(f"nothing usable to prepare ({len(report.skipped)} skipped: {reasons})")

    records: list[SourceRecord] = []
    slices: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    volumes: list[int] = []
    slice_sources: list[int] = []
    for vol, patient in enumerate(sorted(by_patient, key=_patient_sort_key)):
        cells = sorted(by_patient[patient], key=lambda c: c[0].name)
        names = sorted({preset.conditions[c[1]] for c in cells})
        digest = hashlib.sha256("".join(sorted(_sha256_file(c[0]) for c in cells)).encode()).hexdigest()
        name = f"source-{vol + 1:04d}"  # neutral: a patient id is not written anywhere
        records.append(SourceRecord(name=name, sha256=digest, slices=len(cells), label=",".join(names),
                                    series=1, licence="public domain (NLM)"))
        report.sources.append(SourceSummary(name=name, label=",".join(names), label_origin=",".join(sorted(origins[patient])),
                                            series=1, slices=len(cells), display=patient))
        report.series_found += 1
        for _f, li, img in cells:
            slices.append(img)
            labels.append(li)
            volumes.append(vol)
            slice_sources.append(vol)
            report.per_label[preset.conditions[li]] = report.per_label.get(preset.conditions[li], 0) + 1
    arr = np.stack(slices).astype(np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    report.slices_kept = int(arr.shape[0])
    manifest = DatasetManifest(
        preset=preset.name, matrix=preset.matrix, pixel_spacing_mm=preset.pixel_spacing_mm,
        physical_range=(preset.intensity.physical_low, preset.intensity.physical_high),
        unit=preset.intensity.unit, labels=preset.conditions, sources=tuple(records),
        slice_sources=tuple(slice_sources))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        save_dataset(tmp, manifest, arr, lab, np.full(len(arr), 0.5, np.float32), np.asarray(volumes, np.int64))
        write_colour_contact_sheet(tmp / "contact_sheet.png", arr, lab, preset)
        _publish(tmp, output)
    except OSError as exc:
        raise OutputError(f"cannot write the dataset ({exc.strerror or exc})", output) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _patient_sort_key(patient: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", patient)
    return (int(digits) if digits else 0, patient)
