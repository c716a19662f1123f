"""Sampling loops against MONAI's DDPM/DDIM schedulers on the same network and noise; DPM-Solver++
against the exact probability-flow solution of a Gaussian; the onnxruntime denoiser and its devices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules

from _packs import TinyDenoiser, make_tiny_pack
from medsynth.errors import ConfigError, DeviceError, ModelPackError
from medsynth.pack import NoiseScheduleConfig, load_pack, save_pack_metadata, sha256_file
from medsynth.sampling.diffusion import DiffusionSchedule, Timesteps, respace
from medsynth.sampling.runtime import open_denoiser, physical_cores
from medsynth.sampling.samplers import Conditioning, SamplerConfig, sample

SIZE = 16
# Two torch (OpenMP) threads on this busy 2-core machine run the tiny UNet ~200x slower than one
# (threads spin at barriers while their partner is descheduled); the tests need no torch speed.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyDenoiser]:
    return make_tiny_pack(tmp_path_factory.mktemp("pack") / "tiny", size=SIZE, prediction_type="v_prediction")


@pytest.fixture(scope="module")
def tiny_eps_pos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyDenoiser]:
    return make_tiny_pack(
        tmp_path_factory.mktemp("pack") / "tiny-eps", size=SIZE, prediction_type="epsilon", uses_position=True,
        schedule=NoiseScheduleConfig("linear_beta", 50, 1e-4, 0.04), seed=1,
    )


def torch_denoiser(model: TinyDenoiser) -> Callable[..., np.ndarray]:
    @torch.no_grad()
    def run(x: np.ndarray, t: np.ndarray, c: np.ndarray, p: np.ndarray | None) -> np.ndarray:
        pt = None if p is None else torch.from_numpy(p)
        return model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(c), pt).numpy()

    return run


def torch_noise(seed: int, dtype: torch.dtype = torch.float32) -> Callable[[tuple[int, ...]], np.ndarray]:
    """The draws MONAI's ``step(..., generator=torch.Generator().manual_seed(seed))`` makes."""
    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=g, dtype=dtype).float().numpy()


@torch.no_grad()
def monai_loop(
    model: TinyDenoiser, scheduler: Any, x: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor | None,
    guidance: float, null: int, seed: int, eta: float | None = None, model_t: list[int] | None = None,
    float64: bool = False,
) -> torch.Tensor:
    """The reference: MONAI's scheduler stepping the torch model, guidance by two separate passes.

    ``float64`` (linear_beta only) rebuilds MONAI's β with its own formula in float64 and steps in
    float64 (the network stays float32): in float32, 1 - ᾱ_0 = 1.0002e-4 while β_0 = 1e-4, so MONAI's
    last DDPM step returns 0.9998·x̂0 instead of x̂0 (a 1.6e-4 difference at |x| = 1).
    """
    g = torch.Generator().manual_seed(seed)
    if float64:
        n = scheduler.num_train_timesteps
        scheduler.betas = torch.linspace(float(scheduler.betas[0]), float(scheduler.betas[-1]), n, dtype=torch.float64)
        scheduler.alphas = 1.0 - scheduler.betas
        scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
        scheduler.one = torch.tensor(1.0, dtype=torch.float64)
        x = x.double()
    for i, t in enumerate(scheduler.timesteps):
        tm = model_t[i] if model_t is not None else int(t)
        tt = torch.full((x.shape[0],), tm, dtype=torch.long)
        out = model(x.float(), tt, labels, pos).to(x.dtype)
        if guidance != 1.0:
            unc = model(x.float(), tt, torch.full_like(labels, null), pos).to(x.dtype)
            out = unc + guidance * (out - unc)
        kw = {"eta": eta} if eta is not None else {}
        x, _ = scheduler.step(out, int(t), x, generator=g, **kw)
    return x


def _monai_ddim_pairs(sched: DDIMScheduler) -> Timesteps:
    """MONAI's DDIM lands on t - T // steps, not on the next listed timestep."""
    ts = [int(t) for t in sched.timesteps]
    k = sched.num_train_timesteps // sched.num_inference_steps
    return Timesteps(tuple(ts), tuple(max(t - k, -1) for t in ts))


@pytest.mark.parametrize(("eta", "guidance"), [(0.0, 1.0), (0.0, 3.0), (0.6, 2.0)])
def test_ddim_matches_monai(tiny: tuple[Path, TinyDenoiser], eta: float, guidance: float) -> None:
    root, model = tiny
    pack = load_pack(root)
    meta = pack.metadata
    b, steps = 3, 15
    x_t = torch.randn(b, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 2])
    ref_sched = DDIMScheduler(
        num_train_timesteps=1000, schedule=meta.schedule.schedule, beta_start=meta.schedule.beta_start,
        beta_end=meta.schedule.beta_end, prediction_type=meta.prediction_type, clip_sample=True,
    )
    ref_sched.set_timesteps(steps)
    ref = monai_loop(model, ref_sched, x_t.clone(), labels, None, guidance, meta.null_class, 11, eta=eta).numpy()
    cfg = SamplerConfig("ddim", steps, eta=eta, guidance=guidance)
    cond = Conditioning(labels.numpy(), meta.null_class)
    schedule = DiffusionSchedule.from_config(meta.schedule)
    pairs = _monai_ddim_pairs(ref_sched)
    for name, den in (("torch", torch_denoiser(model)), ("onnxruntime", open_denoiser(pack, "cpu"))):
        ours = sample(den, schedule, meta.prediction_type, x_t.numpy(), cond, cfg, torch_noise(11), pairs)
        diff = float(np.abs(ours - ref).max())
        print(f"DDIM eta={eta} w={guidance} {name} vs MONAI: max |diff| = {diff:.2e}")
        assert diff < 1e-4, name
    # and it is not trivially equal: the samples differ per label and from the start noise
    assert np.abs(ref[0] - ref[1]).max() > 1e-2 and np.abs(ref - x_t.numpy()).max() > 1e-1


def test_ddpm_full_chain_matches_monai(tiny_eps_pos: tuple[Path, TinyDenoiser]) -> None:
    root, model = tiny_eps_pos
    pack = load_pack(root)
    meta = pack.metadata
    b = 2
    x_t = torch.randn(b, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    labels, pos = torch.tensor([0, 2]), torch.tensor([0.0, 1.0])
    ref_sched = DDPMScheduler(
        num_train_timesteps=50, schedule="linear_beta", beta_start=1e-4, beta_end=0.04,
        prediction_type="epsilon", clip_sample=True,
    )
    ref = monai_loop(model, ref_sched, x_t.clone(), labels, pos, 2.0, meta.null_class, 4, float64=True).numpy()
    ref_sched32 = DDPMScheduler(
        num_train_timesteps=50, schedule="linear_beta", beta_start=1e-4, beta_end=0.04,
        prediction_type="epsilon", clip_sample=True,
    )
    ref32 = monai_loop(model, ref_sched32, x_t.clone(), labels, pos, 2.0, meta.null_class, 4).numpy()
    cfg = SamplerConfig("ddpm", 50, guidance=2.0)
    cond = Conditioning(labels.numpy(), meta.null_class, pos.numpy())
    schedule = DiffusionSchedule.from_config(meta.schedule)
    for name, den in (("torch", torch_denoiser(model)), ("onnxruntime", open_denoiser(pack, "cpu"))):
        ours = sample(den, schedule, "epsilon", x_t.numpy(), cond, cfg, torch_noise(4, torch.float64))
        diff = float(np.abs(ours - ref).max())
        ours = sample(den, schedule, "epsilon", x_t.numpy(), cond, cfg, torch_noise(4))
        diff32 = float(np.abs(ours - ref32).max())
        print(f"DDPM 50/50 steps {name} vs MONAI: max |diff| = {diff:.2e} (MONAI in float32: {diff32:.2e})")
        assert diff < 2e-5, name
        assert 1e-5 < diff32 < 1e-3, name
    assert np.abs(ref[0] - ref[1]).max() > 1e-2


def test_respaced_ddpm_matches_monai_on_the_respaced_schedule(tiny: tuple[Path, TinyDenoiser]) -> None:
    """improved-diffusion respacing = MONAI's DDPM run on the betas 1 - ᾱ(t_i)/ᾱ(t_(i-1))."""
    root, model = tiny
    meta = load_pack(root).metadata
    schedule = DiffusionSchedule.from_config(meta.schedule)
    ts = respace(1000, 20, "trailing")
    used = np.array(ts.t[::-1])
    abar = schedule.alphas_cumprod[used]
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    name = "medsynth_test_respaced"
    if name not in NoiseSchedules.names:
        NoiseSchedules.add(name, "test only", lambda num_train_timesteps, b=None: torch.tensor(b, dtype=torch.float32))
    ref_sched = DDPMScheduler(num_train_timesteps=20, schedule=name, b=betas.tolist(),
                              prediction_type=meta.prediction_type)
    x_t = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([1, 1])
    ref = monai_loop(model, ref_sched, x_t.clone(), labels, None, 1.0, meta.null_class, 8,
                     model_t=list(ts.t)).numpy()
    ours = sample(torch_denoiser(model), schedule, meta.prediction_type, x_t.numpy(),
                  Conditioning(labels.numpy(), meta.null_class), SamplerConfig("ddpm", 20), torch_noise(8))
    diff = float(np.abs(ours - ref).max())
    print(f"respaced DDPM 20 steps vs MONAI: max |diff| = {diff:.2e}")
    assert diff < 1e-4


def _gaussian_denoiser(mu: float, s: float, schedule: DiffusionSchedule) -> Callable[..., np.ndarray]:
    """The exact ε-predictor for data ~ N(mu, s²) per pixel."""

    def run(x: np.ndarray, t: np.ndarray, c: np.ndarray, p: np.ndarray | None) -> np.ndarray:
        ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        var = ab * s**2 + 1 - ab
        # E[eps | x_t] for the Gaussian: Cov(eps, x_t) / Var(x_t) * (x_t - mean)
        return (np.sqrt(1 - ab) / var * (x - np.sqrt(ab) * mu)).astype(np.float32)

    return run


@pytest.mark.parametrize(("mu", "s"), [(0.2, 0.3), (0.1, 0.5)])
def test_dpmpp_2m_beats_ddim_on_the_exact_gaussian_ode(mu: float, s: float) -> None:
    """For N(mu, s²) data the probability-flow ODE is known in closed form: x_t = √ᾱ mu + √(ᾱs²+1-ᾱ) z.
    Every sampler ends with the same x̂0(x_last) at its last timestep, so the reference is that
    posterior mean applied to the exact ODE state at that timestep. (The error is not monotone in
    the step count on MONAI's integer-timestep grid, so no convergence order is asserted.)"""
    schedule = DiffusionSchedule.from_config(NoiseScheduleConfig())
    den = _gaussian_denoiser(mu, s, schedule)
    x_t = np.random.default_rng(0).standard_normal((4, 1, 8, 8))
    ab_T = schedule.alpha_bar(999)
    z = (x_t - np.sqrt(ab_T) * mu) / np.sqrt(ab_T * s**2 + 1 - ab_T)
    cond = Conditioning(np.zeros(4, dtype=np.int64), 1)
    errs: dict[tuple[str, int], float] = {}
    for steps in (10, 20, 25, 40):
        ab_l = schedule.alpha_bar(respace(1000, steps).t[-1])
        var_l = ab_l * s**2 + 1 - ab_l
        x_l = np.sqrt(ab_l) * mu + np.sqrt(var_l) * z
        exact = mu + np.sqrt(ab_l) * s**2 / var_l * (x_l - np.sqrt(ab_l) * mu)
        for name in ("ddim", "dpmpp-2m"):
            cfg = SamplerConfig(name, steps, clip_sample=False)  # type: ignore[arg-type]
            out = sample(den, schedule, "epsilon", x_t.astype(np.float32), cond, cfg)
            errs[name, steps] = float(np.abs(out - exact).max())
    print({f"{k[0]}@{k[1]}": f"{v:.1e}" for k, v in errs.items()})
    assert errs["dpmpp-2m", 10] < errs["ddim", 10]
    for steps in (20, 25, 40):
        assert errs["dpmpp-2m", steps] < 0.3 * errs["ddim", steps]
    assert max(errs["dpmpp-2m", 20], errs["dpmpp-2m", 25]) < 0.02 * s


def test_sampler_config_validation() -> None:
    with pytest.raises(ConfigError, match="unknown sampler"):
        SamplerConfig("euler")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ConfigError, match="eta"):
        SamplerConfig(eta=-0.1)
    with pytest.raises(ConfigError, match="guidance"):
        SamplerConfig(guidance=float("nan"))
    schedule = DiffusionSchedule.from_config(NoiseScheduleConfig(num_train_timesteps=10))
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    cond = Conditioning(np.zeros(1, dtype=np.int64), 1)
    with pytest.raises(ConfigError, match="needs a noise source"):
        sample(_gaussian_denoiser(0, 1, schedule), schedule, "epsilon", x, cond, SamplerConfig("ddpm", 5))
    with pytest.raises(ConfigError, match="steps must be between 1 and 10"):
        sample(_gaussian_denoiser(0, 1, schedule), schedule, "epsilon", x, cond, SamplerConfig("ddim", 50))


def test_runtime_cpu_threads_and_devices(tiny: tuple[Path, TinyDenoiser], monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    pack = load_pack(tiny[0])
    den = open_denoiser(pack, "auto")
    assert den.info.provider == "CPUExecutionProvider" and den.info.device == "cpu"
    assert den.info.threads == physical_cores() >= 1
    out = den(np.zeros((5, 1, SIZE, SIZE), np.float32), np.full(5, 3, np.int64), np.zeros(5, np.int64), None)
    assert out.shape == (5, 1, SIZE, SIZE) and out.dtype == np.float32 and np.abs(out).max() > 0
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        open_denoiser(pack, "cuda")
    # onnxruntime-gpu without CUDA libraries lists CUDA but silently runs on the CPU: detected.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="fell back to the CPU"):
        open_denoiser(pack, "cuda")
    assert open_denoiser(pack, "auto").info.provider == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="unknown device"):
        open_denoiser(pack, "tpu")  # type: ignore[arg-type]


def test_runtime_refuses_a_model_that_does_not_match_its_pack(tiny: tuple[Path, TinyDenoiser], tmp_path: Path) -> None:
    import dataclasses
    import shutil

    root = tmp_path / "p"
    shutil.copytree(tiny[0], root)
    meta = load_pack(root).metadata
    save_pack_metadata(root, dataclasses.replace(meta, uses_position=True))
    with pytest.raises(ModelPackError, match="lack \\['position'\\]"):
        open_denoiser(load_pack(root), "cpu")
    (root / "model.onnx").write_bytes(b"not onnx")
    save_pack_metadata(root, dataclasses.replace(meta, files={"model.onnx": sha256_file(root / "model.onnx")}))
    with pytest.raises(ModelPackError, match="onnxruntime cannot load"):
        open_denoiser(load_pack(root), "cpu")
