"""``LotusPipeline``: a lotus_pl export, or the Lotus authors' released folders, run as a diffusers pipeline.

    from lotus_pl.pipeline import LotusPipeline
    pipe = LotusPipeline.from_pretrained("exported/quickstart")        # or "jingheya/lotus-depth-g-v2-1-disparity"
    depth = pipe(Image.open("photo.jpg")).prediction                   # [1, H, W, 1] in [0, 1]

It is a ``DiffusionPipeline`` (``from_pretrained`` / ``save_pretrained`` / ``.to`` / offloading) whose
components are the folder's ``unet``, ``scheduler`` and optional ``vae``, ``text_encoder`` and
``tokenizer``; its outputs have the fields of diffusers' Marigold outputs (``prediction``, optional
``uncertainty``, ``latent``), and its ``image_processor`` is diffusers' ``MarigoldImageProcessor``
(input loading, padding, resizing, ``visualize_depth`` / ``visualize_normals``).

The computation is lotus_pl's own, not a copy: the image is resized and padded as
``LotusModel.predict_image`` does, and the sampling is lotus_pl's ``Formulation.sample`` with the
parameterization named by the scheduler's ``prediction_type`` and the noise schedule of its betas, so
an export predicts here what it predicts in lotus_pl. Settings a weights folder cannot say (which
task decodes the output, the processing resolution, the seed) are pipeline config entries in
``model_index.json``, written by ``lotus_pl export``; a released Lotus folder, which has none,
gets the defaults (depth, 768 px, one step, annotation switch 0).

Why the class is named ``LotusPipeline`` in ``model_index.json`` and loaded through the class:
diffusers resolves a string ``_class_name`` only among its own pipelines (``getattr(diffusers, name)``),
and a ``[module, class]`` pair only for a ``<module>.py`` shipped inside the folder and run with
``trust_remote_code=True``. ``LotusPipeline.from_pretrained`` uses the class it is called on, with
no code shipped in (or executed from) the folder.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.marigold import MarigoldImageProcessor
from diffusers.utils import BaseOutput
from torch import Tensor

from lotus_pl.data.images import processing_size
from lotus_pl.denoisers import TEXT_CONTEXT_FILE
from lotus_pl.formulations import Deterministic, Formulation, Generative
from lotus_pl.model import task_switch
from lotus_pl.parameterizations import Epsilon, Parameterization, Sample, Velocity
from lotus_pl.schedules import MultiStep, NoiseSchedule
from lotus_pl.tasks import Task

#: conv_in width over latent channels -> the formulation (1: Lotus-D, 2: Lotus-G).
FORMULATIONS: dict[int, type[Formulation]] = {1: Deterministic, 2: Generative}
PARAMETERIZATIONS: tuple[type[Parameterization], ...] = (Sample, Velocity, Epsilon)


@dataclass
class LotusPipelineOutput(BaseOutput):
    """The fields of diffusers' ``MarigoldDepthOutput`` / ``MarigoldNormalsOutput``.

    Args:
        prediction: ``[N, H, W, C]`` numpy (``output_type="np"``) or ``[N, C, H, W]`` tensor (``"pt"``),
            at the input size: depth/disparity in [0, 1] (C = 1), unit normals (C = 3), ...
        uncertainty: the standard deviation over an ensemble (``ensemble_size > 1``, Lotus-G), else ``None``.
        latent: the predicted annotation latents ``[N * ensemble_size, c, h, w]`` (``output_latent=True``).
    """

    prediction: np.ndarray | Tensor
    uncertainty: None | np.ndarray | Tensor
    latent: None | Tensor


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"LotusPipeline task {class_path!r} is not an importable class: {error}") from error


class LotusPipeline(DiffusionPipeline):
    """Lotus dense prediction (Lotus-G or Lotus-D, told apart by the UNet's ``conv_in``) in diffusers.

    Args:
        unet: the Lotus UNet (``conv_in`` of 2 × latent channels: Lotus-G; 1 ×: Lotus-D).
        scheduler: its noise schedule (betas) and ``prediction_type`` (sample, v_prediction or epsilon).
        vae: the SD VAE; ``None`` for a lotus_pl model on the lossless ``SpaceToDepth`` codec (``space_to_depth``).
        text_encoder, tokenizer: CLIP, embedding the empty prompt; ``None`` with ``text_context`` given.
        task: class path of the lotus_pl ``Task`` that decodes the output (``lotus_pl.tasks.Depth``, ``...Normal``).
        task_index: the task switch state of the annotation (0 for the released models).
        default_processing_resolution: longest edge the image is resized to (0: native size).
        default_denoising_steps: DDIM steps (1: Lotus's single step at t = T - 1).
        pure_noise_at_terminal: as ``Generative(pure_noise_at_terminal=...)`` was trained.
        space_to_depth: the factor of the ``SpaceToDepth`` codec when there is no VAE.
        space_to_depth_scale: ... and its latent scale.
        seed: seed of the initial noise (Lotus-G) when no ``generator`` or ``latents`` is given.
        text_context: the fixed context ``[1, tokens, dim]`` of a model without a text encoder
            (``from_pretrained`` reads it from the folder's ``text_context.safetensors``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        text_encoder: Any = None,
        tokenizer: Any = None,
        task: str = "lotus_pl.tasks.Depth",
        task_index: int = 0,
        default_processing_resolution: int = 768,
        default_denoising_steps: int = 1,
        pure_noise_at_terminal: bool = False,
        space_to_depth: int = 0,
        space_to_depth_scale: float = 1.0,
        seed: int = 0,
        text_context: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(task=task, task_index=task_index, default_processing_resolution=default_processing_resolution,
                                default_denoising_steps=default_denoising_steps, pure_noise_at_terminal=pure_noise_at_terminal,
                                space_to_depth=space_to_depth, space_to_depth_scale=space_to_depth_scale, seed=seed)
        if vae is None and space_to_depth < 1:
            raise ValueError("LotusPipeline needs a vae, or the factor of the SpaceToDepth codec (space_to_depth) the model used")
        if text_context is None and (text_encoder is None or tokenizer is None):
            raise ValueError(f"LotusPipeline needs a text_encoder and tokenizer, or a text_context ({TEXT_CONTEXT_FILE})")
        self.text_context = text_context
        task_class = _import(task)
        if not (isinstance(task_class, type) and issubclass(task_class, Task)):
            raise ValueError(f"LotusPipeline task {task!r} is not a lotus_pl Task")
        self.task_decoder: Task = task_class()
        self.latent_channels = int(unet.config.out_channels)
        ratio, remainder = divmod(int(unet.config.in_channels), self.latent_channels)
        if remainder or ratio not in FORMULATIONS:
            raise ValueError(f"the UNet's conv_in has {unet.config.in_channels} inputs for {self.latent_channels} latent channels: "
                             "neither Lotus-D (1x) nor Lotus-G (2x)")
        self.formulation = FORMULATIONS[ratio](pure_noise_at_terminal) if ratio == 2 else FORMULATIONS[ratio]()
        prediction_type = scheduler.config.prediction_type
        matches = [p for p in PARAMETERIZATIONS if p.prediction_type == prediction_type]
        if not matches:
            raise ValueError(f"scheduler prediction_type {prediction_type!r} is none of {[p.prediction_type for p in PARAMETERIZATIONS]}")
        self.parameterization = matches[0]()
        self.codec_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else space_to_depth
        self.size_multiple = self.codec_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.image_processor = MarigoldImageProcessor(vae_scale_factor=self.size_multiple)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "LotusPipeline":
        """diffusers' loading (a folder or a Hub id), plus the folder's ``text_context.safetensors``
        when it has no text encoder (a lotus_pl export of a model without one)."""
        if "text_context" not in kwargs:
            from lotus_pl.hub import resolve_model_path

            file = resolve_model_path(pretrained_model_name_or_path) / TEXT_CONTEXT_FILE
            if file.is_file():
                from safetensors.torch import load_file

                kwargs["text_context"] = load_file(file)["text_context"].float()
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' saving, plus ``text_context.safetensors`` for a model without a text encoder."""
        super().save_pretrained(save_directory, **kwargs)
        if self.text_context is not None and self.text_encoder is None:
            from safetensors.torch import save_file

            save_file({"text_context": self.text_context.detach().float().cpu().contiguous()}, Path(save_directory) / TEXT_CONTEXT_FILE)

    # ------------------------------------------------------------------ the parts of a prediction
    @torch.no_grad()
    def context(self) -> Tensor:
        """The UNet's cross-attention context: the unpadded empty-prompt CLIP embedding ([BOS, EOS]), or the saved tensor."""
        if self.text_context is None:
            ids = self.tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids.to(self.text_encoder.device)
            self.text_context = self.text_encoder(ids)[0].float()
        return self.text_context.to(self.device)

    def encode(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> the latent the UNet reads (the VAE posterior's mode, scaled)."""
        if self.vae is None:
            return F.pixel_unshuffle(image, self.codec_factor) * self.config.space_to_depth_scale
        return self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode() * self.vae.config.scaling_factor

    def decode(self, latent: Tensor) -> Tensor:
        if self.vae is None:
            return F.pixel_shuffle(latent / self.config.space_to_depth_scale, self.codec_factor)
        return self.vae.decode(latent.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def noise_schedule(self) -> NoiseSchedule:
        config = self.scheduler.config
        if config.get("trained_betas") is not None:
            raise ValueError("LotusPipeline reads the noise schedule from beta_start/beta_end/beta_schedule; trained_betas are not supported")
        return NoiseSchedule(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
                             beta_schedule=config.beta_schedule, zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False))).to(self.device)

    def _denoiser(self, batch_size: int):
        num_states = int(self.unet.config.projection_class_embeddings_input_dim or 0) // 2
        labels = task_switch(self.config.task_index, num_states, batch_size, self.device) if num_states else None
        context = self.context().expand(batch_size, -1, -1)

        def denoise(x: Tensor, t: int | Tensor) -> Tensor:
            return self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=context.to(self.unet.dtype), class_labels=labels).sample.float()

        return denoise

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        num_inference_steps: int | None = None,
        ensemble_size: int = 1,
        processing_resolution: int | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "np",
        output_uncertainty: bool = True,
        output_latent: bool = False,
        return_dict: bool = True,
    ) -> LotusPipelineOutput | tuple:
        """Predict the annotation of ``image`` (PIL image, numpy array or tensor in [0, 1], or a list
        of same-sized ones, as Marigold's pipelines take them).

        Args:
            num_inference_steps: DDIM steps ("trailing" spacing: one step is t = T - 1); default from the config.
            ensemble_size: Lotus-G only: this many predictions from independent noise, averaged
                (``uncertainty``: their standard deviation).
            processing_resolution: longest edge at which the model runs (0: native); default from the config.
            generator, latents: Lotus-G's initial noise (``latents``: ``[N * ensemble_size, c, h, w]``);
                else noise seeded with the config's ``seed``, as lotus_pl predicts.
            output_type: ``"np"`` (``[N, H, W, C]``) or ``"pt"`` (``[N, C, H, W]``).
        """
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        steps = num_inference_steps or self.config.default_denoising_steps
        resolution = self.config.default_processing_resolution if processing_resolution is None else processing_resolution
        if ensemble_size > 1 and isinstance(self.formulation, Deterministic):
            raise ValueError("ensemble_size > 1 needs Lotus-G: Lotus-D is deterministic, its members would be identical")

        loaded = [self.image_processor.load_image_canonical(i, self.device, torch.float32)  # [n, 3, H, W] in [0, 1]
                  for i in (image if isinstance(image, list) else [image])]
        for i, item in enumerate(loaded):
            if item.shape[-2:] != loaded[0].shape[-2:]:
                raise ValueError(f"image[{i}] is {tuple(item.shape[-2:])}, image[0] {tuple(loaded[0].shape[-2:])}: a list must be of one size")
        x = torch.cat(loaded)
        self.image_processor.check_image_values_range(x)
        x = x.contiguous() * 2 - 1  # a numpy/PIL image arrives permuted: channels-last strides change the conv kernels
        height, width = x.shape[-2:]
        size = processing_size((height, width), resolution)  # lotus_pl's rounding (Marigold's floors)
        if size != (height, width):
            x = self.image_processor.resize_antialias(x, size, "bilinear", is_aa=True)
        x, padding = self.image_processor.pad_image(x, self.size_multiple)

        image_latent = self.encode(x).float()
        if ensemble_size > 1:
            image_latent = image_latent.repeat_interleave(ensemble_size, dim=0)
        if generator is None and latents is None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        if latents is not None and latents.shape != image_latent.shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, the image latents {tuple(image_latent.shape)}")
        schedule = self.noise_schedule()
        timesteps = MultiStep(steps, spacing="trailing").inference_timesteps(schedule.num_train_timesteps)
        out_latent = self.formulation.sample(self._denoiser(image_latent.shape[0]), image_latent, timesteps, schedule,
                                             self.parameterization, generator=generator,
                                             init_latent=None if latents is None else latents.to(self.device, torch.float32))

        decoded = self.image_processor.unpad_image(self.decode(out_latent).float(), padding)
        members = self.task_decoder.decode(decoded)
        members = members.reshape(-1, ensemble_size, *members.shape[1:])
        prediction, uncertainty = members.mean(dim=1), None
        if ensemble_size > 1:
            uncertainty = members.std(dim=1) if output_uncertainty else None
        prediction = self.task_decoder.resize_for(prediction, (height, width))
        if uncertainty is not None:
            uncertainty = self.image_processor.resize_antialias(uncertainty, (height, width), "bilinear", is_aa=False)
        if output_type == "np":
            prediction = self.image_processor.pt_to_numpy(prediction)
            uncertainty = None if uncertainty is None else self.image_processor.pt_to_numpy(uncertainty)
        latent = out_latent if output_latent else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return prediction, uncertainty, latent
        return LotusPipelineOutput(prediction=prediction, uncertainty=uncertainty, latent=latent)
