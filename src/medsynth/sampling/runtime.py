"""The onnxruntime denoiser of a model pack: device choice, threads, input checks. Torch-free.

``--device auto`` uses CUDAExecutionProvider when onnxruntime-gpu is installed *and* a CUDA device
works (the pack's fp16 model when it has one), otherwise the CPU with one intra-op thread per
physical core (hyper-threads slow convolutions down). onnxruntime-gpu without usable CUDA libraries
silently falls back to the CPU, so the providers of the created session are checked: ``--device
cuda`` then raises :class:`DeviceError` instead of quietly running on the CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from medsynth.errors import ConfigError, DeviceError, ModelPackError
from medsynth.pack import ModelPack

DeviceName = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(DeviceName)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def physical_cores() -> int:
    """Number of physical CPU cores usable by this process (≥ 1).

    psutil is not a dependency, so on Linux the (physical id, core id) pairs of /proc/cpuinfo for
    the CPUs in this process's affinity mask are counted; elsewhere the logical count is used.
    """
    logical = os.cpu_count() or 1
    try:
        import psutil  # type: ignore[import-untyped]

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and cpuinfo.is_file():
        try:
            allowed = os.sched_getaffinity(0)
            cores: set[tuple[str, str]] = set()
            proc, phys, core = -1, "0", ""
            for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines() + [""]:
                key, _, value = (s.strip() for s in line.partition(":"))
                if key == "processor":
                    proc = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not line.strip() and proc >= 0:
                    if proc in allowed:
                        cores.add((phys, core or str(proc)))
                    proc, phys, core = -1, "0", ""
            if cores:
                return len(cores)
        except (OSError, ValueError):
            pass
    return logical


@dataclass(frozen=True)
class RuntimeInfo:
    """Where the denoiser runs: ``provider`` (onnxruntime provider name), ``model_file`` (pack file
    name), ``threads`` (intra-op threads on the CPU; None on CUDA), ``fp16`` (fp16 model)."""

    provider: str
    model_file: str
    threads: int | None
    fp16: bool

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"


class OnnxDenoiser:
    """A pack's ONNX denoiser as a :class:`medsynth.sampling.samplers.Denoiser` callable."""

    def __init__(self, session: Any, info: RuntimeInfo, uses_position: bool, uses_previous: bool = False) -> None:
        self.session = session
        self.info = info
        self.uses_position = uses_position
        self.uses_previous = uses_previous
        self.previous: F32 | None = None  # set by the series sampler before each slice (latent packs)
        self._float = np.float16 if any(i.type == "tensor(float16)" for i in session.get_inputs()) else np.float32

    def __call__(self, sample: F32, timestep: I64, class_labels: I64, position: F32 | None) -> F32:
        """``sample`` f32 [B,C,H,W], ``timestep`` i64 [B], ``class_labels`` i64 [B], ``position``
        f32 [B] (only when the pack uses it) → prediction f32 [B,C,H,W]. Latent packs with the
        previous-slice condition also feed :attr:`previous` [b,C,H,W] (repeated when the sampler
        batches the conditional and unconditional passes, B = k·b)."""
        feeds: dict[str, np.ndarray] = {
            "sample": np.ascontiguousarray(sample, dtype=self._float),
            "timestep": np.ascontiguousarray(timestep, dtype=np.int64),
            "class_labels": np.ascontiguousarray(class_labels, dtype=np.int64),
        }
        if self.uses_position:
            if position is None:
                raise ConfigError("this pack needs a slice position for every image")
            feeds["position"] = np.ascontiguousarray(position, dtype=self._float)
        if self.uses_previous:
            if self.previous is None:
                raise ConfigError("this pack needs the previous slice's latent for every image")
            reps = sample.shape[0] // self.previous.shape[0]
            prev = self.previous if reps == 1 else np.concatenate([self.previous] * reps)
            feeds["previous"] = np.ascontiguousarray(prev, dtype=self._float)
        try:
            (out,) = self.session.run(["prediction"], feeds)
        except Exception as exc:  # onnxruntime's own error types: a graph that does not fit pack.json
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelPackError(f"the model does not accept the inputs pack.json describes ({msg[:200]})",
                                 self.info.model_file) from None
        return np.asarray(out, dtype=np.float32)


class OnnxImageModel:
    """A latent pack's decoder (``latent`` [B,C,h,w] → ``image`` [B,1,H,W]) or encoder (``image`` →
    ``latent``) as a plain callable on float32 arrays."""

    def __init__(self, session: Any, input_name: str, output_name: str, file: str) -> None:
        self.session, self.input_name, self.output_name, self.file = session, input_name, output_name, file

    def __call__(self, x: F32) -> F32:
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelPackError(f"the model does not accept the inputs pack.json describes ({msg[:200]})",
                                 self.file) from None
        return np.asarray(out, dtype=np.float32)


def _disable_telemetry(ort: Any) -> None:
    """onnxruntime ≥ 1.32 sends telemetry at exit unless told not to: medsynth is offline."""
    fn = getattr(ort, "disable_telemetry_events", None)
    if fn is not None:
        fn()


def open_image_model(pack: ModelPack, which: Literal["decoder", "encoder"], device: DeviceName = "auto",
                     threads: int | None = None) -> OnnxImageModel:
    """Open a latent pack's decoder or encoder (fp32) on the device the denoiser would use."""
    spec = pack.metadata.latent
    if spec is None:
        raise ModelPackError(f"pack {pack.metadata.model_id} is not a latent-diffusion pack (no {which})", pack.root)
    import onnxruntime as ort

    _disable_telemetry(ort)
    name = spec.decoder if which == "decoder" else spec.encoder
    if name not in pack.metadata.files:
        raise ModelPackError(f"pack has no {which} ({name})", pack.root)
    path = pack.root / name
    use_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    session = _session(path, [CUDA, CPU] if use_cuda else [CPU], None if use_cuda else (threads or physical_cores()))
    inp, out = ("latent", "image") if which == "decoder" else ("image", "latent")
    if [i.name for i in session.get_inputs()] != [inp] or out not in {o.name for o in session.get_outputs()}:
        raise ModelPackError(f"{name} is not a medsynth {which} (needs input {inp!r}, output {out!r})", path)
    return OnnxImageModel(session, inp, out, name)


def _session(path: Path, providers: list[str], threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: the CUDA fallback is detected below, not logged
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelPackError(f"onnxruntime cannot load this model ({msg})", path) from None


def _check_io(session: Any, pack: ModelPack, path: Path) -> None:
    names = {i.name for i in session.get_inputs()}
    need = {"sample", "timestep", "class_labels"} | ({"position"} if pack.metadata.uses_position else set())
    if pack.metadata.latent is not None and pack.metadata.latent.previous_slice:
        need |= {"previous"}
    if not need <= names:
        raise ModelPackError(f"model inputs {sorted(names)} lack {sorted(need - names)}: not a medsynth denoiser", path)
    extra = names - need
    if extra:
        raise ModelPackError(f"model has inputs {sorted(extra)} that pack.json does not describe", path)
    if "prediction" not in {o.name for o in session.get_outputs()}:
        raise ModelPackError("model has no 'prediction' output: not a medsynth denoiser", path)


def open_denoiser(pack: ModelPack, device: DeviceName = "auto", threads: int | None = None) -> OnnxDenoiser:
    """Open the pack's denoiser on ``device``.

    ``auto``: CUDA (fp16 model if the pack has one) when onnxruntime offers CUDAExecutionProvider
    and it actually loads, else the CPU with the fp32 model. ``cuda``: CUDA or DeviceError.
    ``cpu``: the CPU. ``threads`` defaults to the number of physical cores.
    """
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise DeviceError("no ONNX runtime installed: pip install 'medsynth[cpu]' (or 'medsynth[gpu]' for CUDA)") from None
    _disable_telemetry(ort)
    prev = pack.metadata.latent is not None and pack.metadata.latent.previous_slice

    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise DeviceError(
            f"--device cuda: onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            "(install onnxruntime-gpu instead of onnxruntime, see README 'GPU')"
        )
    if device in ("auto", "cuda") and CUDA in available:
        fp16 = "model.fp16.onnx" in pack.metadata.files
        path = pack.onnx_path(fp16=fp16)
        session = _session(path, [CUDA, CPU], None)
        if session.get_providers()[0] == CUDA:
            _check_io(session, pack, path)
            return OnnxDenoiser(session, RuntimeInfo(CUDA, path.name, None, fp16), pack.metadata.uses_position, prev)
        if device == "cuda":
            raise DeviceError(
                "--device cuda: onnxruntime-gpu is installed but CUDA could not be used "
                "(no GPU, or the CUDA/cuDNN libraries are missing); onnxruntime fell back to the CPU"
            )
    n = threads if threads is not None else physical_cores()
    path = pack.onnx_path(fp16=False)
    session = _session(path, [CPU], n)
    _check_io(session, pack, path)
    return OnnxDenoiser(session, RuntimeInfo(CPU, path.name, n, False), pack.metadata.uses_position, prev)
