"""Codecs, UNet builders and the Stable Diffusion folder path (with a tiny SD-layout folder)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from lotus_pl.codecs import SpaceToDepth, StableDiffusionVAE
from lotus_pl.denoisers import PretrainedStableDiffusion, SmallUNet, expand_conv_in


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_space_to_depth_round_trip_is_exact(factor):
    codec = SpaceToDepth(factor)
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    latent = codec.encode(image)
    assert latent.shape == (2, 3 * factor * factor, 16 // factor, 24 // factor)
    assert torch.equal(codec.decode(latent), image)


def test_space_to_depth_scale_gives_unit_variance_latents_and_round_trips(tmp_path):
    image = torch.rand(4, 3, 32, 32) * 2 - 1  # uniform in [-1, 1]: std 1 / sqrt(3)
    plain, scaled = SpaceToDepth(4), SpaceToDepth(4, scale=2.0)
    assert torch.equal(scaled.encode(image), 2 * plain.encode(image))
    assert torch.equal(scaled.decode(scaled.encode(image)), image)  # a power of two: exact
    assert scaled.encode(image).std().item() == pytest.approx(2 / 3**0.5, rel=0.02)
    assert plain.export(tmp_path) == {"class_path": "lotus_pl.codecs.SpaceToDepth", "init_args": {"factor": 4}}
    assert scaled.export(tmp_path)["init_args"] == {"factor": 4, "scale": 2.0}
    with pytest.raises(ValueError, match="scale must be > 0"):
        SpaceToDepth(4, scale=0.0)


def test_space_to_depth_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        SpaceToDepth(2).encode(torch.zeros(1, 3, 15, 16))


def test_expand_conv_in_repeat_and_halve():
    weight = torch.randn(8, 4, 3, 3)
    expanded = expand_conv_in(weight, 8)
    assert expanded.shape == (8, 8, 3, 3)
    torch.testing.assert_close(expanded[:, :4] * 2, weight)
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(torch.cat([x, x], 1), expanded), torch.nn.functional.conv2d(x, weight)
    )
    with pytest.raises(ValueError):
        expand_conv_in(weight, 6)


def test_pretrained_unet_expanded_gives_pretrained_output_when_image_latent_fed_twice(tiny_sd):
    pretrained = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    factory = PretrainedStableDiffusion(str(tiny_sd))
    lotus_g = factory.build(in_channels=8, out_channels=4, class_embedding_dim=0)
    assert lotus_g.config.in_channels == 8 and lotus_g.conv_in.weight.shape[1] == 8
    context = factory.text_context()
    assert context.shape == (1, 2, 16)  # unpadded empty prompt: BOS + EOS
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = pretrained(x, 999, encoder_hidden_states=context.expand(2, -1, -1)).sample
        out = lotus_g(torch.cat([x, x], 1), 999, encoder_hidden_states=context.expand(2, -1, -1)).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_pretrained_unet_gets_a_trainable_task_switcher(tiny_sd):
    unet = PretrainedStableDiffusion(str(tiny_sd)).build(in_channels=4, out_channels=4, class_embedding_dim=4)
    assert unet.config.class_embed_type == "projection"
    assert unet.class_embedding.linear_1.in_features == 4
    pretrained = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    torch.testing.assert_close(unet.conv_in.weight, pretrained.conv_in.weight)  # 4 channels: untouched
    labels = torch.tensor([[0.8415, 0.0, 0.5403, 1.0], [0.0, 0.8415, 1.0, 0.5403]])
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = unet(x, 999, encoder_hidden_states=torch.zeros(2, 2, 16), class_labels=labels).sample
    assert not torch.allclose(out[0], out[1])  # the switch changes the output


def test_missing_stable_diffusion_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a usable Stable Diffusion folder.*missing unet/config.json"):
        PretrainedStableDiffusion(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no VAE at"):
        StableDiffusionVAE(str(tmp_path / "nowhere"))


def test_stable_diffusion_vae_codec(tiny_sd):
    codec = StableDiffusionVAE(str(tiny_sd))
    assert codec.latent_channels == 4 and codec.downsample == 2
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    latent = codec.encode(image)
    assert latent.shape == (1, 4, 8, 8)
    assert codec.decode(latent).shape == image.shape
    assert not any(p.requires_grad for p in codec.parameters())


def test_small_unet_is_reproducible_and_shaped():
    factory = SmallUNet(block_out_channels=(16, 32), cross_attention=(False, True), cross_attention_dim=16)
    a, b = factory.build(8, 4, 4), factory.build(8, 4, 4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    out = a(torch.randn(2, 8, 16, 16), 999, encoder_hidden_states=factory.text_context().expand(2, -1, -1),
            class_labels=torch.zeros(2, 4)).sample
    assert out.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="cross_attention has 1 entries"):
        SmallUNet(block_out_channels=(16, 32), cross_attention=(True,))
