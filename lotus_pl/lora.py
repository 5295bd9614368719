"""LoRA fine-tuning of the UNet through ``peft`` (diffusers' adapter support), chosen in config.

``LoRA`` wraps any denoiser factory: the UNet it builds is frozen, gets low-rank adapters on the
``target_modules`` (attention projections by default), and keeps the ``trainable`` layers fully
trainable (Lotus changes ``conv_in`` for Lotus-G and adds the task switcher's class embedding, neither
of which a pretrained adapter-free UNet has right). Only trainable parameters reach the optimizer::

    model:
      denoiser:
        class_path: lotus_pl.lora.LoRA
        init_args:
          denoiser: {class_path: lotus_pl.denoisers.PretrainedStableDiffusion, init_args: {path: stabilityai/stable-diffusion-2-base}}
          rank: 8
          target_modules: [to_q, to_k, to_v, to_out.0]
          trainable: [conv_in, class_embedding]

Checkpoints hold the adapters separately (peft's ``base_layer`` / ``lora_A`` / ``lora_B`` keys) and load
back with the same config. ``lotus_pl export --lora merged`` (the default) folds them into a plain UNet;
``--lora separate`` writes the base UNet and ``unet_lora/`` (diffusers' ``save_lora_adapter``), which
``DiffusersUNet(path, lora_subfolder="unet_lora")`` loads back (``pip install lotus_pl[lora]``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from lotus_pl.denoisers import DenoiserFactory

#: The adapter's name inside the UNet (peft allows several).
ADAPTER = "lotus_lora"
#: Where a separate-adapter export keeps it.
LORA_SUBFOLDER = "unet_lora"


def has_lora(unet: torch.nn.Module) -> bool:
    """Whether ``unet`` carries peft adapters."""
    return bool(getattr(unet, "peft_config", None))


def merged_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A plain UNet with the adapters folded into its weights (``unet`` itself is left as it is)."""
    merged = copy.deepcopy(unet)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def base_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A plain UNet without the adapters: the frozen weights plus the fully trained layers."""
    base = copy.deepcopy(unet)
    base.unload_lora()
    return base


def save_adapter(unet: torch.nn.Module, folder: Path) -> None:
    """The adapter weights and their peft config (in the safetensors metadata) into ``folder``."""
    unet.save_lora_adapter(str(folder), adapter_name=ADAPTER)


def load_adapter(unet: torch.nn.Module, folder: Path) -> None:
    """Attach an adapter saved by :func:`save_adapter` (``DiffusersUNet(lora_subfolder=...)``)."""
    if not (folder / "pytorch_lora_weights.safetensors").is_file():
        raise FileNotFoundError(f"no LoRA adapter at {folder}: expected pytorch_lora_weights.safetensors (lotus_pl export --lora separate)")
    unet.load_lora_adapter(str(folder), prefix=None, adapter_name=ADAPTER, weight_name="pytorch_lora_weights.safetensors",
                           low_cpu_mem_usage=False)


class LoRA(DenoiserFactory):
    """Low-rank adapters on a frozen UNet from ``denoiser``, some layers kept fully trainable.

    Args:
        denoiser: the factory whose UNet is adapted (``PretrainedStableDiffusion``, ``SmallUNet``, ``DiffusersUNet``).
        rank: the adapters' rank r.
        alpha: LoRA's scale numerator (the update is ``alpha / r · B A``); ``None``: ``alpha = rank``.
        target_modules: module names (peft's matching: a name or its suffix) that get adapters.
        trainable: parameter-name prefixes trained in full (``conv_in``, ``class_embedding``); a prefix
            that matches nothing is an error, except ``class_embedding`` in a model without a task switcher.
        dropout: dropout on the adapters' input.
    """

    def __init__(self, denoiser: DenoiserFactory, rank: int = 8, alpha: float | None = None,
                 target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
                 trainable: Sequence[str] = ("conv_in", "class_embedding"), dropout: float = 0.0) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.denoiser = denoiser
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        self.target_modules = list(target_modules)
        self.trainable = list(trainable)
        self.dropout = dropout

    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> torch.nn.Module:
        try:
            from peft import LoraConfig
        except ImportError as error:
            raise ImportError("lotus_pl.lora.LoRA needs peft: pip install lotus_pl[lora]") from error
        unet = self.denoiser.build(in_channels, out_channels, class_embedding_dim)
        unet.requires_grad_(False)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules,
                            init_lora_weights=True)  # B = 0: the adapted UNet starts as the base one
        try:
            unet.add_adapter(config, adapter_name=ADAPTER)
        except ValueError as error:
            raise ValueError(f"LoRA target_modules {self.target_modules} match no module of the UNet: {error}") from error
        names = [n for n, _ in unet.named_parameters()]
        for prefix in self.trainable:
            matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not matched and not (prefix == "class_embedding" and not class_embedding_dim):
                raise ValueError(f"LoRA trainable prefix {prefix!r} matches no UNet parameter (e.g. {names[:3]})")
            for name in matched:
                unet.get_parameter(name).requires_grad_(True)
        return unet

    def text_context(self) -> Tensor:
        return self.denoiser.text_context()

    def text_encoder_folder(self) -> Path | None:
        return self.denoiser.text_encoder_folder()
