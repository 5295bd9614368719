"""Generative pretraining: a small UNet trained as an image diffusion model, the way Stable
Diffusion 2 base was trained, so the embedded default has a *pretrained prior* to fine-tune.

SD2 base learned ε-prediction over VAE latents at all 1000 timesteps of its scaled-linear
schedule, conditioned on CLIP text embeddings. :class:`ImagePrior` does the same over the codec's
latents (``SpaceToDepth`` in the embedded default), conditioned on the empty prompt's embedding
from a small offline CLIP text encoder (:class:`TinyTextEncoder`), so that the folder
:mod:`lotus_pl.prior.export` writes has every part ``PretrainedStableDiffusion`` reads from SD2
(``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``). It shares the codec, noise schedule,
timestep schedule and parameterization classes with :class:`~lotus_pl.model.LotusModel`.

Validation logs the held-out denoising loss (fixed noise and timesteps, so epochs compare) and a
grid of DDIM samples from fixed noise to TensorBoard; EMA comes from Lightning's
``EMAWeightAveraging`` callback in the config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from jsonargparse import lazy_instance
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lotus_pl.codecs import Codec, SpaceToDepth
from lotus_pl.denoisers import DenoiserFactory, empty_prompt_embedding
from lotus_pl.parameterizations import Epsilon, Parameterization
from lotus_pl.schedules import MultiStep, NoiseSchedule, TimestepSchedule
from lotus_pl.tiny_components import write_tiny_clip


class TinyTextEncoder:
    """A seeded one-layer CLIP text encoder with a minimal tokenizer (built offline, no download),
    standing in for SD2's OpenCLIP-H: the prior is conditioned on its empty-prompt embedding.

    Args:
        hidden: embedding width; must equal the UNet's ``cross_attention_dim``.
        seed: seed of its weights (the same seed writes the same encoder).
    """

    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        self.hidden, self.seed = hidden, seed

    def write(self, folder: str | Path) -> None:
        """``folder/text_encoder`` and ``folder/tokenizer`` in the diffusers layout."""
        write_tiny_clip(folder, self.hidden, self.seed)

    def empty_prompt(self) -> Tensor:
        """The unpadded empty-prompt embedding ``[1, 2, hidden]``, as Lotus conditions on it."""
        with tempfile.TemporaryDirectory() as tmp:
            self.write(tmp)
            return empty_prompt_embedding(Path(tmp))


class ImagePrior(LightningModule):
    """An image diffusion model over codec latents (ε-prediction on SD2's schedule by default).

    Args:
        denoiser: builds the UNet (``SmallUNet``), with as many input as output channels and no
            class embedding.
        codec: image <-> latent map (``SpaceToDepth`` in the embedded default).
        text_encoder: where the empty-prompt context comes from.
        parameterization: what the UNet predicts (``Epsilon``, as SD2 base).
        timesteps: training timesteps and the sampler's walk (all 1000 and a DDIM walk).
        noise_schedule: alpha_bar (SD2's scaled-linear schedule by default).
        optimizer: optimizer factory.
        sample_grid: images in the TensorBoard sample grid after each validation (0: none).
        sample_steps: DDIM steps of those samples.
        seed: seed of the grid's noise and of the validation noise.
    """

    def __init__(
        self,
        denoiser: DenoiserFactory,
        codec: Codec = lazy_instance(SpaceToDepth, factor=4),
        text_encoder: TinyTextEncoder = lazy_instance(TinyTextEncoder),
        parameterization: Parameterization = lazy_instance(Epsilon),
        timesteps: TimestepSchedule = lazy_instance(MultiStep, num_inference_steps=50),
        noise_schedule: NoiseSchedule | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        sample_grid: int = 16,
        sample_steps: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.codec = codec
        self.text_encoder = text_encoder
        self.parameterization = parameterization
        self.timesteps = timesteps
        self.noise_schedule = noise_schedule if noise_schedule is not None else NoiseSchedule()
        self.optimizer_factory = optimizer
        self.sample_grid, self.sample_steps, self.seed = sample_grid, sample_steps, seed
        channels = codec.latent_channels
        self.unet = denoiser.build(channels, channels, 0)
        context = text_encoder.empty_prompt()
        if context.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(f"the text encoder's width {context.shape[-1]} differs from the UNet's cross_attention_dim "
                             f"{self.unet.config.cross_attention_dim}: set text_encoder.hidden to match")
        self.register_buffer("text_context", context, persistent=False)
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.unet.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in [k for k in checkpoint["state_dict"] if k.startswith("codec.")]:
            del checkpoint["state_dict"][key]  # frozen, rebuilt from the config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key, value in self.codec.state_dict(prefix="codec.").items():
            checkpoint["state_dict"].setdefault(key, value)

    def predict_noise_target(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's raw output (in the parameterization's space) at ``x_t``, ``t``."""
        context = self.text_context.expand(x_t.shape[0], -1, -1).to(x_t.dtype)
        return self.unet(x_t, t, encoder_hidden_states=context).sample

    def diffusion_loss(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The denoising loss of one batch of images in [-1, 1]: MSE in the parameterization's space
        at training timesteps, with noise from ``generator`` (fixed in validation)."""
        with torch.no_grad():
            x0 = self.codec.encode(image)
        T = self.noise_schedule.num_train_timesteps
        if generator is None:
            t = self.timesteps.training_timesteps(x0.shape[0], T, x0.device)
            eps = torch.randn_like(x0)
        else:
            t = torch.randint(0, T, (x0.shape[0],), generator=generator).to(x0.device)
            eps = torch.randn(x0.shape, generator=generator).to(x0)
        alpha_bar = self.noise_schedule.at(t, x0)
        x_t = self.noise_schedule.add_noise(x0, eps, t)
        target = self.parameterization.target(x0, eps, alpha_bar)
        return F.mse_loss(self.predict_noise_target(x_t, t), target)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(batch["image"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + batch_idx)
        loss = self.diffusion_loss(batch["image"], generator)
        self.log("val/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)
        if batch_idx == 0:
            self._latent_shape = tuple(self.codec.encode(batch["image"][:1]).shape[1:])

    def on_validation_epoch_end(self) -> None:
        shape = getattr(self, "_latent_shape", None)
        if not self.sample_grid or shape is None or self.trainer.sanity_checking:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        import torchvision

        images = self.sample(self.sample_grid, shape, self.sample_steps)
        grid = torchvision.utils.make_grid((images + 1) / 2, nrow=int(self.sample_grid ** 0.5) or 1)
        experiment.add_image("samples", grid.clamp(0, 1), self.global_step)

    def scheduler(self) -> DDIMScheduler:
        """diffusers' DDIM sampler with exactly this model's alpha_bar and prediction type."""
        from lotus_pl.export import ddim_scheduler

        return ddim_scheduler(self)

    @torch.no_grad()
    def sample(self, num: int, latent_shape: tuple[int, int, int], steps: int = 50, seed: int | None = None) -> Tensor:
        """``num`` images in [-1, 1] drawn by a DDIM walk of ``steps`` steps from seeded noise."""
        scheduler = self.scheduler()
        scheduler.set_timesteps(steps, device=self.device)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        x = torch.randn((num, *latent_shape), generator=generator).to(self.device)
        was_training = self.training
        self.eval()
        for t in scheduler.timesteps:
            out = self.predict_noise_target(x, t.expand(num).to(self.device))
            x = scheduler.step(out, t, x).prev_sample
        self.train(was_training)
        return self.codec.decode(x).clamp(-1, 1)
