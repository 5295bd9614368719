"""The LotusModel: every formulation × parameterization trains a step, invalid combinations are
refused with a reason, the detail preserver doubles the batch, inference returns the input size."""

import pytest
import torch

from lotus_pl.codecs import SpaceToDepth, StableDiffusionVAE
from lotus_pl.denoisers import PretrainedStableDiffusion, SmallUNet
from lotus_pl.formulations import Deterministic, Generative
from lotus_pl.model import LotusModel, latent_mask, masked_mse, task_switch
from lotus_pl.parameterizations import Epsilon, Sample, Velocity
from lotus_pl.schedules import MultiStep, NoiseSchedule, SingleStep
from lotus_pl.tasks import Depth, Normal

from conftest import TINY_UNET


def make_model(**kwargs) -> LotusModel:
    kwargs.setdefault("task", Depth())
    kwargs.setdefault("denoiser", SmallUNet(**TINY_UNET))
    kwargs.setdefault("codec", SpaceToDepth(2))
    return LotusModel(**kwargs)


def fake_batch(batch_size=2, size=16):
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(batch_size, 1, size, size, generator=gen) * 5 + 0.5
    depth[:, :, :2, :2] = 0  # a few invalid pixels
    normal = torch.nn.functional.normalize(torch.randn(batch_size, 3, size, size, generator=gen), dim=1)
    return {"image": torch.rand(batch_size, 3, size, size, generator=gen) * 2 - 1, "depth": depth, "normal": normal}


COMBINATIONS = [
    (Deterministic(), Sample(), SingleStep(), NoiseSchedule()),
    (Generative(), Sample(), SingleStep(), NoiseSchedule()),
    (Generative(), Velocity(), SingleStep(), NoiseSchedule()),
    (Generative(), Epsilon(), SingleStep(), NoiseSchedule()),
    (Generative(pure_noise_at_terminal=True), Sample(), SingleStep(), NoiseSchedule()),
    (Generative(), Velocity(), SingleStep(), NoiseSchedule(zero_terminal_snr=True)),
    (Generative(), Epsilon(), MultiStep(3), NoiseSchedule()),
    (Generative(), Sample(), MultiStep(2, num_training_timesteps=2), NoiseSchedule()),
]


@pytest.mark.parametrize("formulation,parameterization,timesteps,noise_schedule", COMBINATIONS, ids=lambda x: repr(x))
@pytest.mark.parametrize("detail_preserver", [False, True])
def test_training_step_and_inference(formulation, parameterization, timesteps, noise_schedule, detail_preserver):
    model = make_model(formulation=formulation, parameterization=parameterization, timesteps=timesteps,
                       noise_schedule=noise_schedule, detail_preserver=detail_preserver)
    expected_in = 12 if isinstance(formulation, Deterministic) else 24
    assert model.unet.config.in_channels == expected_in
    batch = fake_batch()
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in model.unet.conv_in.parameters())
    model.eval()
    pred = model.predict_image(torch.rand(1, 3, 21, 30) * 2 - 1)  # not a multiple of the UNet's grid
    assert pred.shape == (1, 1, 21, 30) and torch.isfinite(pred).all()


def test_detail_preserver_doubles_the_batch_with_task_switches():
    model = make_model(detail_preserver=True)
    seen = {}

    def hook(module, args, kwargs):
        seen["x"], seen["labels"] = args[0], kwargs["class_labels"]

    model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    model.training_step(fake_batch(batch_size=3), 0)
    assert seen["x"].shape[0] == 6
    annotation, rgb = task_switch(0, 2, 1, "cpu")[0], task_switch(1, 2, 1, "cpu")[0]
    torch.testing.assert_close(annotation, torch.tensor([0.8415, 0.0, 0.5403, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(seen["labels"][:3], annotation.expand(3, -1))
    torch.testing.assert_close(seen["labels"][3:], rgb.expand(3, -1))
    torch.testing.assert_close(seen["x"][:3], seen["x"][3:])  # same image latent in both halves


def test_pure_noise_at_terminal_hides_the_target():
    schedule = NoiseSchedule()
    x0, noise, image = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([999, 500])
    unet_in, target = Generative(pure_noise_at_terminal=True).training_pair(image, x0, t, noise, schedule, Sample())
    torch.testing.assert_close(unet_in[0, 4:], noise[0])  # no leak at t = 999
    torch.testing.assert_close(unet_in[1, 4:], schedule.add_noise(x0[1:], noise[1:], t[1:])[0])
    leaky, _ = Generative().training_pair(image, x0, t, noise, schedule, Sample())
    assert not torch.allclose(leaky[0, 4:], noise[0])


@pytest.mark.parametrize("kwargs,message", [
    (dict(formulation=Deterministic(), parameterization=Epsilon()), "only the Sample"),
    (dict(formulation=Deterministic(), timesteps=MultiStep(4)), "single-step"),
    (dict(formulation=Generative(), parameterization=Epsilon(), noise_schedule=NoiseSchedule(zero_terminal_snr=True)), "zero SNR"),
    (dict(formulation=Generative(pure_noise_at_terminal=True), parameterization=Epsilon()), "pure noise"),
])
def test_impossible_combinations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_latent_mask_and_masked_loss():
    valid = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0, 1] = False
    mask = latent_mask(valid, 2)
    assert mask.flatten().tolist() == [False, True, True, True]
    out, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    target[0, :, 0, 0] = 100.0  # only under the invalid cell: ignored
    assert masked_mse(out, target, mask).item() == pytest.approx(1.0)
    assert masked_mse(out, target, torch.zeros_like(mask)).item() == 0.0


def test_normal_task_model_predicts_unit_normals():
    model = make_model(task=Normal()).eval()
    pred = model.predict_image(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert pred.shape == (2, 3, 16, 16)
    torch.testing.assert_close(pred.norm(dim=1), torch.ones(2, 16, 16), atol=1e-4, rtol=0)
    loss = model.training_step(fake_batch(), 0)
    assert torch.isfinite(loss)


def test_processing_resolution_and_determinism():
    model = make_model(formulation=Generative(), processing_resolution=16, seed=3).eval()
    image = torch.rand(1, 3, 40, 24) * 2 - 1
    a, b = model.predict_image(image), model.predict_image(image)
    assert a.shape == (1, 1, 40, 24)
    assert torch.equal(a, b)  # Lotus-G's inference noise is seeded


def test_checkpoint_leaves_out_the_frozen_vae(tiny_sd):
    model = make_model(denoiser=PretrainedStableDiffusion(str(tiny_sd)), codec=StableDiffusionVAE(str(tiny_sd)),
                       noise_schedule=NoiseSchedule(pretrained_path=str(tiny_sd)))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert not [k for k in checkpoint["state_dict"] if k.startswith("codec.")]
    assert any(k.startswith("unet.") for k in checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: the codec is filled back in
    loss = model.training_step(fake_batch(size=16), 0)
    assert torch.isfinite(loss)


def test_sample_mask_restricts_supervision_and_scoring():
    model = make_model()
    batch = fake_batch()
    full = model.valid_mask(batch)
    batch["mask"] = torch.zeros_like(batch["depth"], dtype=torch.bool)
    batch["mask"][..., :, 8:] = True  # only the right half may be used
    masked = model.valid_mask(batch)
    assert masked.sum() < full.sum() and not masked[..., :, :8].any()
    assert torch.equal(masked[..., :, 8:], full[..., :, 8:])
    batch["mask"][:] = False  # nothing valid: the loss is zero, not NaN
    assert model.training_step(batch, 0).item() == 0.0
