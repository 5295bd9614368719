"""Tiny offline stand-ins for the parts of a Stable Diffusion folder that need a download.

Tests and benchmarks build diffusers-layout folders (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) from config with random weights; the CLIP tokenizer is the one piece
that needs files (a vocabulary and merges), so it is written here with a minimal vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_tiny_clip(folder: str | Path, hidden: int, seed: int = 0) -> None:
    """A one-layer CLIP text encoder (``folder/text_encoder``) and a byte-level BPE tokenizer with a
    minimal vocabulary (``folder/tokenizer``), seeded; enough to embed the empty prompt."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = Path(folder) / "tokenizer"
    tok_dir.mkdir(parents=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77).save_pretrained(tok_dir)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    model.save_pretrained(Path(folder) / "text_encoder")
