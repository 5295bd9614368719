"""The mathematics of ε / v / x0 and of the DDIM walk."""

import pytest
import torch
from diffusers import DDIMScheduler

from lotus_pl.formulations import Generative
from lotus_pl.parameterizations import Epsilon, Sample, Velocity
from lotus_pl.schedules import MultiStep, NoiseSchedule, SingleStep

PARAMETERIZATIONS = [Epsilon(), Velocity(), Sample()]
PREDICTION_TYPE = {Epsilon: "epsilon", Velocity: "v_prediction", Sample: "sample"}


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS, ids=repr)
@pytest.mark.parametrize("t", [0, 1, 250, 500, 998, 999])
def test_ideal_output_recovers_x0_and_eps(parameterization, t):
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(t)
    x0, eps = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    tt = torch.full((2,), t)
    a = schedule.alpha_bar.double()[tt].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = parameterization.target(x0, eps, a)
    torch.testing.assert_close(parameterization.to_x0(out, x_t, a), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(parameterization.to_eps(out, x_t, a), eps, rtol=1e-9, atol=1e-9)


def test_sd2_schedule_matches_reference_values():
    schedule = NoiseSchedule()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alpha_bar.double(), expected, rtol=1e-5, atol=1e-7)
    assert abs(float(schedule.alpha_bar[999].sqrt()) - 0.068) < 0.001


def test_zero_terminal_snr_removes_the_leak():
    schedule = NoiseSchedule(zero_terminal_snr=True)
    assert float(schedule.alpha_bar[999]) == 0.0
    x0, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(schedule.add_noise(x0, eps, torch.tensor([999])), eps)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS, ids=repr)
def test_ddim_walk_matches_diffusers(parameterization):
    """Our DDIM walk (via to_x0 / to_eps) equals diffusers' DDIMScheduler.step for the same outputs."""
    schedule = NoiseSchedule()
    steps = MultiStep(num_inference_steps=5)
    timesteps = steps.inference_timesteps(1000)
    reference = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
                              prediction_type=PREDICTION_TYPE[type(parameterization)], clip_sample=False, set_alpha_to_one=True)
    reference.set_timesteps(5)
    assert [int(t) for t in reference.timesteps] == timesteps

    image_latent = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    weight = torch.randn(4, 8, dtype=torch.float64) * 0.3

    def denoise(x, t):  # an arbitrary deterministic "network"
        return torch.einsum("oc,bchw->bohw", weight, x) + 0.001 * t

    x_T = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    schedule = schedule.double()
    ours = Generative().sample(denoise, image_latent, timesteps, schedule, parameterization, init_latent=x_T)

    x = x_T
    for t in reference.timesteps:
        out = denoise(torch.cat([image_latent, x], 1), int(t))
        result = reference.step(out, t, x, eta=0.0)
        x, x0 = result.prev_sample, result.pred_original_sample
    torch.testing.assert_close(ours, x0.double(), rtol=1e-5, atol=1e-5)


def test_timestep_schedules():
    assert SingleStep().inference_timesteps(1000) == [999]
    assert SingleStep().training_timesteps(3, 1000, torch.device("cpu")).tolist() == [999, 999, 999]
    with pytest.raises(ValueError, match="outside"):
        SingleStep(1000).inference_timesteps(1000)
    assert MultiStep(4).inference_timesteps(1000) == [999, 749, 499, 249]
    t = MultiStep(10, num_training_timesteps=2).training_timesteps(200, 1000, torch.device("cpu"))
    assert set(t.tolist()) == {999, 499}
    t = MultiStep(10).training_timesteps(2000, 1000, torch.device("cpu"))
    assert t.min() >= 0 and t.max() <= 999 and len(set(t.tolist())) > 500
