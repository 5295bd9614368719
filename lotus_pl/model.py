"""The Lotus LightningModule: one model for every task, formulation and parameterization.

It composes the swappable pieces (see DESIGN.md) and holds no branches on their kind:
``Task`` (targets, decoding, metrics), ``Codec`` (image <-> latent), ``DenoiserFactory`` (the UNet),
``Formulation`` (Lotus-G / Lotus-D), ``Parameterization`` (ε / v / x0), ``TimestepSchedule``
(single / multi step) and ``NoiseSchedule`` (SD2, optionally zero terminal SNR).

Training step: encode the image and each task's annotation, stack one copy of the batch per task
(task i under switch i) plus, with the detail preserver, one that reconstructs the image latent
(switch N), build the UNet input and target with the formulation, and minimise the sum of each
part's masked latent MSE, weighted by the task's ``loss_weight`` (reconstruction: 1).

One task without the detail preserver needs no switch, so the UNet has no class embedding. One
task with it is Lotus's detail preserver exactly: switch 0 = annotation, 1 = RGB. Several tasks
(joint estimation) share one UNet through an N(+1)-state switch and are all predicted in one run.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lotus_pl.codecs import Codec, SpaceToDepth
from lotus_pl.data.images import processing_size
from lotus_pl.denoisers import DenoiserFactory
from lotus_pl.ensembles import Ensemble, uncertainty_key
from lotus_pl.formulations import Deterministic, Formulation
from lotus_pl.parameterizations import Parameterization, Sample
from lotus_pl.schedules import NoiseSchedule, SingleStep, TimestepSchedule
from lotus_pl.tasks import Task
from lotus_pl.visualize import colorize


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
        task: the annotation to predict (``Depth``, ``Normal``, ...), or a list of them for one joint
            model (metrics are then logged as ``val/<task>/<metric>``).
        denoiser: builds the UNet (``SmallUNet`` or ``PretrainedStableDiffusion``).
        codec: image <-> latent map (``SpaceToDepth`` or ``StableDiffusionVAE``).
        formulation: ``Deterministic`` (Lotus-D) or ``Generative`` (Lotus-G).
        parameterization: ``Sample`` (x0), ``Velocity`` or ``Epsilon``.
        timesteps: ``SingleStep`` or ``MultiStep``.
        noise_schedule: alpha_bar (SD2's by default; set ``zero_terminal_snr`` to remove the leak).
        detail_preserver: also train the UNet to reconstruct the image under a task switch.
        optimizer: optimizer factory (AdamW by default).
        lr_scheduler: optional learning-rate scheduler factory, stepped every optimizer step.
        processing_resolution: longest image edge at inference: ``None`` (the default) predicts at the
            resolution the model was trained at (the longest edge of its main training source, recorded in
            the checkpoint and in exports), or at the native size if none is recorded; 0 = native size.
        gradient_checkpointing: recompute UNet activations in the backward pass to save memory.
        channels_last: keep the UNet and its inputs in channels-last memory format (faster convolutions
            on recent GPUs, with ``compile_unet``).
        compile_unet: ``torch.compile`` the UNet (in place, so checkpoints keep their keys).
        tile_size, tile_overlap: predict images larger than ``processing_resolution`` also in native
            tiles of this size (0 = off), overlapping by ``tile_overlap`` pixels.
        seed: seed of the inference noise (Lotus-G), so predictions are reproducible.
        video_init: Lotus-G on video frames (``predict`` on a video, in order): start each frame from
            the previous frame's predicted latent, taken through the forward process to the first
            inference timestep with the seeded noise, instead of from the noise alone.
        ensemble: predict several members (Lotus-G seeds, test-time views) and combine them, with
            a per-pixel ``<task>_uncertainty``; validation / test then also score it (AUSE / AURG).
            None (default): one call.
    """

    def __init__(
        self,
        task: Task | list[Task],
        denoiser: DenoiserFactory,
        codec: Codec = lazy_instance(SpaceToDepth),
        formulation: Formulation = lazy_instance(Deterministic),
        parameterization: Parameterization = lazy_instance(Sample),
        timesteps: TimestepSchedule = lazy_instance(SingleStep),
        noise_schedule: NoiseSchedule | None = None,
        detail_preserver: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        processing_resolution: int | None = None,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        compile_unet: bool = False,
        tile_size: int = 0,
        tile_overlap: int = 64,
        seed: int = 0,
        video_init: bool = False,
        ensemble: Ensemble | None = None,
    ) -> None:
        super().__init__()
        self.tasks: list[Task] = [task] if isinstance(task, Task) else list(task)
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need one or more tasks with distinct names, got {names}")
        if video_init and isinstance(formulation, Deterministic):
            raise ValueError("video_init starts Lotus-G's sampling from the previous frame; Deterministic (Lotus-D) "
                             "samples nothing, so it has no effect there: use Generative or leave video_init off")
        self.video_init = video_init
        self.codec = codec
        self.formulation = formulation
        self.parameterization = parameterization
        self.timesteps = timesteps
        self.noise_schedule = noise_schedule if noise_schedule is not None else NoiseSchedule()
        self.detail_preserver = detail_preserver
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.processing_resolution = processing_resolution
        self.training_resolution = 0  # set when fitting starts, saved with checkpoints (0: unknown)
        self.seed = seed
        self.formulation.check(parameterization, timesteps, self.noise_schedule)

        parts = len(self.tasks) + int(detail_preserver)  # UNet passes per training sample
        self.num_switch_states = parts if parts > 1 else 0
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
        self.val_metrics = torch.nn.ModuleDict({t.name: t.metric() for t in self.tasks})
        self.ensemble = ensemble
        if ensemble is not None:
            ensemble.check(self.tasks, samples_noise=not isinstance(formulation, Deterministic), tiled=tile_size > 0)
            if video_init:
                raise ValueError("video_init starts one sampling from the previous frame; it cannot be combined with an ensemble")
        uncertainty = {t.name: ensemble.uncertainty_metric(t) for t in self.tasks} if ensemble is not None else {}
        self.uncertainty_metrics = torch.nn.ModuleDict({k: m for k, m in uncertainty.items() if m is not None})
        self._previous: tuple[str, list[Tensor]] | None = None  # video_init: (sequence, latents per task)
        self._scored: set[str] = set()  # tasks with ground truth in this evaluation epoch
        # The buffers (alpha_bar, the text context, codec statistics) are constants every rank builds
        # identically. Left to DDP, it would broadcast them in every forward, validation included,
        # and ranks with different numbers of evaluation batches would wait on each other forever.
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]

    @property
    def task(self) -> Task:
        """The task of a single-task model (a joint model has several: use :attr:`tasks`)."""
        if len(self.tasks) != 1:  # not AttributeError: nn.Module's __getattr__ would hide this message
            raise RuntimeError(f"this model predicts {[t.name for t in self.tasks]}; use model.tasks")
        return self.tasks[0]

    def metric_prefix(self, task: Task) -> str:
        """``""`` for a single-task model (``val/abs_rel``), ``"<task>/"`` for a joint one."""
        return "" if len(self.tasks) == 1 else f"{task.name}/"

    # ------------------------------------------------------------------ resolution
    @property
    def inference_resolution(self) -> int:
        """The longest edge images are predicted at: ``processing_resolution`` if set, else the
        training resolution recorded with the weights, else 0 (native size)."""
        return self.training_resolution if self.processing_resolution is None else self.processing_resolution

    def resolution_reason(self) -> str:
        """Where :attr:`inference_resolution` came from, for the user."""
        if self.processing_resolution is not None:
            return "as set (model.processing_resolution)" + (": native size" if self.processing_resolution == 0 else "")
        if self.training_resolution:
            return "the training resolution recorded with the model; --model.processing_resolution=N to change it, 0 for native"
        return "native size: no training resolution is recorded with these weights"

    def on_fit_start(self) -> None:
        """Record the training resolution: the longest edge of the main training source's samples."""
        measure = getattr(getattr(self.trainer, "datamodule", None), "training_resolution", None)
        if callable(measure):
            self.training_resolution = int(measure() or 0)

    def on_predict_start(self) -> None:
        resolution = self.inference_resolution
        rank_zero_info(f"predicting at processing resolution {resolution or 'native'} ({self.resolution_reason()})")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen codec out of checkpoints (it is rebuilt from the config); record the
        training resolution, which predictions default to."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("codec.")]:
            del state[key]
        checkpoint["training_resolution"] = int(self.training_resolution)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_resolution = int(checkpoint.get("training_resolution") or 0)
        state = checkpoint["state_dict"]
        for key, value in self.codec.state_dict(prefix="codec.").items():
            state.setdefault(key, value)

    # ------------------------------------------------------------------ the UNet call
    def _switch(self, switches: list[int], batch_size: int) -> Tensor | None:
        """Task-switch labels for ``len(switches)`` stacked copies of a batch (None: no switcher)."""
        if not self.num_switch_states:
            return None
        return torch.cat([task_switch(i, self.num_switch_states, batch_size, self.device) for i in switches])

    def _denoise(self, labels: Tensor | None, batch_size: int):
        context = self.text_context.expand(batch_size, -1, -1)

        def denoise(x: Tensor, t: int | Tensor) -> Tensor:
            return self.unet(x, t, encoder_hidden_states=context.to(x.dtype), class_labels=labels).sample

        return denoise

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        image = batch["image"]
        batch_size = image.shape[0]
        x0s, masks = [], []
        with torch.no_grad():
            image_latent = self.codec.encode(image)
            for task in self.tasks:
                if task.gt_key not in batch:
                    raise KeyError(f"training batch has no {task.gt_key!r} for task {task.name!r} (has {sorted(batch)})")
                valid = self.valid_mask(batch, task)
                x0s.append(self.codec.encode(task.encode(batch[task.gt_key], valid)))
                masks.append(latent_mask(valid, self.codec.downsample))
        if self.detail_preserver:  # the last part reconstructs the image latent under the RGB switch
            x0s.append(image_latent)
        parts = len(x0s)
        x0 = torch.cat(x0s)
        unet_image = image_latent.repeat(parts, 1, 1, 1) if parts > 1 else image_latent
        labels = self._switch(list(range(parts)), batch_size)

        generator = self.training_generator(batch)
        t = self.timesteps.training_timesteps(x0.shape[0], self.noise_schedule.num_train_timesteps, self.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        unet_input, target = self.formulation.training_pair(unet_image, x0, t, noise, self.noise_schedule, self.parameterization)
        if self.channels_last:
            unet_input = unet_input.contiguous(memory_format=torch.channels_last)
        context = self.text_context.expand(x0.shape[0], -1, -1)
        out = self.unet(unet_input, t, encoder_hidden_states=context.to(unet_input.dtype), class_labels=labels).sample

        out, target = out.split(batch_size), target.split(batch_size)
        loss = out[0].new_zeros((), dtype=torch.float32)
        for i, (task, mask) in enumerate(zip(self.tasks, masks)):
            part = masked_mse(out[i], target[i], mask)
            self.log(f"train/loss_{task.name}", part, prog_bar=True, batch_size=batch_size)
            loss = loss + task.loss_weight * part
        if self.detail_preserver:
            reconstruction = F.mse_loss(out[-1].float(), target[-1].float())
            self.log("train/loss_reconstruction", reconstruction, batch_size=batch_size)
            loss = loss + reconstruction
        self.log("train/loss", loss, batch_size=batch_size)
        return loss

    def training_generator(self, batch: dict[str, Any]) -> torch.Generator:
        """The training noise's generator, seeded from the batch's slot (its place in the whole
        job's stream, :mod:`lotus_pl.data.resumable`), so that a resumed run draws the noise an
        uninterrupted one draws, whatever the global RNG went through. Batches without a slot
        (a loop of your own) use the global step and rank instead."""
        slot = batch.get("slot")
        key = f"slot-{int(slot)}" if slot is not None else f"step-{self.global_step}-{self.global_rank}"
        digest = hashlib.blake2b(f"noise-{self.seed}-{key}".encode(), digest_size=8).digest()
        return torch.Generator(device=self.device).manual_seed(int.from_bytes(digest, "little"))

    def configure_optimizers(self):
        # frozen parameters (LoRA's base weights) stay out of the optimizer and its state
        optimizer = self.optimizer_factory([p for p in self.unet.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_latents(self, image_latent: Tensor, previous: list[Tensor] | None = None,
                        seeds: list[int] | None = None) -> list[Tensor]:
        """Each task's annotation latent for an image latent; the tasks share one batched UNet call
        per step (one call in all for the single step). ``previous``: the last frame's latents
        (``video_init``). ``seeds``: ensemble members (Lotus-G noise seeds), batched into the same
        call; each task's latents are then ``[len(seeds) * B]``, member-major, and member k is what a
        single call with ``seed = seeds[k]`` gives."""
        if seeds is not None:
            return self._predict_members(image_latent, seeds)
        n, batch_size = len(self.tasks), image_latent.shape[0]
        stacked = image_latent.repeat(n, 1, 1, 1) if n > 1 else image_latent
        timesteps = self.timesteps.inference_timesteps(self.noise_schedule.num_train_timesteps)
        generator = torch.Generator(device=image_latent.device).manual_seed(self.seed)
        init = None
        if previous is not None and previous[0].shape == image_latent.shape:  # else a new size: start afresh
            # the previous prediction through the forward process, with the usual seeded noise
            noise = torch.randn(stacked.shape, generator=generator, device=stacked.device, dtype=stacked.dtype)
            alpha_bar = self.noise_schedule.at(timesteps[0], noise)
            init = alpha_bar.sqrt() * torch.cat(previous) + (1 - alpha_bar).sqrt() * noise
        out = self.formulation.sample(
            self._denoise(self._switch(list(range(n)), batch_size), n * batch_size), stacked, timesteps,
            self.noise_schedule, self.parameterization, generator=generator, init_latent=init,
        )
        return list(out.split(batch_size))

    def _predict_members(self, image_latent: Tensor, seeds: list[int]) -> list[Tensor]:
        """:meth:`predict_latents` for several noise seeds in one batched call (see ``seeds`` there)."""
        n, batch_size, members = len(self.tasks), image_latent.shape[0], len(seeds)
        latent = image_latent.repeat(members, 1, 1, 1)  # [member][batch]
        stacked = latent.repeat(n, 1, 1, 1) if n > 1 else latent  # [task][member][batch]
        shape = (n * batch_size, *image_latent.shape[1:])  # one single call's noise: [task][batch]
        noise = torch.stack([torch.randn(shape, generator=torch.Generator(device=latent.device).manual_seed(seed),
                                         device=latent.device, dtype=latent.dtype).unflatten(0, (n, batch_size))
                             for seed in seeds], dim=1).flatten(0, 2)
        timesteps = self.timesteps.inference_timesteps(self.noise_schedule.num_train_timesteps)
        out = self.formulation.sample(
            self._denoise(self._switch(list(range(n)), members * batch_size), n * members * batch_size), stacked,
            timesteps, self.noise_schedule, self.parameterization, init_latent=noise,
        )
        return list(out.split(members * batch_size))

    @torch.no_grad()
    def predict_all(self, image: Tensor) -> dict[str, Tensor]:
        """Every task's prediction for ``[B, 3, H, W]`` images in [-1, 1], at their own size.

        Resizes the longest edge to ``processing_resolution`` (0 keeps it), pads to the UNet's size
        multiple by edge replication, runs the model, crops the padding and resizes back. With
        ``tile_size`` set, images larger than the processing resolution are also predicted tile by
        tile at native resolution, each tile aligned to the whole-image prediction and blended.
        """
        if self.ensemble is not None:  # each task's combined prediction and its <task>_uncertainty
            return self.ensemble.predict(self, image)
        resolution = self.inference_resolution
        if self.tile_size and resolution and max(image.shape[-2:]) > resolution:
            return self._predict_tiled(image)
        return self._predict_at(image, resolution)[0]

    @torch.no_grad()
    def predict_image(self, image: Tensor) -> Tensor:
        """The (first) task's prediction ``[B, C, H, W]``; see :meth:`predict_all`."""
        return self.predict_all(image)[self.tasks[0].name]

    def _predict_at(self, image: Tensor, resolution: int, previous: list[Tensor] | None = None,
                    seeds: list[int] | None = None, chunk_size: int = 0) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Predictions at the input size, and the latents they were decoded from. With ``seeds``
        (ensemble members), each task's output is ``[len(seeds) * B, ...]``, member-major: the image
        is encoded once and the members run and decode ``chunk_size`` at a time (0: all at once)."""
        height, width = image.shape[-2:]
        x = image
        size = processing_size((height, width), resolution)  # the loader's resize uses the same sizes
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        image_latent = self.codec.encode(x)
        if seeds is None:
            chunks = iter([self.predict_latents(image_latent, previous)])
        else:
            step = chunk_size if chunk_size > 0 else len(seeds)
            chunks = (self.predict_latents(image_latent, seeds=seeds[i : i + step]) for i in range(0, len(seeds), step))
        preds: list[list[Tensor]] = [[] for _ in self.tasks]
        latents: list[list[Tensor]] = [[] for _ in self.tasks]
        for chunk in chunks:
            decoded = self.codec.decode(torch.cat(chunk))[..., :h, :w].float().split(chunk[0].shape[0])
            for i, (task, d) in enumerate(zip(self.tasks, decoded)):
                preds[i].append(task.resize_for(task.decode(d), (height, width)))
                latents[i].append(chunk[i])

        def join(parts: list[Tensor]) -> Tensor:
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return {task.name: join(p) for task, p in zip(self.tasks, preds)}, [join(lat) for lat in latents]

    def _predict_tiled(self, image: Tensor) -> Tensor:
        """Whole image at the processing resolution for the global layout, then overlapping native
        tiles for detail, each aligned to the global prediction (``Task.align``) and feathered in."""
        height, width = image.shape[-2:]
        reference = self._predict_at(image, self.inference_resolution)[0]
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
        total = {name: torch.zeros_like(ref) for name, ref in reference.items()}
        weight = torch.zeros(1, 1, height, width, device=image.device)
        for top in starts(height):
            for left in starts(width):
                window = (..., slice(top, top + tile), slice(left, left + tile))
                preds = self._predict_at(image[window], 0)[0]
                for task in self.tasks:
                    total[task.name][window] += task.align(preds[task.name], reference[task.name][window]) * weight_tile
                weight[window] += weight_tile
        return {task.name: task.resize_for(total[task.name] / weight.clamp_min(1e-12), (height, width)) for task in self.tasks}

    # ------------------------------------------------------------------ validation / test
    def valid_mask(self, batch: dict[str, Tensor], task: Task | None = None) -> Tensor:
        """Pixels to supervise and score for ``task`` (default: the only one): its valid ground truth,
        within the sample's own mask if it has one (a dataset's validity mask, or an evaluation crop)."""
        task = task or self.task
        valid = task.valid_mask(batch[task.gt_key])
        return valid & batch["mask"].bool() if "mask" in batch else valid

    def _evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Predict every task; score those whose ground truth the batch has."""
        preds = self.predict_all(batch["image"])
        for task in self.tasks:
            if task.gt_key in batch:
                self._scored.add(task.name)
                self.val_metrics[task.name].update(preds[task.name], batch[task.gt_key], self.valid_mask(batch, task))
                if task.name in self.uncertainty_metrics:
                    self.uncertainty_metrics[task.name].update(preds[task.name], batch[task.gt_key], self.valid_mask(batch, task),
                                                               preds[uncertainty_key(task.name)])
        return preds

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        preds = self._evaluate_batch(batch)
        if batch_idx == 0:
            self._log_panel(batch, preds)

    def scored_tasks(self) -> list[Task]:
        """Tasks whose metric saw ground truth this epoch (a benchmark may have it for only some).
        A single task is always scored, so that every rank computes (a collective) under DDP."""
        return [t for t in self.tasks if len(self.tasks) == 1 or t.name in self._scored]

    def on_validation_epoch_end(self) -> None:
        for task in self.scored_tasks():
            for name, value in self.val_metrics[task.name].compute().items():
                self.log(f"val/{self.metric_prefix(task)}{name}", value, sync_dist=False)
            if task.name in self.uncertainty_metrics:  # AUSE / AURG of the ensemble's uncertainty
                for name, value in self.uncertainty_metrics[task.name].compute().items():
                    self.log(f"val/{self.metric_prefix(task)}{name}", value, sync_dist=False)
        for metric in [*self.val_metrics.values(), *self.uncertainty_metrics.values()]:
            metric.reset()
        self._scored.clear()

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not batch["path"]:  # every file of this batch was unreadable (reported by the loader)
            return {"path": [], **{task.name: None for task in self.tasks}}
        if not self.video_init:
            return {"path": batch["path"], **self.predict_all(batch["image"])}
        return {"path": batch["path"], **self._predict_video_frame(batch)}

    def _predict_video_frame(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``video_init``: frames of one sequence arrive in order; each starts from the last one's latents."""
        image, sequence = batch["image"], batch.get("sequence")
        if image.shape[0] != 1:
            raise ValueError("video_init predicts frame after frame: use data.predict_batch_size=1")
        sequence = str(sequence[0]) if sequence else None  # images that are not video frames start afresh
        previous = None
        if sequence is not None and self._previous is not None and self._previous[0] == sequence:
            previous = self._previous[1]
        preds, latents = self._predict_at(image, self.inference_resolution, previous)
        self._previous = (sequence, latents) if sequence is not None else None
        return preds

    def _log_panel(self, batch: dict[str, Tensor], preds: dict[str, Tensor], max_images: int = 4) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_images"):
            return
        for task in self.tasks:
            if task.gt_key not in batch:
                continue
            gt = batch[task.gt_key][:max_images]
            valid = task.valid_mask(gt)
            rows = [
                (batch["image"][:max_images] + 1) / 2,
                task.visualize(preds[task.name][:max_images]),
                task.visualize_gt(gt, valid),
            ]
            panel = torch.cat([r.float().cpu().clamp(0, 1) for r in rows], dim=-1)  # input | prediction | ground truth
            experiment.add_images(f"val/{task.name}_input_prediction_truth", panel, self.global_step)
            if uncertainty_key(task.name) in preds:  # the ensemble's spread, bright = unsure
                spread = colorize(preds[uncertainty_key(task.name)][:max_images].float())
                experiment.add_images(f"val/{task.name}_uncertainty", spread.cpu().clamp(0, 1), self.global_step)
