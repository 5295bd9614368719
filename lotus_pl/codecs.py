"""Codecs map images in [-1, 1] to the latent space the UNet works in, and back.

- :class:`StableDiffusionVAE`: the frozen SD VAE from a local diffusers folder (the paper's path).
- :class:`SpaceToDepth`: a lossless, weight-free stand-in for the embedded default: it folds each
  ``f × f`` pixel block into channels, so decode(encode(x)) == x exactly and any error measured
  downstream is the model's alone.

Codecs are frozen: they are never trained and are left out of checkpoints. ``lotus_pl export``
asks each codec to write what it needs into the exported folder (:meth:`Codec.export`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Codec(nn.Module, ABC):
    """A frozen image <-> latent map."""

    #: Channels of the latent.
    latent_channels: int
    #: Spatial downsampling factor between image and latent.
    downsample: int

    @abstractmethod
    def encode(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> ``[B, C, H / f, W / f]``."""

    @abstractmethod
    def decode(self, latent: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, 3, h * f, w * f]`` in roughly [-1, 1]."""

    @abstractmethod
    def export(self, folder: Path) -> dict[str, Any]:
        """Write this codec's weights into an exported diffusers ``folder`` (if it has any) and return
        the ``class_path`` / ``init_args`` config that rebuilds it from there."""

    def train(self, mode: bool = True) -> "Codec":
        return super().train(False)  # frozen: always in eval mode


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


class SpaceToDepth(Codec):
    """Lossless pixel-unshuffle codec: ``3 × f²`` channels at 1/f resolution, no weights.

    Args:
        factor: the block side ``f``.
        scale: latents are the unshuffled pixels times this (Stable Diffusion likewise scales its VAE
            latents, by 0.18215, to unit variance). Images in [-1, 1] have a standard deviation near
            0.5, so 2.0 gives unit-variance latents: the variance that v- and ε-prediction's skip
            terms assume, which a narrow UNet otherwise has to correct by passing the noise through
            (docs/prior.md). 1.0 (the default) is the plain pixels.
    """

    def __init__(self, factor: int = 2, scale: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"SpaceToDepth factor must be >= 1, got {factor}")
        if not scale > 0:
            raise ValueError(f"SpaceToDepth scale must be > 0, got {scale}")
        self.downsample = factor
        self.scale = float(scale)
        self.latent_channels = 3 * factor * factor

    def encode(self, image: Tensor) -> Tensor:
        if image.shape[-2] % self.downsample or image.shape[-1] % self.downsample:
            raise ValueError(f"image size {tuple(image.shape[-2:])} is not divisible by the codec factor {self.downsample}")
        latent = F.pixel_unshuffle(image, self.downsample)
        return latent if self.scale == 1.0 else latent * self.scale

    def decode(self, latent: Tensor) -> Tensor:
        return F.pixel_shuffle(latent if self.scale == 1.0 else latent / self.scale, self.downsample)

    def export(self, folder: Path) -> dict[str, Any]:
        """Nothing to write (no weights): the config alone rebuilds it."""
        args: dict[str, Any] = {"factor": self.downsample}
        if self.scale != 1.0:
            args["scale"] = self.scale
        return {"class_path": _class_path(self), "init_args": args}


class StableDiffusionVAE(Codec):
    """The frozen Stable Diffusion VAE from ``<path>/<subfolder>`` (diffusers layout), scaled latents.

    Args:
        path: local diffusers model folder (for example a Stable Diffusion 2 download), or a Hugging
            Face Hub id (``org/name[@revision]``, see ``lotus_pl.hub``).
        subfolder: the VAE's subfolder.
        sample_posterior: encode with a sample of the posterior instead of its mean (mode).
    """

    def __init__(self, path: str, subfolder: str = "vae", sample_posterior: bool = False) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        from lotus_pl.hub import resolve_model_path

        path = resolve_model_path(path)
        folder = path / subfolder
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no VAE at {folder}: expected a diffusers model folder with '{subfolder}/config.json' and weights "
                "(for example a local Stable Diffusion 2 download) or a Hub id"
            )
        self.vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, local_files_only=True)
        self.vae.requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.sample_posterior = sample_posterior

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        posterior = self.vae.encode(image.to(self.vae.dtype)).latent_dist
        latent = posterior.sample() if self.sample_posterior else posterior.mode()
        return latent * self.scaling_factor

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        return self.vae.decode(latent.to(self.vae.dtype) / self.scaling_factor).sample

    def export(self, folder: Path) -> dict[str, Any]:
        """The VAE as ``<folder>/vae`` (config.json + safetensors), as in Stable Diffusion and Lotus folders."""
        self.vae.save_pretrained(Path(folder) / "vae", safe_serialization=True)
        return {"class_path": _class_path(self),
                "init_args": {"path": str(folder), "subfolder": "vae", "sample_posterior": self.sample_posterior}}
