"""``generate --variants-of SERIES --strength S``: SDEdit variants of real slices in latent space.

Meng et al. 2022 (SDEdit), as diffusers' img2img pipelines do it: each real slice is resampled
to the pack's matrix and spacing (in-plane, centres aligned), mapped to model space [-1, 1],
encoded by the pack's encoder (scaled latent z0 = encoder mean × scale_factor), noised to the
training timestep t_S = round(S·(T−1)) (x_t = √ᾱ·z0 + √(1−ᾱ)·ε), denoised with
:func:`medsynth.sampling.samplers.sample` over a truncated timestep list (the ⌈S·steps⌉ evenly
spaced timesteps from t_S down), and decoded. Packs with the previous-slice condition see the
previous variant's clean latent (zeros for the first slice), as in :mod:`medsynth.sampling.series`.

The variants are written as derived synthetic images: SyntheticData YES, their own synthetic
identity and UIDs, DerivationDescription naming the method and strength, and the source only as a
salted SHA-256 (a fresh random salt per run, never written anywhere, so the hash links the run's
files to each other and not to the source). For each variant the SSIM to its nearest source slice
(over every source slice, on the pack grid in model space) is reported.

Only latent packs (format 2, with an encoder) can make variants; a pixel-space pack or a series no
pack serves is a clear one-line error.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medsynth.errors import ConfigError, InputError, ModelPackError
from medsynth.sampling.runtime import DeviceName

F32 = npt.NDArray[np.float32]
REPORT_NAME = "variants_report.json"
METHOD = "SDEdit (latent)"


@dataclass(frozen=True)
class VariantsConfig:
    """One ``--variants-of`` run: ``strength`` in (0, 1) (0 = the source, 1 = pure noise), ``steps``
    the full-schedule step count whose first ⌈strength·steps⌉ are skipped (default: the pack's)."""

    source: Path
    out_dir: Path
    strength: float
    modality: str | None = None
    condition: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    model: Path | None = None
    model_dir: Path | None = None
    device: DeviceName = "auto"
    threads: int | None = None
    force: bool = False
    reproducible_uids: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.strength, float | int) and math.isfinite(self.strength) and 0.0 < self.strength < 1.0):
            raise ConfigError(f"--strength must be strictly between 0 and 1, got {self.strength}")


@dataclass(frozen=True)
class VariantsResult:
    """What a ``--variants-of`` run wrote; ``nearest_ssim`` per variant slice (model space, pack grid),
    ``reconstruction_ssim`` per slice: the source's encode→decode against the source (the ceiling)."""

    out_dir: Path
    report: Path
    preset: str
    model_id: str
    strength: float
    start_timestep: int
    steps: int
    slices: int
    seed: int
    nearest_ssim: tuple[float, ...]
    reconstruction_ssim: tuple[float, ...]
    from_reconstruction: tuple[float, ...] = ()  # mean |variant − reconstruction| per slice, model space

    def to_json(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        d["nearest_ssim"] = list(self.nearest_ssim)
        d["reconstruction_ssim"] = list(self.reconstruction_ssim)
        d["from_reconstruction"] = list(self.from_reconstruction)
        d["mean_nearest_ssim"] = float(np.mean(self.nearest_ssim))
        return d


def sdedit_timesteps(num_train_timesteps: int, steps: int, strength: float) -> Any:
    """The truncated schedule: t_S = round(strength·(T−1)) and ⌈strength·steps⌉ (≥ 1) timesteps
    evenly spaced from t_S down, the last landing on the clean image (:class:`Timesteps`)."""
    from medsynth.sampling.diffusion import Timesteps

    t_start = int(round(strength * (num_train_timesteps - 1)))
    n = max(1, min(math.ceil(strength * steps), t_start + 1))
    ts = np.unique(np.round(np.linspace(t_start, 0, n + 1)[:-1]).astype(np.int64))[::-1]
    t = tuple(int(v) for v in ts)
    return Timesteps(t, (*t[1:], -1))


def to_model_space(volume: npt.NDArray[np.floating], preset_name: str, physical_range: tuple[float, float]) -> F32:
    """Physical values [z, y, x] → model space [-1, 1]: CT through the pack's HU range; MR first
    rescaled as ``prepare`` does (foreground 0.5–99.5th percentiles → 0..4095)."""
    from medsynth.presets import Modality, get_preset

    preset = get_preset(preset_name)
    vol = np.asarray(volume, dtype=np.float64)
    lo, hi = physical_range
    if preset.modality is Modality.MR:
        fg = vol[vol > np.percentile(vol, 50)] if np.any(vol > np.percentile(vol, 50)) else vol.ravel()
        p_lo, p_hi = np.percentile(fg, [0.5, 99.5])
        vol = np.clip((vol - p_lo) / max(p_hi - p_lo, 1e-6), 0.0, 1.0) * (hi - lo) + lo
    return np.clip((vol - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def salted_source_hash(files: tuple[Path, ...], salt: bytes) -> str:
    """SHA-256 of ``salt`` and the source files' bytes (in order)."""
    h = hashlib.sha256(salt)
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def make_variants(cfg: VariantsConfig, on_slice: Callable[[int, int], None] | None = None) -> VariantsResult:
    """Encode, noise to ``cfg.strength``, denoise and decode every slice of ``cfg.source``; write the
    variants as a derived synthetic series and ``variants_report.json``."""
    import pydicom

    from medsynth import __version__
    from medsynth.dicom_io.geometry import VolumeGeometry
    from medsynth.dicom_io.reader import read_images
    from medsynth.dicom_io.writer import Provenance, WriterOptions
    from medsynth.evaluation.metrics import nearest_ssim, ssim_pairs
    from medsynth.generate import resolve_pack
    from medsynth.like import _infer, _ShapedWriter, resample_inplane
    from medsynth.outputs import atomic_write_json
    from medsynth.presets import IntensityMapping, Modality, get_preset
    from medsynth.sampling.diffusion import DiffusionSchedule
    from medsynth.sampling.runtime import open_denoiser, open_image_model
    from medsynth.sampling.samplers import Conditioning, SamplerConfig, sample
    from medsynth.sampling.series import series_positions

    source = Path(cfg.source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    read = read_images([source])
    if not read.series:
        why = read.skipped[0].reason if read.skipped else "no DICOM image files"
        raise InputError(f"no usable image series ({why})", source)
    if len(read.series) > 1:
        raise InputError(f"{len(read.series)} series found; --variants-of takes one series folder", source)
    series = read.series[0]
    try:
        modality = Modality(series.facts.modality)
    except ValueError:
        raise InputError(f"--variants-of supports CT and MR series, not {series.facts.modality or 'no modality'}",
                         source) from None
    if series.is_projection or modality not in (Modality.CT, Modality.MR):
        raise InputError(f"--variants-of supports CT and MR series, not {modality.value}", source)
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    preset_name, condition, _why = _infer(modality, header, cfg.modality, cfg.condition)
    preset = get_preset(preset_name)
    pack = resolve_pack(preset, cfg.model, cfg.model_dir)
    meta = pack.metadata
    spec = meta.latent
    if spec is None or spec.encoder not in meta.files:
        raise ModelPackError(f"--variants-of needs a latent-diffusion pack with an encoder; {meta.model_id} is a "
                             "pixel-space pack (pass --model with a format-2 latent pack)", pack.root)
    if condition not in meta.labels:
        raise ConfigError(f"condition {condition!r} is not served by pack {meta.model_id} "
                          f"({', '.join(meta.labels)}); pass --condition")
    label = meta.labels.index(condition)
    rows, cols = meta.matrix

    # source slices → pack grid → model space
    src_spacing = (series.geometry.spacing[1], series.geometry.spacing[0])
    background = float(meta.physical_range[0]) if modality is Modality.CT else float(series.voxels.min())
    grid = resample_inplane(series.voxels, src_spacing, (rows, cols), meta.pixel_spacing_mm, background)
    x_src = to_model_space(grid, preset.name, meta.physical_range)  # [n, rows, cols]
    n = x_src.shape[0]

    schedule = DiffusionSchedule.from_config(meta.schedule)
    steps = cfg.steps if cfg.steps is not None else meta.default_steps
    timesteps = sdedit_timesteps(schedule.num_train_timesteps, steps, cfg.strength)
    t_start = timesteps.t[0]
    sampler_cfg = SamplerConfig(sampler="ddim", steps=len(timesteps), eta=0.0,
                                guidance=cfg.guidance if cfg.guidance is not None else meta.default_guidance,
                                clip_sample=False)
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    denoiser = open_denoiser(pack, cfg.device, cfg.threads)
    encoder = open_image_model(pack, "encoder", cfg.device, cfg.threads)
    decoder = open_image_model(pack, "decoder", cfg.device, cfg.threads)
    scale = np.float32(spec.scale_factor)
    ab = schedule.alpha_bar(t_start)
    support = (0.0, 1.0)
    entry = (meta.conditioning or {}).get(condition)
    if entry and "position" in entry:
        support = (float(entry["position"][0]), float(entry["position"][1]))
    positions = series_positions(n, support)

    intensity = IntensityMapping(**{**asdict(preset.intensity), "physical_low": meta.physical_range[0],
                                    "physical_high": meta.physical_range[1]})
    salt = secrets.token_bytes(32)
    source_hash = salted_source_hash(series.files, salt)
    derivation = (f"{METHOD} variant of a real series by medsynth {__version__}: strength {cfg.strength:g} "
                  f"(noised to timestep {t_start} of {schedule.num_train_timesteps}, {len(timesteps)} DDIM steps), "
                  f"diffusion model {meta.model_id}, seed {seed}, condition {condition}; source identified only by a "
                  f"salted SHA-256 {source_hash[:16]}")
    prov = Provenance(model_id=meta.model_id, model_sha256=pack.model_sha256, seed=seed, sampler="ddim-sdedit",
                      steps=len(timesteps), guidance=sampler_cfg.guidance, condition=condition,
                      software_version=__version__, source_sha256=source_hash, pack_identity=pack.identity)
    options = WriterOptions(patients=1, studies_per_patient=1, series_per_study=1,
                            seed=seed if cfg.reproducible_uids else None)
    # the variants' own geometry: the pack's matrix and spacing, centred where the source was
    g = series.geometry
    centre = np.asarray(g.origin) + g.matrix @ (np.array([(series.shape[2] - 1) * g.spacing[0],
                                                          (series.shape[1] - 1) * g.spacing[1],
                                                          (n - 1) * g.spacing[2]]) / 2.0)
    sy, sx = meta.pixel_spacing_mm
    origin = centre - g.matrix @ (np.array([(cols - 1) * sx, (rows - 1) * sy, (n - 1) * g.spacing[2]]) / 2.0)
    geometry = VolumeGeometry(origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
                              spacing=(sx, sy, g.spacing[2]), direction=g.direction)

    recon: list[F32] = []
    variants: list[F32] = []
    writer = _ShapedWriter(cfg.out_dir, preset, options, prov, force=cfg.force)
    writer.derivation = derivation
    with writer:
        writer.begin_series(geometry, (rows, cols), patient=0, study=0)
        prev: F32 | None = None
        for k in range(n):
            z0 = encoder(x_src[k][None, None]) * scale  # [1, C, h, w] scaled latent
            recon.append(decoder((z0 / scale).astype(np.float32))[0, 0])
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
            eps = rng.standard_normal(z0.shape, dtype=np.float32)
            x_t = (math.sqrt(ab) * z0 + math.sqrt(1.0 - ab) * eps).astype(np.float32)
            if spec.previous_slice:
                denoiser.previous = np.zeros_like(x_t) if prev is None else prev
            cond = Conditioning(np.array([label], dtype=np.int64), meta.null_class,
                                np.array([positions[k]], dtype=np.float32))
            z = sample(denoiser, schedule, meta.prediction_type, x_t, cond, sampler_cfg, timesteps=timesteps)
            prev = z
            img = decoder((z / scale).astype(np.float32))[0, 0]
            variants.append(np.clip(img, -1.0, 1.0))
            writer.write_slice(k, intensity.to_physical(variants[-1]))
            if on_slice is not None:
                on_slice(k + 1, n)
        writer.manifest_extra["variants"] = {"method": METHOD, "strength": cfg.strength, "start_timestep": t_start,
                                             "steps": len(timesteps), "report": REPORT_NAME}
        writer.finish()
    v = np.stack(variants)
    near = nearest_ssim(v, x_src)
    rec = ssim_pairs(np.clip(np.stack(recon), -1, 1), x_src)
    nearest = tuple(round(float(s), 4) for s in near.ssim)
    recon_ssim = tuple(round(float(s), 4) for s in rec)
    moved = tuple(round(float(np.mean(np.abs(a - np.clip(b, -1, 1)))), 5) for a, b in zip(v, recon, strict=True))
    report = {
        "format_version": 1, "software": f"medsynth {__version__}", "method": METHOD, "strength": cfg.strength,
        "start_timestep": t_start, "num_train_timesteps": schedule.num_train_timesteps, "steps": len(timesteps),
        "timesteps": list(timesteps.t), "model_id": meta.model_id, "preset": preset.name, "condition": condition,
        "seed": seed, "source": {"slices": n, "salted_sha256": source_hash},
        "ssim_space": f"model space [-1, 1] on the pack grid {rows}x{cols} at {sy:g}x{sx:g} mm",
        "nearest_source_ssim": list(nearest), "mean_nearest_source_ssim": round(float(np.mean(nearest)), 4),
        "reconstruction_ssim": list(recon_ssim), "mean_reconstruction_ssim": round(float(np.mean(recon_ssim)), 4),
        "from_reconstruction": list(moved),
        "meaning": "nearest_source_ssim: SSIM of each variant to its most similar source slice; reconstruction_ssim: "
                   "the source slice encoded and decoded (no noise) against itself, the ceiling any variant can reach; "
                   "from_reconstruction: mean |variant - reconstruction| (model space), how far the edit moved",
    }
    report_path = Path(cfg.out_dir) / REPORT_NAME
    atomic_write_json(report_path, report)
    return VariantsResult(out_dir=Path(cfg.out_dir), report=report_path, preset=preset.name, model_id=meta.model_id,
                          strength=cfg.strength, start_timestep=t_start, steps=len(timesteps), slices=n, seed=seed,
                          nearest_ssim=nearest, reconstruction_ssim=recon_ssim, from_reconstruction=moved)
