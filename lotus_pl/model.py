"""The Lotus LightningModule: one model for every task, formulation and parameterization.

It composes the swappable pieces (see DESIGN.md) and holds no branches on their kind:
``Task`` (targets, decoding, metrics), ``Codec`` (image <-> latent), ``DenoiserFactory`` (the UNet),
``Formulation`` (Lotus-G / Lotus-D), ``Parameterization`` (ε / v / x0), ``TimestepSchedule``
(single / multi step) and ``NoiseSchedule`` (SD2, optionally zero terminal SNR).

Training step: encode image and annotation, optionally double the batch for the detail preserver
(second half reconstructs the image latent under the "RGB" task switch), build the UNet input and
target with the formulation, and minimise the masked latent MSE of each half, equally weighted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lotus_pl.codecs import Codec, SpaceToDepth
from lotus_pl.denoisers import DenoiserFactory
from lotus_pl.formulations import Deterministic, Formulation
from lotus_pl.parameterizations import Parameterization, Sample
from lotus_pl.schedules import NoiseSchedule, SingleStep, TimestepSchedule
from lotus_pl.tasks import Task


def task_switch(index: int, num_states: int, batch_size: int, device: torch.device) -> Tensor:
    """Lotus's task switcher: ``cat(sin(s), cos(s))`` of the one-hot ``s``, ``[B, 2 * num_states]``."""
    one_hot = F.one_hot(torch.tensor(index, device=device), num_states).float()
    return torch.cat([one_hot.sin(), one_hot.cos()]).expand(batch_size, -1)


def latent_mask(valid: Tensor, factor: int) -> Tensor:
    """Pixel mask -> latent mask: a latent cell is valid only if all its pixels are."""
    if factor == 1:
        return valid
    return ~F.max_pool2d((~valid).float(), factor).bool()


def latent_size_multiple(unet: torch.nn.Module) -> int:
    """The multiple a latent's height and width must be for the denoiser: its own ``size_multiple``
    if it declares one (non-diffusers denoisers), else 2^(levels - 1) of a diffusers UNet."""
    declared = getattr(unet, "size_multiple", None)
    return int(declared) if declared is not None else 2 ** (len(unet.config.block_out_channels) - 1)


def masked_mse(out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over valid latent cells (all channels); 0 if none is valid."""
    weight = mask.to(out.dtype).expand_as(out)
    return ((out.float() - target.float()) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


class LotusModel(LightningModule):
    """Diffusion-based dense prediction (Lotus).

    Args:
        task: the annotation to predict (``Depth``, ``Normal``, ...).
        denoiser: builds the UNet (``SmallUNet`` or ``PretrainedStableDiffusion``).
        codec: image <-> latent map (``SpaceToDepth`` or ``StableDiffusionVAE``).
        formulation: ``Deterministic`` (Lotus-D) or ``Generative`` (Lotus-G).
        parameterization: ``Sample`` (x0), ``Velocity`` or ``Epsilon``.
        timesteps: ``SingleStep`` or ``MultiStep``.
        noise_schedule: alpha_bar (SD2's by default; set ``zero_terminal_snr`` to remove the leak).
        detail_preserver: also train the UNet to reconstruct the image under a task switch.
        optimizer: optimizer factory (AdamW by default).
        lr_scheduler: optional learning-rate scheduler factory, stepped every optimizer step.
        processing_resolution: longest image edge at inference (0 = native size).
        gradient_checkpointing: recompute UNet activations in the backward pass to save memory.
        channels_last: keep the UNet and its inputs in channels-last memory format (faster convolutions
            on recent GPUs, with ``compile_unet``).
        compile_unet: ``torch.compile`` the UNet (in place, so checkpoints keep their keys).
        tile_size, tile_overlap: predict images larger than ``processing_resolution`` also in native
            tiles of this size (0 = off), overlapping by ``tile_overlap`` pixels.
        seed: seed of the inference noise (Lotus-G), so predictions are reproducible.
    """

    def __init__(
        self,
        task: Task,
        denoiser: DenoiserFactory,
        codec: Codec = lazy_instance(SpaceToDepth),
        formulation: Formulation = lazy_instance(Deterministic),
        parameterization: Parameterization = lazy_instance(Sample),
        timesteps: TimestepSchedule = lazy_instance(SingleStep),
        noise_schedule: NoiseSchedule | None = None,
        detail_preserver: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        processing_resolution: int = 0,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        compile_unet: bool = False,
        tile_size: int = 0,
        tile_overlap: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.task = task
        self.codec = codec
        self.formulation = formulation
        self.parameterization = parameterization
        self.timesteps = timesteps
        self.noise_schedule = noise_schedule if noise_schedule is not None else NoiseSchedule()
        self.detail_preserver = detail_preserver
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.processing_resolution = processing_resolution
        self.seed = seed
        self.formulation.check(parameterization, timesteps, self.noise_schedule)

        self.num_switch_states = 2 if detail_preserver else 0
        channels = codec.latent_channels
        self.unet = denoiser.build(formulation.unet_in_channels(channels), channels, 2 * self.num_switch_states)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            self.unet.compile()
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.register_buffer("text_context", denoiser.text_context(), persistent=False)
        self.size_multiple = codec.downsample * latent_size_multiple(self.unet)
        self.val_metric = task.metric()
        # The buffers (alpha_bar, the text context, codec statistics) are constants every rank builds
        # identically. Left to DDP, it would broadcast them in every forward, validation included,
        # and ranks with different numbers of evaluation batches would wait on each other forever.
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen codec out of checkpoints; it is rebuilt from the config."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("codec.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key, value in self.codec.state_dict(prefix="codec.").items():
            state.setdefault(key, value)

    # ------------------------------------------------------------------ the UNet call
    def _denoise(self, switch_index: int | None, batch_size: int):
        context = self.text_context.expand(batch_size, -1, -1)
        labels = None
        if self.num_switch_states:
            labels = task_switch(switch_index, self.num_switch_states, batch_size, self.device)

        def denoise(x: Tensor, t: int | Tensor) -> Tensor:
            return self.unet(x, t, encoder_hidden_states=context.to(x.dtype), class_labels=labels).sample

        return denoise

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        image, gt = batch["image"], batch[self.task.gt_key]
        valid = self.valid_mask(batch)
        with torch.no_grad():
            image_latent = self.codec.encode(image)
            target_latent = self.codec.encode(self.task.encode(gt, valid))
        mask = latent_mask(valid, self.codec.downsample)
        batch_size = image.shape[0]

        unet_image, x0, labels = image_latent, target_latent, None
        if self.detail_preserver:  # second half: reconstruct the image latent under the RGB switch
            unet_image = torch.cat([image_latent, image_latent])
            x0 = torch.cat([target_latent, image_latent])
            labels = torch.cat([task_switch(0, 2, batch_size, self.device), task_switch(1, 2, batch_size, self.device)])

        t = self.timesteps.training_timesteps(x0.shape[0], self.noise_schedule.num_train_timesteps, self.device)
        noise = torch.randn_like(x0)
        unet_input, target = self.formulation.training_pair(unet_image, x0, t, noise, self.noise_schedule, self.parameterization)
        if self.channels_last:
            unet_input = unet_input.contiguous(memory_format=torch.channels_last)
        context = self.text_context.expand(x0.shape[0], -1, -1)
        out = self.unet(unet_input, t, encoder_hidden_states=context.to(unet_input.dtype), class_labels=labels).sample

        loss = masked_mse(out[:batch_size], target[:batch_size], mask)
        self.log("train/loss_annotation", loss, prog_bar=True, batch_size=batch_size)
        if self.detail_preserver:
            reconstruction = F.mse_loss(out[batch_size:].float(), target[batch_size:].float())
            self.log("train/loss_reconstruction", reconstruction, batch_size=batch_size)
            loss = loss + reconstruction
        self.log("train/loss", loss, batch_size=batch_size)
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.unet.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_latent(self, image_latent: Tensor, init_latent: Tensor | None = None) -> Tensor:
        """The annotation latent for an image latent (one UNet call for the single step)."""
        generator = torch.Generator(device=image_latent.device).manual_seed(self.seed)
        return self.formulation.sample(
            self._denoise(0, image_latent.shape[0]), image_latent,
            self.timesteps.inference_timesteps(self.noise_schedule.num_train_timesteps),
            self.noise_schedule, self.parameterization, generator=generator, init_latent=init_latent,
        )

    @torch.no_grad()
    def predict_image(self, image: Tensor) -> Tensor:
        """The task's prediction for ``[B, 3, H, W]`` images in [-1, 1], at their own size.

        Resizes the longest edge to ``processing_resolution`` (0 keeps it), pads to the UNet's size
        multiple by edge replication, runs the model, crops the padding and resizes back. With
        ``tile_size`` set, images larger than the processing resolution are also predicted tile by
        tile at native resolution, each tile aligned to the whole-image prediction and blended.
        """
        if self.tile_size and self.processing_resolution and max(image.shape[-2:]) > self.processing_resolution:
            return self._predict_tiled(image)
        return self._predict_at(image, self.processing_resolution)

    def _predict_at(self, image: Tensor, resolution: int) -> Tensor:
        height, width = image.shape[-2:]
        x = image
        if resolution > 0 and max(height, width) != resolution:
            scale = resolution / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        decoded = self.codec.decode(self.predict_latent(self.codec.encode(x)))[..., :h, :w]
        return self.task.resize_for(self.task.decode(decoded.float()), (height, width))

    def _predict_tiled(self, image: Tensor) -> Tensor:
        """Whole image at the processing resolution for the global layout, then overlapping native
        tiles for detail, each aligned to the global prediction (``Task.align``) and feathered in."""
        height, width = image.shape[-2:]
        reference = self._predict_at(image, self.processing_resolution)
        tile = min(self.tile_size, height, width)
        overlap = min(self.tile_overlap, tile // 2)
        stride = tile - overlap

        def starts(size: int) -> list[int]:
            last = max(size - tile, 0)
            return sorted({*range(0, last, stride), last})

        ramp = torch.ones(tile, device=image.device)
        if overlap:
            edge = torch.linspace(0, 1, overlap + 2, device=image.device)[1:-1]
            ramp[:overlap], ramp[-overlap:] = edge, edge.flip(0)
        weight_tile = ramp[:, None] * ramp[None, :]
        total = torch.zeros_like(reference)
        weight = torch.zeros(1, 1, height, width, device=image.device)
        for top in starts(height):
            for left in starts(width):
                window = (..., slice(top, top + tile), slice(left, left + tile))
                pred = self._predict_at(image[window], 0)
                total[window] += self.task.align(pred, reference[window]) * weight_tile
                weight[window] += weight_tile
        return self.task.resize_for(total / weight.clamp_min(1e-12), (height, width))

    # ------------------------------------------------------------------ validation / test
    def valid_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """Pixels to supervise and score: the task's valid ground truth, within the sample's own mask
        if it has one (a dataset's validity mask, or an evaluation crop)."""
        valid = self.task.valid_mask(batch[self.task.gt_key])
        return valid & batch["mask"].bool() if "mask" in batch else valid

    def _evaluate_batch(self, batch: dict[str, Tensor], metric) -> Tensor:
        pred = self.predict_image(batch["image"])
        metric.update(pred, batch[self.task.gt_key], self.valid_mask(batch))
        return pred

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self._evaluate_batch(batch, self.val_metric)
        if batch_idx == 0:
            self._log_panel(batch, pred)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metric.compute()
        for name, value in results.items():
            self.log(f"val/{name}", value, sync_dist=False)
        self.val_metric.reset()

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not batch["path"]:  # every file of this batch was unreadable (reported by the loader)
            return {"path": [], self.task.name: None}
        return {"path": batch["path"], self.task.name: self.predict_image(batch["image"])}

    def _log_panel(self, batch: dict[str, Tensor], pred: Tensor, max_images: int = 4) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_images"):
            return
        gt = batch[self.task.gt_key][:max_images]
        valid = self.task.valid_mask(gt)
        rows = [
            (batch["image"][:max_images] + 1) / 2,
            self.task.visualize(pred[:max_images]),
            self.task.visualize_gt(gt, valid),
        ]
        panel = torch.cat([r.float().cpu().clamp(0, 1) for r in rows], dim=-1)  # input | prediction | ground truth
        experiment.add_images(f"val/{self.task.name}_input_prediction_truth", panel, self.global_step)
