"""Shared fixtures: a tiny synthetic dataset and a tiny Stable-Diffusion-layout model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def _write_tiny_clip(folder: Path, hidden: int) -> None:
    """A CLIP text encoder and tokenizer with a minimal byte-level BPE vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(parents=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")).save_pretrained(tok_dir)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")


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
    _write_tiny_clip(folder, hidden=16)
    return folder
