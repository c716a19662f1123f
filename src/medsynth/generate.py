"""``generate``: sample synthetic slices from a model pack with onnxruntime and stream them to disk.

Never imports torch. The sampler, its steps and guidance default to the pack's ``pack.json``; the
noise schedule, prediction type, labels and matrix always come from the pack. Slices are sampled
in batches of ``batch_size`` (which may span series) and each batch is written as soon as it is
done — DICOM through :class:`medsynth.dicom_io.writer.SyntheticStudyWriter`, PNG one file per
slice, NIfTI one file per series (only that series is held) — so memory stays bounded for any
number of patients.

Reproducibility: every slice's noise comes from its own ``numpy.random.SeedSequence(seed,
spawn_key=(patient, study, series, slice))``, so the pixels do not depend on the batch size. When
the pack uses the slice-position condition, the starting noise of a series varies smoothly along
it (:func:`_coherent_noise`: each slice lies on the great-circle arc between anchor noises drawn
every ``ANCHOR_SLICES`` slices), so neighbouring slices are coherent while distant ones differ;
otherwise slices are independent. The per-step noise of stochastic samplers is always per slice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from medsynth import __version__
from medsynth.dicom_io.geometry import VolumeGeometry
from medsynth.dicom_io.iod import table_centre
from medsynth.errors import ConfigError, ModelPackError, OutputError
from medsynth.outputs import RunJournal, atomic_write, remove_previous_run, require_usable_output
from medsynth.pack import ModelPack, bundled_packs_dir, load_pack, user_model_dir
from medsynth.presets import IntensityMapping, Preset, Window, get_preset
from medsynth.sampling.runtime import DeviceName
from medsynth.shard import Shard, check_shardable

OutputFormat = Literal["dicom", "nifti", "png"]
FORMATS: tuple[str, ...] = get_args(OutputFormat)
NoiseSharing = Literal["auto", "shared", "independent"]
PREVIEW_NAME = "preview.png"
MANIFEST_NAME = "manifest.json"
PREVIEW_MAX = 64


@dataclass(frozen=True)
class GenerateConfig:
    """One ``medsynth generate`` run. ``None`` sampler/steps/guidance mean "the pack's default".

    ``slices`` is per series (ignored for 2D presets such as xr-chest: one image per series).
    ``model`` is a pack folder; None = the bundled pack of the preset's ``model_id``.
    ``reproducible_uids`` derives UIDs, identities and dates from ``seed`` too.
    """

    modality: str
    out_dir: Path
    patients: int = 1
    studies: int = 1
    series: int = 1
    slices: int = 32
    condition: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    eta: float = 0.0
    guidance: float | None = None
    model: Path | None = None
    model_dir: Path | None = None
    device: DeviceName = "auto"
    threads: int | None = None
    batch_size: int = 8
    format: OutputFormat = "dicom"
    preview: bool = False
    force: bool = False
    reproducible_uids: bool = False
    noise: NoiseSharing = "auto"
    transfer_syntax: str = "explicit"  # see medsynth.dicom_io.transfer_syntax.TransferSyntax
    shard: Shard | None = None  # generate only this shard's patients (see medsynth.shard)
    identity: Any = None  # medsynth.dicom_io.identity.IdentityOptions (None: the defaults); e.g. from a cohort
    uid_root: str | None = None  # UID prefix (None: 2.25 UUID-derived UIDs)
    #: sample only these global patient indices (ascending, < patients), e.g. a cohort shard's; None: all
    patient_indices: tuple[int, ...] | None = None
    multiframe: bool = False  # each CT/MR series as one Legacy Converted Enhanced object (dicom_io.multiframe)

    def __post_init__(self) -> None:
        for name in ("patients", "studies", "series"):
            if not 1 <= getattr(self, name) <= 10000:
                raise ConfigError(f"--{name} must be between 1 and 10000, got {getattr(self, name)}")
        if not 1 <= self.slices <= 10000:
            raise ConfigError(f"--slices must be between 1 and 10000, got {self.slices}")
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"--batch-size must be between 1 and 1024, got {self.batch_size}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of: {', '.join(FORMATS)}")
        if self.noise not in get_args(NoiseSharing):
            raise ConfigError(f"unknown noise sharing {self.noise!r}")
        from medsynth.dicom_io.pixel_encoding import PixelEncoding
        from medsynth.dicom_io.transfer_syntax import TransferSyntax, check_encoding

        syntax = TransferSyntax.parse(self.transfer_syntax)
        if syntax is not TransferSyntax.EXPLICIT and self.format != "dicom":
            raise ConfigError("--transfer-syntax needs --format dicom")
        if syntax.eight_bit_only:  # generated pixels are in the preset's 12-bit encoding
            check_encoding(syntax, PixelEncoding.for_preset(get_preset(self.modality)), f"{self.modality} pixels")
        if self.shard is not None:
            if self.format != "dicom":
                raise ConfigError("--shard needs --format dicom (merge-shards merges DICOM runs)")
            check_shardable(self.seed, self.reproducible_uids, self.patients, self.shard)
        if self.multiframe:
            from medsynth.dicom_io.multiframe import multiframe_sop_class

            if self.format != "dicom":
                raise ConfigError("--multiframe needs --format dicom")
            multiframe_sop_class(get_preset(self.modality))  # CT and MR presets only
        if self.patient_indices is not None and (
                self.shard is not None or list(self.patient_indices) != sorted(set(self.patient_indices))
                or not all(0 <= p < self.patients for p in self.patient_indices)):
            raise ConfigError(f"patient indices must ascend within 0..{self.patients - 1} (and not with --shard)")


@dataclass(frozen=True)
class GenerateResult:
    """What a run wrote and how long it took (seconds; ``first_slice_s`` from the start of
    sampling to the first slice on disk)."""

    out_dir: Path
    format: OutputFormat
    preset: str
    model_id: str
    model_sha256: str
    provider: str
    threads: int | None
    sampler: str
    steps: int
    guidance: float
    eta: float
    condition: str
    seed: int
    series: int
    slices: int
    files: int
    seconds: float
    first_slice_s: float
    manifest: Path
    preview: Path | None
    notes: tuple[str, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)  # denoiser, decoder, write

    @property
    def seconds_per_slice(self) -> float:
        return self.seconds / max(self.slices, 1)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seconds_per_slice"] = self.seconds_per_slice
        d["slices_per_second"] = self.slices / self.seconds if self.seconds > 0 else None
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass(frozen=True)
class _Item:
    patient: int
    study: int
    series: int
    index: int  # slice index within its series
    n: int  # slices in its series

    @property
    def series_key(self) -> tuple[int, int, int]:
        return (self.patient, self.study, self.series)


def resolve_pack(preset: Preset, model: Path | None, model_dir: Path | None = None) -> ModelPack:
    """The pack to sample from: ``model`` if given, else the preset's ``model_id`` pack in
    ``model_dir`` (default ``$MEDSYNTH_MODEL_DIR``) or the bundled packs. Verifies sha256s (tampered or foreign files are refused)."""
    if model is not None:
        # a folder, or the name of a bundled pack (e.g. ``--model ct-body-512``)
        named = bundled_packs_dir() / str(model)
        if not (Path(model) / "pack.json").is_file() and Path(str(model)).name == str(model) and (named / "pack.json").is_file():
            model = named
        pack = load_pack(model)
    else:
        model_dir = model_dir if model_dir is not None else user_model_dir()
        candidates = [d / preset.model_id for d in (model_dir, bundled_packs_dir()) if d is not None]
        found = next((c for c in candidates if (c / "pack.json").is_file()), None)
        if found is None:
            raise ModelPackError(
                f"no model pack {preset.model_id!r} for preset {preset.name} (looked in "
                f"{', '.join(str(c) for c in candidates)}); pass --model PACK"
            )
        pack = load_pack(found)
    if preset.name not in pack.metadata.presets:
        raise ModelPackError(
            f"pack {pack.metadata.model_id!r} serves {', '.join(pack.metadata.presets) or 'no preset'}, "
            f"not {preset.name}", pack.root)
    if pack.metadata.modality != preset.modality.value:
        raise ModelPackError(f"pack modality {pack.metadata.modality} does not match {preset.name}", pack.root)
    return pack


def _slice_rng(seed: int, key: tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


ANCHOR_SLICES = 8
_ANCHOR_KEY = 1_000_000  # anchor spawn keys never collide with slice indices (< 10000)


def _coherent_noise(seed: int, series_key: tuple[int, ...], index: int,
                    shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Starting noise of slice ``index`` of a series, float32 ``shape``, exactly N(0, 1) per pixel.

    Slice k lies on the great-circle arc between anchors A_j and A_{j+1} (j = k // ANCHOR_SLICES):
    cos(θ)·A_j + sin(θ)·A_{j+1} with θ = (k mod ANCHOR_SLICES)/ANCHOR_SLICES · π/2, so neighbours
    share most of their noise and slices ANCHOR_SLICES apart are independent. (Hand-written: neither
    numpy nor onnxruntime has series-coherent noise.)
    """
    j, r = divmod(index, ANCHOR_SLICES)
    a = _slice_rng(seed, (*series_key, _ANCHOR_KEY + j)).standard_normal(shape, dtype=np.float32)
    if r == 0:
        return a
    b = _slice_rng(seed, (*series_key, _ANCHOR_KEY + j + 1)).standard_normal(shape, dtype=np.float32)
    theta = r / ANCHOR_SLICES * np.pi / 2.0
    return (np.cos(theta) * a + np.sin(theta) * b).astype(np.float32)


def _window_8bit(physical: npt.NDArray[np.floating], window: Window) -> npt.NDArray[np.uint8]:
    """Physical values [H, W] → 8-bit grey through a VOI window (linear, clipped)."""
    lo = window.center - window.width / 2.0
    scaled = (np.asarray(physical, dtype=np.float64) - lo) / max(window.width, 1e-6)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_png(path: Path, img: npt.NDArray[np.uint8]) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))


def _contact_sheet(tiles: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
    """Tiles [H, W] or RGB [H, W, 3] (same shape) → one grid image, 1-pixel black gutters."""
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((rows * (h + 1) - 1, cols * (w + 1) - 1, *tiles[0].shape[2:]), dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = t
    return sheet


def _prepare_plain_output(out_dir: Path, force: bool) -> None:
    """For NIfTI/PNG: create ``out_dir`` or require it empty (``force``: every file of a previous
    medsynth run is removed first, listed or not, stale preview.png included)."""
    if require_usable_output(out_dir, force, "write into it"):
        remove_previous_run(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder: {err.strerror}", out_dir) from None


class _PlainSink:
    """NIfTI (one file per series, via SimpleITK) or PNG (8-bit windowed, one file per slice)."""

    def __init__(self, out_dir: Path, fmt: OutputFormat, preset: Preset, window: Window) -> None:
        self.out_dir, self.fmt, self.preset, self.window = out_dir, fmt, preset, window
        self.files: list[dict[str, Any]] = []
        self._key: tuple[int, int, int] | None = None
        self._geometry: VolumeGeometry | None = None
        self._slices: dict[int, npt.NDArray[np.float64]] = {}
        self._n = 0
        # manifest.json ("complete": false) + a journal of complete files from the first file on
        self._journal: RunJournal | None = None

    def _landed(self, record: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = RunJournal(self.out_dir, {"format_version": 1, "software": f"medsynth {__version__}",
                                                      "format": self.fmt, "preset": self.preset.name})
        self.files.append(record)
        self._journal.add(record)

    @staticmethod
    def _rel(key: tuple[int, int, int]) -> str:
        return f"PT{key[0]:06d}/ST{key[1]:06d}/SE{key[2]:06d}"

    def begin_series(self, key: tuple[int, int, int], geometry: VolumeGeometry, n: int) -> None:
        self.flush()
        self._key, self._geometry, self._n = key, geometry, n

    def write_slice(self, index: int, physical: npt.NDArray[np.float64]) -> None:
        assert self._key is not None  # internal call order, not user input
        if self.fmt == "png":
            rel = f"{self._rel(self._key)}/IM{index:06d}.png"
            _save_png(self.out_dir / rel, _window_8bit(physical, self.window))
            self._landed({"path": rel, "series": self._rel(self._key), "index": index})
        else:
            self._slices[index] = physical

    def flush(self) -> None:
        if self.fmt != "nifti" or self._key is None or not self._slices:
            return
        import SimpleITK as sitk

        vol = np.stack([self._slices[k] for k in sorted(self._slices)])
        if self.preset.intensity.unit == "HU":
            arr: npt.NDArray[Any] = np.clip(np.rint(vol), -32768, 32767).astype(np.int16)
        else:
            arr = np.clip(np.rint(vol), 0, 65535).astype(np.uint16)
        img = sitk.GetImageFromArray(arr)
        assert self._geometry is not None
        self._geometry.apply_to(img)
        rel = f"{self._rel(self._key)}.nii.gz"
        atomic_write(self.out_dir / rel, lambda tmp: sitk.WriteImage(img, str(tmp), True))
        self._landed({"path": rel, "series": self._rel(self._key), "slices": int(arr.shape[0]),
                      "spacing_mm": list(self._geometry.spacing), "origin_mm": list(self._geometry.origin)})
        self._slices = {}

    def finish(self, head: dict[str, Any]) -> dict[str, Any]:
        self.flush()
        manifest = {**head, "complete": True, "files": self.files}
        if self._journal is not None:
            self._journal.finish(manifest)
        else:
            text = json.dumps(manifest, indent=2) + "\n"
            atomic_write(self.out_dir / MANIFEST_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return manifest


def _position_support(meta: Any, condition: str, notes: list[str]) -> tuple[float, float]:
    """The slice-position range a series of ``condition`` spans: the range the pack saw in training
    for that label (pack.json ``conditioning``), else the whole [0, 1]."""
    entry = (meta.conditioning or {}).get(condition)
    if entry and "position" in entry:
        lo, hi = (float(x) for x in entry["position"])
        return (lo, hi)
    return (0.0, 1.0)


def _patients(cfg: GenerateConfig) -> Sequence[int]:
    """The global indices of the patients this run samples (all, its shard's or the given ones)."""
    if cfg.patient_indices is not None:
        return cfg.patient_indices
    return cfg.shard.patients(cfg.patients) if cfg.shard is not None else range(cfg.patients)


def _items(cfg: GenerateConfig, n: int) -> Iterator[_Item]:
    for p in _patients(cfg):
        for s in range(cfg.studies):
            for r in range(cfg.series):
                for k in range(n):
                    yield _Item(p, s, r, k, n)


def _batches(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def generate(
    cfg: GenerateConfig,
    on_slice: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> GenerateResult:
    """Sample and write a run; see :class:`GenerateConfig`. ``on_slice(done, total)`` is called
    after each slice is on disk, ``on_step(i, n)`` after each denoising step of a batch."""
    from medsynth.sampling.diffusion import DiffusionSchedule
    from medsynth.sampling.runtime import open_denoiser
    from medsynth.sampling.samplers import Conditioning, SamplerConfig, sample

    preset = get_preset(cfg.modality)
    pack = resolve_pack(preset, cfg.model, cfg.model_dir)
    meta = pack.metadata
    condition = cfg.condition or preset.default_condition
    if condition not in meta.labels:
        raise ConfigError(f"unknown condition {condition!r} for pack {meta.model_id}; choose one of: "
                          f"{', '.join(meta.labels)}")
    label = meta.labels.index(condition)
    sampler_name = (cfg.sampler or meta.default_sampler).replace("_", "-")
    sampler_cfg = SamplerConfig(
        sampler=sampler_name,  # type: ignore[arg-type]  # validated by SamplerConfig
        steps=cfg.steps if cfg.steps is not None else meta.default_steps,
        eta=cfg.eta,
        guidance=cfg.guidance if cfg.guidance is not None else meta.default_guidance,
        clip_sample=not pack.is_latent,  # latents are not bounded to [-1, 1]
    )
    schedule = DiffusionSchedule.from_config(meta.schedule)
    if sampler_cfg.steps > schedule.num_train_timesteps:
        raise ConfigError(f"--steps {sampler_cfg.steps} exceeds the pack's {schedule.num_train_timesteps} "
                          "training timesteps")
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    n_slices = cfg.slices if preset.is_volume else 1
    if meta.channels != preset.samples_per_pixel:
        raise ModelPackError(f"pack {meta.model_id} makes {meta.channels}-channel images but preset {preset.name} "
                             f"has {preset.samples_per_pixel}", pack.root)
    if meta.channels > 1 and cfg.format == "nifti":
        raise ConfigError(f"{preset.name} images are RGB: use --format dicom or png")
    notes: list[str] = []
    if pack.metadata.quality.get("thresholds_met") is False:
        notes.append(f"model pack {pack.metadata.model_id} is below the acceptance thresholds of QUALITY.md "
                     f"({'; '.join(pack.metadata.quality.get('failures', []))}): see its MODEL_CARD.md")
    if not preset.is_volume and cfg.slices not in (1, 32):
        notes.append(f"{preset.name} is a 2D preset: one image per series (--slices ignored)")
    shared = cfg.noise == "shared" or (cfg.noise == "auto" and meta.uses_position and preset.is_volume)
    # The pack knows what its model space means: its matrix, spacing and physical range win.
    intensity = IntensityMapping(**{**dataclasses.asdict(preset.intensity),
                                    "physical_low": meta.physical_range[0], "physical_high": meta.physical_range[1]})
    rows, cols = meta.matrix
    denoiser = open_denoiser(pack, cfg.device, cfg.threads)

    from medsynth.dicom_io.writer import Provenance, SyntheticStudyWriter, WriterOptions

    provenance = Provenance(
        model_id=meta.model_id, model_sha256=pack.model_sha256, seed=seed, sampler=sampler_cfg.sampler,
        steps=sampler_cfg.steps, guidance=sampler_cfg.guidance, condition=condition, software_version=__version__,
        pack_identity=getattr(pack, "identity", pack.model_sha256),
    )
    run_info = {
        "generator": {
            "preset": preset.name, "model_id": meta.model_id, "model_sha256": pack.model_sha256,
            "model_dir": str(pack.root), "provider": denoiser.info.provider, "model_file": denoiser.info.model_file,
            "sampler": sampler_cfg.sampler, "steps": sampler_cfg.steps, "eta": sampler_cfg.eta,
            "guidance": sampler_cfg.guidance, "spacing": sampler_cfg.spacing, "condition": condition,
            "seed": seed, "noise": "coherent along each series" if shared else "independent per slice",
            "batch_size": cfg.batch_size,
        }
    }
    total = len(_patients(cfg)) * cfg.studies * cfg.series * n_slices
    out_dir = Path(cfg.out_dir)
    window = preset.windows[0]
    preview_tiles: list[npt.NDArray[np.uint8]] = []

    def geometry_for(n: int) -> VolumeGeometry:
        return VolumeGeometry.axial((rows, cols), meta.pixel_spacing_mm, meta.slice_spacing_mm or preset.slice_thickness_mm, n,
                                    centre=table_centre(preset, condition))

    writer: Any
    sink: _PlainSink | None = None
    if cfg.format == "dicom":
        from medsynth.dicom_io.transfer_syntax import TransferSyntax

        syntax = TransferSyntax.parse(cfg.transfer_syntax)
        options = WriterOptions(patients=cfg.patients, studies_per_patient=cfg.studies, series_per_study=cfg.series,
                                slices_per_series=n_slices, seed=seed if cfg.reproducible_uids else None,
                                transfer_syntax=syntax, uid_root=cfg.uid_root,
                                **({"identity": cfg.identity} if cfg.identity is not None else {}))
        writer_class: type[SyntheticStudyWriter] = SyntheticStudyWriter
        if cfg.multiframe:  # each series as one Legacy Converted Enhanced CT/MR object
            from medsynth.dicom_io.multiframe import MultiFrameWriter

            writer_class = MultiFrameWriter
        writer = writer_class(out_dir, preset, options, provenance, force=cfg.force)
        writer.manifest_extra.update(run_info)
        if cfg.shard is not None:  # merge-shards reads it
            writer.manifest_extra["shard"] = {**cfg.shard.to_json(), "patients": list(_patients(cfg))}
    else:
        _prepare_plain_output(out_dir, cfg.force)
        sink = writer = _PlainSink(out_dir, cfg.format, preset, window)

    from medsynth.sampling.series import StageTimer, series_positions

    timer = StageTimer()
    support = _position_support(meta, condition, notes)
    t0 = time.perf_counter()
    first_slice: float | None = None
    done = 0
    current: tuple[int, int, int] | None = None
    manifest: dict[str, Any]
    # the DICOM writer's __exit__ leaves a manifest of the complete files if sampling fails
    with writer if sink is None else contextlib.nullcontext():
        def pixel_stream() -> Iterator[tuple[_Item, npt.NDArray[np.float32]]]:
            """Pixel-space packs: batches of slices (any series), sampled together."""
            for batch in _batches(_items(cfg, n_slices), cfg.batch_size):
                rngs = [_slice_rng(seed, (*it.series_key, it.index)) for it in batch]

                def noise(shape: tuple[int, ...], rngs: list[np.random.Generator] = rngs) -> npt.NDArray[np.float32]:
                    return np.stack([g.standard_normal(shape[1:], dtype=np.float32) for g in rngs])

                if shared:
                    x_t = np.stack([_coherent_noise(seed, it.series_key, it.index, (meta.channels, rows, cols))
                                    for it in batch])
                else:
                    x_t = noise((len(batch), meta.channels, rows, cols))
                position = None
                if meta.uses_position:
                    position = np.array([it.index / (it.n - 1) if it.n > 1 else 0.5 for it in batch], dtype=np.float32)
                cond = Conditioning(np.full(len(batch), label, dtype=np.int64), meta.null_class, position)
                t_den = time.perf_counter()
                x0 = sample(denoiser, schedule, meta.prediction_type, x_t, cond, sampler_cfg, noise, on_step=on_step)
                timer.add("denoiser", t_den)
                # grey [H, W]; colour [H, W, 3] (RGB, as the writers take it)
                yield from zip(batch, x0[:, 0] if meta.channels == 1 else x0.transpose(0, 2, 3, 1), strict=True)

        def latent_stream() -> Iterator[tuple[_Item, npt.NDArray[np.float32]]]:
            """Latent packs: each series slice by slice (conditioned on the slice below), decoded in batches."""
            from medsynth.sampling.runtime import open_image_model
            from medsynth.sampling.series import sample_latent_series

            spec = meta.latent
            assert spec is not None  # pack.is_latent
            decoder = open_image_model(pack, "decoder", cfg.device, cfg.threads)
            shape = (spec.channels, *spec.shape)
            for p in _patients(cfg):
                for s in range(cfg.studies):
                    for r in range(cfg.series):
                        key = (p, s, r)

                        def start(k: int, key: tuple[int, int, int] = key) -> npt.NDArray[np.float32]:
                            return _slice_rng(seed, (*key, k)).standard_normal(shape, dtype=np.float32)

                        def step_noise(k: int, key: tuple[int, int, int] = key) -> Callable[[tuple[int, ...]], npt.NDArray[np.float32]]:
                            g = _slice_rng(seed, (*key, k, 1))
                            return lambda sh: g.standard_normal(sh, dtype=np.float32)

                        for k, img in sample_latent_series(
                                denoiser, decoder.__call__, schedule, meta.prediction_type, sampler_cfg, label=label,
                                null_class=meta.null_class, positions=series_positions(n_slices, support),
                                start_noise=start, step_noise=step_noise, scale_factor=spec.scale_factor,
                                decode_batch=max(1, min(cfg.batch_size, 2)), timer=timer, on_step=on_step):
                            yield _Item(p, s, r, k, n_slices), img

        for it, img in (latent_stream() if pack.is_latent else pixel_stream()):
            if it.series_key != current:
                current = it.series_key
                geom = geometry_for(it.n)
                if sink is not None:
                    sink.begin_series(current, geom, it.n)
                else:
                    writer.begin_series(geom, (rows, cols), patient=it.patient, study=it.study)
            t_write = time.perf_counter()
            physical = intensity.to_physical(img)
            writer.write_slice(it.index, physical)
            timer.add("write", t_write)
            if cfg.preview and len(preview_tiles) < PREVIEW_MAX:
                preview_tiles.append(_window_8bit(physical, window))
            done += 1
            if first_slice is None:
                first_slice = time.perf_counter() - t0
            if on_slice is not None:
                on_slice(done, total)
        if sink is not None:
            head = {"format_version": 1, "software": f"medsynth {__version__}", "format": cfg.format,
                    "preset": preset.name, "provenance": provenance.to_json(), **run_info}
            manifest = sink.finish(head)
        else:
            manifest = writer.finish()
    seconds = time.perf_counter() - t0
    preview = None
    if cfg.preview and preview_tiles:
        preview = out_dir / PREVIEW_NAME
        _save_png(preview, _contact_sheet(preview_tiles))
    return GenerateResult(
        out_dir=out_dir, format=cfg.format, preset=preset.name, model_id=meta.model_id,
        model_sha256=pack.model_sha256, provider=denoiser.info.provider, threads=denoiser.info.threads,
        sampler=sampler_cfg.sampler, steps=sampler_cfg.steps, guidance=sampler_cfg.guidance, eta=sampler_cfg.eta,
        condition=condition, seed=seed, series=len(_patients(cfg)) * cfg.studies * cfg.series, slices=done,
        files=len(manifest.get("files", [])), seconds=seconds, first_slice_s=first_slice or 0.0,
        manifest=out_dir / MANIFEST_NAME, preview=preview, notes=tuple(notes),
        stage_seconds={k: round(v, 3) for k, v in timer.seconds.items()},
    )


@dataclass(frozen=True)
class PackInfo:
    """A pack as listed by ``medsynth models``: where it is, its pack.json and its model card."""

    root: Path
    source: str  # "bundled" | "model-dir"
    metadata: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "source": self.source, "metadata": self.metadata,
                "model_card": self.model_card, "error": self.error}


def list_packs(model_dirs: tuple[Path, ...] = ()) -> list[PackInfo]:
    """Every pack folder (one with a pack.json) in the bundled packs and in ``model_dirs``; each is
    verified, and a broken one is listed with its error instead of stopping the listing."""
    out: list[PackInfo] = []
    env = user_model_dir()
    if env is not None and env not in model_dirs:
        model_dirs = (*model_dirs, env)
    for source, base in [("bundled", bundled_packs_dir()), *(("model-dir", Path(d)) for d in model_dirs)]:
        if not base.is_dir():
            if source != "bundled":
                raise ConfigError("model folder does not exist", base)
            continue
        roots = [base] if (base / "pack.json").is_file() else sorted(p for p in base.iterdir() if (p / "pack.json").is_file())
        for root in roots:
            card_path = root / "MODEL_CARD.md"
            card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else ""
            try:
                pack = load_pack(root)
                out.append(PackInfo(root, source, pack.metadata.to_json(), card))
            except ModelPackError as err:
                out.append(PackInfo(root, source, {}, card, str(err)))
    return out
