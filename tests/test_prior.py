"""The embedded diffusion prior: scene domains, generative pretraining, and the export that
fine-tuning loads exactly as it loads Stable Diffusion 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lotus_pl.codecs import SpaceToDepth
from lotus_pl.data.domains import LitRooms, Mixture, Outdoor, Rooms, Tabletop
from lotus_pl.data.renderer import render, render_random
from lotus_pl.data.synthetic import render_sample, sample_seed
from lotus_pl.denoisers import PretrainedStableDiffusion, SmallUNet
from lotus_pl.formulations import Deterministic, Generative
from lotus_pl.model import LotusModel
from lotus_pl.parameterizations import Epsilon, Sample
from lotus_pl.prior import ImagePrior, TinyTextEncoder, export_prior
from lotus_pl.schedules import MultiStep, SingleStep
from lotus_pl.tasks import Depth

TINY = dict(block_out_channels=[16, 32], cross_attention=[False, True], attention_head_dim=8, cross_attention_dim=16)


def tiny_prior(seed: int = 0) -> ImagePrior:
    return ImagePrior(SmallUNet(**TINY, seed=seed), SpaceToDepth(4), TinyTextEncoder(hidden=16), Epsilon(), MultiStep(5),
                      sample_grid=0)


def _view(domain, seed, size=48):
    scene, camera = domain.sample(np.random.default_rng(domain.entropy([seed])))
    return render(scene, camera, size, size)


# ----------------------------------------------------------------------------- domains
def test_rooms_is_the_quickstart_renderer_bit_for_bit():
    for seed in (0, 5):
        base = sample_seed(0, "train", seed)
        ref = render_random(base, 32, 32)
        view = render(*Rooms().sample(np.random.default_rng(Rooms().entropy(base))), 32, 32)
        assert np.array_equal(view.rgb, ref.rgb) and np.array_equal(view.depth, ref.depth)


@pytest.mark.parametrize("domain", [LitRooms(), Outdoor(), Tabletop(), Mixture()], ids=repr)
def test_domains_render_deterministically_per_seed(domain):
    a, b, c = _view(domain, 3), _view(domain, 3), _view(domain, 4)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth) and np.array_equal(a.normal, b.normal)
    assert not np.array_equal(a.rgb, c.rgb)
    assert a.rgb.std() > 5  # not a blank image
    normals = a.normal[a.valid]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)


def test_domains_differ_in_what_they_show():
    """Held-out domains really are other worlds: sky (no depth) outdoors, centimetre range on a table."""
    outdoor = [_view(Outdoor(), s) for s in range(6)]
    table = [_view(Tabletop(), s) for s in range(6)]
    rooms = [_view(Rooms(), s) for s in range(6)]
    assert np.mean([(~v.valid).mean() for v in outdoor]) > 0.1  # sky
    assert max(v.depth.max() for v in outdoor) > 20 and max(v.depth.max() for v in outdoor) < 65  # fits 16-bit mm
    assert max(v.depth[v.valid].max() for v in table) < 3.5 and min(v.depth[v.valid].min() for v in table) < 1.0
    assert np.median([np.median(v.depth[v.valid]) for v in rooms]) > 2 * np.median([np.median(v.depth[v.valid]) for v in table])
    # Same index, different domains: unrelated scenes (the seed is salted with the domain's name)
    assert not np.array_equal(_view(LitRooms(), 1).depth, _view(Rooms(), 1).depth)


def test_lit_rooms_colour_the_light():
    import dataclasses

    scene, camera = LitRooms().sample(np.random.default_rng(LitRooms().entropy([0])))
    lights = [scene.light, *scene.fill_lights]
    assert len(lights) >= 2 and max(np.ptp(light.color) for light in lights) > 0.1
    white = dataclasses.replace(scene, light=dataclasses.replace(scene.light, color=(1.0, 1.0, 1.0)),
                                fill_lights=[dataclasses.replace(light, color=(1.0, 1.0, 1.0)) for light in scene.fill_lights])
    coloured, plain = render(scene, camera, 32, 32), render(white, camera, 32, 32)
    assert np.array_equal(coloured.depth, plain.depth) and np.array_equal(coloured.albedo, plain.albedo)
    assert np.abs(coloured.rgb.astype(int) - plain.rgb).mean() > 2


def test_mixture_draws_every_domain_and_checks_weights():
    mix = Mixture()
    names = set()
    for s in range(40):
        rng = np.random.default_rng(s)
        names.add(int(rng.choice(len(mix.domains), p=mix.probabilities)))
    assert names == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="one non-negative weight per domain"):
        Mixture([Rooms(), Outdoor()], [1.0])


def test_shard_samples_record_their_domain():
    sample = render_sample(0, "val", 0, 32, Outdoor())
    meta = json.loads(sample["json"])
    assert meta["domain"] == "outdoor"
    assert json.loads(render_sample(0, "val", 0, 32)["json"])["domain"] == "rooms"


# ----------------------------------------------------------------------------- pretraining
def test_pretraining_loss_falls(tiny_images):
    torch.manual_seed(0)
    prior = tiny_prior()
    optimizer = torch.optim.AdamW(prior.unet.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    before = np.mean([prior.diffusion_loss(tiny_images, torch.Generator().manual_seed(k)).item() for k in range(4)])
    for _ in range(80):
        loss = prior.diffusion_loss(tiny_images[torch.randint(0, len(tiny_images), (8,), generator=generator)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = np.mean([prior.diffusion_loss(tiny_images, torch.Generator().manual_seed(k)).item() for k in range(4)])
    assert after < 0.85 * before, (before, after)  # measured 1.10 -> 0.83


def test_sampling_is_seeded_and_in_range():
    prior = tiny_prior()
    a = prior.sample(2, (48, 8, 8), steps=3, seed=5)
    b = prior.sample(2, (48, 8, 8), steps=3, seed=5)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_text_encoder_width_must_match_the_unet():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        ImagePrior(SmallUNet(**TINY), SpaceToDepth(4), TinyTextEncoder(hidden=32), Epsilon(), MultiStep(5))


# ----------------------------------------------------------------------------- export -> fine-tuning
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    prior = tiny_prior()
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in prior.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = export_prior(prior, tmp_path_factory.mktemp("prior") / "export")
    return prior, folder


def test_export_has_the_stable_diffusion_layout(exported):
    _, folder = exported
    for part in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                 "tokenizer/vocab.json", "scheduler/scheduler_config.json", "model_index.json"):
        assert (folder / part).is_file(), part
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == [None, None]
    assert index["lotus_pl_codec"] == {"class_path": "lotus_pl.codecs.SpaceToDepth", "init_args": {"factor": 4}}
    scheduler = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"


def _inputs(latent_channels=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, latent_channels, 8, 8, generator=g), torch.tensor([999, 500])


def test_lotus_d_loads_the_prior_exactly(exported):
    prior, folder = exported
    model = LotusModel(Depth(), PretrainedStableDiffusion(str(folder)), SpaceToDepth(4), Deterministic(), Sample(), SingleStep())
    assert torch.equal(model.text_context, prior.text_context)
    x, t = _inputs()
    with torch.no_grad():
        ours = model.unet(x, t, encoder_hidden_states=model.text_context.expand(2, -1, -1)).sample
        theirs = prior.predict_noise_target(x, t)
    assert torch.equal(ours, theirs)


def test_lotus_g_with_the_image_latent_twice_gives_the_prior(exported):
    prior, folder = exported
    model = LotusModel(Depth(), PretrainedStableDiffusion(str(folder)), SpaceToDepth(4), Generative(), Sample(), SingleStep())
    assert model.unet.conv_in.in_channels == 96
    x, t = _inputs()
    with torch.no_grad():
        ours = model.unet(torch.cat([x, x], 1), t, encoder_hidden_states=model.text_context.expand(2, -1, -1)).sample
        theirs = prior.predict_noise_target(x, t)
    # the widened conv_in sums its 2 × 48 inputs in another order: equal up to float rounding
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_export_refuses_to_clobber_an_unrelated_folder(exported, tmp_path):
    prior, _ = exported
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an exported folder"):
        export_prior(prior, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def tiny_images():
    images = [render_random(sample_seed(0, "prior", i), 32, 32).rgb for i in range(16)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
