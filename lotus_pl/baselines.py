"""A discriminative baseline that plugs in where the diffusion UNet goes: a timm encoder and a light
dense decoder, so the diffusion prior can be ablated against a plain regressor under the same data,
codec, loss, metrics and sweeps (Lotus-D with this denoiser is a direct latent-to-latent regressor).

The encoder is ``timm.create_model(encoder, features_only=True, in_chans=...)``: CNNs (ConvNeXt,
ResNet, ...) through their feature stages, ViTs through ``forward_intermediates`` (timm's
``FeatureGetterNet``: every feature at the patch stride). The decoder is FPN-like: each encoder
feature projected to ``decoder_channels``, merged top-down (upsample + add + 3×3 conv block), brought
to the latent resolution and concatenated with a 3×3 projection of the latent itself (the
full-resolution skip a UNet has), then a 3×3 conv block and a 3×3 conv to the output channels.
The task switch (``class_labels``) scales and shifts every decoder block (FiLM); the timestep and the
text context are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import Tensor, nn

from lotus_pl.denoisers import DenoiserFactory


class _Block(nn.Module):
    """3×3 conv, GroupNorm, FiLM from the task switch (when there is one), GELU."""

    def __init__(self, in_channels: int, out_channels: int, switch_dim: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.film = nn.Linear(switch_dim, 2 * out_channels) if switch_dim else None

    def forward(self, x: Tensor, switch: Tensor | None) -> Tensor:
        x = self.norm(self.conv(x))
        if self.film is not None:
            scale, shift = self.film(switch.to(x.dtype))[:, :, None, None].chunk(2, dim=1)
            x = x * (1 + scale) + shift
        return F.gelu(x)


class TimmDenseRegressor(nn.Module):
    """A timm feature encoder with an FPN-like decoder, called like a diffusers UNet.

    ``size_multiple`` (the encoder's total stride) is the multiple the latent's height and width
    must be; ``LotusModel`` pads images to it.
    """

    def __init__(self, encoder: nn.Module, in_channels: int, out_channels: int, class_embedding_dim: int,
                 decoder_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.class_embedding_dim = class_embedding_dim
        self.size_multiple = int(max(encoder.feature_info.reduction()))
        channels = encoder.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in channels)
        self.merge = nn.ModuleList(_Block(decoder_channels, decoder_channels, class_embedding_dim, norm_groups) for _ in channels)
        self.skip = _Block(in_channels, decoder_channels, class_embedding_dim, norm_groups)
        self.head = _Block(2 * decoder_channels, decoder_channels, class_embedding_dim, norm_groups)
        self.out = nn.Conv2d(decoder_channels, out_channels, 3, padding=1)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the encoder's stages in the backward pass (timm's own checkpointing)."""
        target = self.encoder if hasattr(self.encoder, "set_grad_checkpointing") else self.encoder.model
        target.set_grad_checkpointing(True)

    def forward(self, sample: Tensor, timestep: Any = None, encoder_hidden_states: Tensor | None = None,
                class_labels: Tensor | None = None, return_dict: bool = True) -> UNet2DConditionOutput:
        """``timestep`` and ``encoder_hidden_states`` are accepted for the UNet's call and ignored."""
        height, width = sample.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"latent {height}×{width} is not a multiple of the encoder's stride {self.size_multiple}")
        if self.class_embedding_dim and class_labels is None:
            raise ValueError("this regressor was built with a task switch: class_labels are required")
        if not self.class_embedding_dim and class_labels is not None:
            raise ValueError("this regressor was built without a task switch (class_embedding_dim=0) but got class_labels")
        features = self.encoder(sample)
        x = self.merge[-1](self.lateral[-1](features[-1]), class_labels)
        for i in range(len(features) - 2, -1, -1):
            x = _resize(x, features[i].shape[-2:]) + self.lateral[i](features[i])
            x = self.merge[i](x, class_labels)
        x = torch.cat([_resize(x, (height, width)), self.skip(sample, class_labels)], dim=1)
        out = self.out(self.head(x, class_labels))
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TimmRegressor(DenoiserFactory):
    """Builds a :class:`TimmDenseRegressor` from config: the discriminative baseline.

    Latents are small (32×32 for the 128-px quickstart, 16×16 for the embedded ablations), and a
    stock ConvNeXt patchifies by 4 and then halves three times, leaving 1×1 at the end of a 32×32
    latent. The shipped configs therefore build ConvNeXt with ``encoder_kwargs: {patch_size: 1}``:
    its stages run at strides 1, 2, 4, 8 of the latent, like a 4-level UNet (size_multiple 8).
    ``convnext_atto`` with ``decoder_channels: 96`` has about the SmallUNet's 3.9M parameters.
    For a ViT pass e.g. ``{patch_size: 2, img_size: 32, dynamic_img_size: true}`` (and
    ``out_indices``); its features are all at the patch stride.

    Args:
        encoder: a timm model name (``convnext_atto``, ``convnext_nano``, ``resnet18``, ``vit_tiny_patch16_224``, ...).
        encoder_kwargs: extra ``timm.create_model`` arguments (``patch_size``, ``out_indices``, ``dims``, ...).
        pretrained_file: a local weights file (``.safetensors``, ``.pth``) of that architecture with
            3 input channels, loaded by timm (``pretrained_cfg_overlay=dict(file=...)``), which adapts
            the first conv to the latent's channels (and, for ViTs, resamples the patch embedding and
            position embedding to other patch / image sizes). CNN stems must match in kernel size.
            ``None``: random initialisation. Nothing is ever downloaded.
        decoder_channels: width of every decoder block.
        norm_groups: GroupNorm groups of the decoder blocks.
        seed: seed of the initial weights, so the same config builds the same model.
    """

    def __init__(self, encoder: str = "convnext_atto", encoder_kwargs: dict[str, Any] | None = None,
                 pretrained_file: str | None = None, decoder_channels: int = 96, norm_groups: int = 8,
                 seed: int = 0) -> None:
        if not timm.is_model(encoder):
            raise ValueError(f"TimmRegressor: encoder {encoder!r} is not a timm model name (see timm.list_models())")
        if pretrained_file is not None and not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"TimmRegressor: pretrained_file {pretrained_file} does not exist")
        if decoder_channels % norm_groups:
            raise ValueError(f"TimmRegressor: decoder_channels ({decoder_channels}) must be a multiple of norm_groups ({norm_groups})")
        self.encoder = encoder
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.pretrained_file = pretrained_file
        self.decoder_channels = decoder_channels
        self.norm_groups = norm_groups
        self.seed = seed

    def _encoder(self, in_channels: int) -> nn.Module:
        kwargs: dict[str, Any] = dict(self.encoder_kwargs, features_only=True, in_chans=in_channels)
        if self.pretrained_file is None:
            return timm.create_model(self.encoder, pretrained=False, **kwargs)
        try:
            return timm.create_model(self.encoder, pretrained=True, pretrained_cfg_overlay=dict(file=self.pretrained_file), **kwargs)
        except RuntimeError as error:
            raise RuntimeError(f"TimmRegressor: {self.pretrained_file} does not fit {self.encoder} "
                               f"with {self.encoder_kwargs}: {error}") from error

    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> TimmDenseRegressor:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            return TimmDenseRegressor(self._encoder(in_channels), in_channels, out_channels, class_embedding_dim,
                                      self.decoder_channels, self.norm_groups)
        finally:
            torch.random.set_rng_state(generator_state)

    def text_context(self) -> Tensor:
        """Unused by the regressor; a ``[1, 1, 1]`` zero tensor so the model's call stays the same."""
        return torch.zeros(1, 1, 1)
