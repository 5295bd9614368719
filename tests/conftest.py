"""Shared fixtures: a tiny synthetic dataset and a tiny Stable-Diffusion-layout model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lotus_pl.tiny_components import write_tiny_clip

TINY_UNET = dict(block_out_channels=[16, 32], cross_attention=[False, True], attention_head_dim=8, cross_attention_dim=16)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> dict[str, str]:
    """24 train / 8 val procedural scenes of 32×32 in shards of 8, with manifests."""
    from lotus_pl.data.synthetic import write_synthetic_split

    root = tmp_path_factory.mktemp("synthetic")
    out = {}
    for split, num in (("train", 24), ("val", 8)):
        manifest = root / f"synthetic_{split}.yaml"
        write_synthetic_split(str(root / "shards"), str(manifest), split, num, size=32, seed=0, samples_per_shard=8, workers=1)
        out[split] = str(manifest)
    return out


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A Stable-Diffusion-2-layout folder (unet, vae, text_encoder, tokenizer, scheduler) with tiny random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = tmp_path_factory.mktemp("tiny_sd")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
    ).save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(folder / "scheduler")
    write_tiny_clip(folder, hidden=16)
    return folder


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    """A tiny pretrained prior as ``lotus_pl prior`` exports it (SD layout over SpaceToDepth(4) latents)."""
    from lotus_pl.codecs import SpaceToDepth
    from lotus_pl.denoisers import SmallUNet
    from lotus_pl.parameterizations import Epsilon
    from lotus_pl.prior import ImagePrior, TinyTextEncoder, export_prior
    from lotus_pl.schedules import MultiStep

    prior = ImagePrior(SmallUNet(**TINY_UNET), SpaceToDepth(4), TinyTextEncoder(hidden=16), Epsilon(), MultiStep(5), sample_grid=0)
    return export_prior(prior, tmp_path_factory.mktemp("tiny_prior") / "prior")
