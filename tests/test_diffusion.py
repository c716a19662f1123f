"""Scheduler maths (medsynth.sampling.diffusion) against MONAI's schedulers, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medsynth.errors import ConfigError
from medsynth.pack import NoiseScheduleConfig
from medsynth.sampling.diffusion import (
    DiffusionSchedule,
    Timesteps,
    betas_for,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    predict_x0_eps,
    respace,
)

SCHEDULES = [
    NoiseScheduleConfig("linear_beta", 1000, 1e-4, 2e-2),
    NoiseScheduleConfig("scaled_linear_beta", 1000, 0.0015, 0.0195),
    NoiseScheduleConfig("cosine", 1000),
    NoiseScheduleConfig("scaled_linear_beta", 37, 0.001, 0.05),
]


def _monai_kwargs(cfg: NoiseScheduleConfig) -> dict[str, object]:
    kw: dict[str, object] = {"num_train_timesteps": cfg.num_train_timesteps, "schedule": cfg.schedule}
    if cfg.schedule != "cosine":
        kw.update(beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    return kw


@pytest.mark.parametrize("cfg", SCHEDULES, ids=lambda c: f"{c.schedule}-{c.num_train_timesteps}")
def test_schedules_match_monai(cfg: NoiseScheduleConfig) -> None:
    monai = DDPMScheduler(**_monai_kwargs(cfg))  # type: ignore[arg-type]
    ours = DiffusionSchedule.from_config(cfg)
    # MONAI computes in float32; its cosine betas = 1 - ᾱ_t/ᾱ_(t-1) lose ~5 digits to cancellation.
    atol = 5e-5 if cfg.schedule == "cosine" else 1e-7
    np.testing.assert_allclose(betas_for(cfg), monai.betas.double().numpy(), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(ours.alphas_cumprod, monai.alphas_cumprod.double().numpy(), rtol=2e-5, atol=1e-7)
    assert ours.num_train_timesteps == cfg.num_train_timesteps
    assert ours.alpha_bar(-1) == 1.0


def test_unknown_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown noise schedule"):
        betas_for(NoiseScheduleConfig("sigmoid_beta"))  # type: ignore[arg-type]


def test_respacing() -> None:
    tr = respace(1000, 50, "trailing")
    assert tr.t[0] == 999 and tr.t[-1] == 19 and len(tr) == 50
    assert tr.t_prev == (*tr.t[1:], -1)
    assert all(a - b == 20 for a, b in zip(tr.t, tr.t[1:], strict=False))
    le = respace(1000, 50, "leading")
    assert le.t[0] == 980 and le.t[-1] == 0
    li = respace(1000, 50, "linspace")
    monai = DDIMScheduler(num_train_timesteps=1000)
    monai.set_timesteps(50)
    assert li.t == tuple(int(v) for v in monai.timesteps)
    full = respace(1000, 1000, "trailing")
    assert full.t == tuple(range(999, -1, -1))
    for spacing in ("trailing", "leading", "linspace"):
        for steps in (1, 7, 333, 999):
            ts = respace(1000, steps, spacing)  # type: ignore[arg-type]
            assert len(ts) == steps and len(set(ts.t)) == steps and max(ts.t) < 1000
    with pytest.raises(ConfigError, match="steps must be between 1 and 1000"):
        respace(1000, 1001)
    with pytest.raises(ConfigError, match="steps must be between"):
        respace(1000, 0)
    with pytest.raises(ConfigError, match="does not go towards"):
        Timesteps((10, 5), (11, -1))


def test_prediction_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (3, 1, 8, 8))
    eps = rng.standard_normal((3, 1, 8, 8))
    ab = 0.37
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    v = np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0
    for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        x0_hat, eps_hat = predict_x0_eps(out, xt, ab, kind, clip_sample=False)  # type: ignore[arg-type]
        np.testing.assert_allclose(x0_hat, x0, atol=1e-10)
        np.testing.assert_allclose(eps_hat, eps, atol=1e-10)
    clipped, _ = predict_x0_eps(eps * 10, xt, ab, "epsilon", clip_sample=True)
    assert clipped.min() >= -1.0 and clipped.max() <= 1.0
    with pytest.raises(ConfigError):
        predict_x0_eps(eps, xt, ab, "score")  # type: ignore[arg-type]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_single_steps_match_monai(prediction: str) -> None:
    cfg = SCHEDULES[1]
    sched = DiffusionSchedule.from_config(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    out = torch.randn(2, 1, 8, 8, generator=g)
    ddpm = DDPMScheduler(**_monai_kwargs(cfg), prediction_type=prediction)  # type: ignore[arg-type]
    for t in (999, 500, 1):
        ref, _ = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(7))
        z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(7)).numpy()
        x0, _ = predict_x0_eps(out.numpy(), x.numpy(), sched.alpha_bar(t), prediction)  # type: ignore[arg-type]
        ours = ddpm_step(x0, x.numpy(), sched.alpha_bar(t), sched.alpha_bar(t - 1), z)
        np.testing.assert_allclose(ours, ref.numpy(), atol=2e-5)
    ddim = DDIMScheduler(**_monai_kwargs(cfg), prediction_type=prediction)  # type: ignore[arg-type]
    ddim.set_timesteps(50)
    for t, eta in ((999, 0.0), (519, 0.0), (19, 0.0), (500, 0.7)):
        ref, _ = ddim.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(3))
        z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)).numpy()
        x0, eps = predict_x0_eps(out.numpy(), x.numpy(), sched.alpha_bar(t), prediction)  # type: ignore[arg-type]
        ours = ddim_step(x0, eps, sched.alpha_bar(t), sched.alpha_bar(t - 20), eta, z)
        np.testing.assert_allclose(ours, ref.numpy(), atol=2e-5)


def test_dpmpp_first_order_step_is_ddim() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 4, 4))
    x0 = rng.uniform(-1, 1, (2, 1, 4, 4))
    ab_t, ab_prev = 0.2, 0.5
    eps = (x - np.sqrt(ab_t) * x0) / np.sqrt(1 - ab_t)
    np.testing.assert_allclose(dpmpp_2m_step(x, x0, ab_t, ab_prev, None), ddim_step(x0, eps, ab_t, ab_prev, 0.0, None))
    # the last step onto the clean image returns x0 exactly
    np.testing.assert_array_equal(dpmpp_2m_step(x, x0, ab_t, 1.0, (x0 * 0.5, 0.1)), x0)
    # a second-order step differs from the first-order one when x0 changed
    assert not np.allclose(dpmpp_2m_step(x, x0, ab_t, ab_prev, (x0 * 0.5, 0.1)), dpmpp_2m_step(x, x0, ab_t, ab_prev, None))
