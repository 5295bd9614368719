"""Noise schedule (how much signal survives at each t) and timestep schedules (which t are used).

The noise schedule is Stable Diffusion 2's, taken from diffusers' scheduler so that alpha_bar is
exactly what the pretrained UNet saw, optionally rescaled to zero terminal SNR (Lin et al. 2023):
with the SD2 schedule sqrt(alpha_bar[999]) ≈ 0.068 of the target leaks into x_999.

A timestep schedule decides the training timesteps and the inference walk:
- :class:`SingleStep` is Lotus's single step at t = T - 1 for both training and inference;
- :class:`MultiStep` trains on a set of K timesteps (or all T) and walks K timesteps with DDIM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor


class NoiseSchedule(torch.nn.Module):
    """alpha_bar[t] for t in [0, T), held as a buffer so it follows the model's device.

    Args:
        num_train_timesteps: T.
        beta_start, beta_end, beta_schedule: diffusers' scheduler arguments (SD2's by default).
        zero_terminal_snr: rescale the betas so that alpha_bar[T-1] == 0 (no signal leak).
        pretrained_path: read the schedule from ``<path>/scheduler`` of a diffusers model folder (or Hub id)
            instead of the arguments above (``zero_terminal_snr`` still applies).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        zero_terminal_snr: bool = False,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if pretrained_path is not None:
            from lotus_pl.hub import resolve_model_path

            folder = resolve_model_path(pretrained_path) / "scheduler"
            if not (folder / "scheduler_config.json").is_file():
                raise FileNotFoundError(f"no diffusers scheduler config at {folder}/scheduler_config.json")
            config = dict(DDPMScheduler.load_config(folder))
            scheduler = DDPMScheduler.from_config(config, rescale_betas_zero_snr=zero_terminal_snr)
        else:
            scheduler = DDPMScheduler(
                num_train_timesteps=num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_schedule=beta_schedule,
                rescale_betas_zero_snr=zero_terminal_snr,
            )
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.zero_terminal_snr = zero_terminal_snr
        #: The diffusers scheduler config alpha_bar comes from (``lotus_pl export`` writes it out).
        self.scheduler_config = dict(scheduler.config)
        self.register_buffer("alpha_bar", scheduler.alphas_cumprod.clone().float(), persistent=False)

    def at(self, t: Tensor | int, like: Tensor) -> Tensor:
        """alpha_bar[t] shaped ``[B, 1, 1, 1]`` (or scalar-broadcast) to multiply ``like``."""
        t = torch.as_tensor(t, device=self.alpha_bar.device)
        a = self.alpha_bar[t].to(like.dtype)
        return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The forward process ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``."""
        a = self.at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


class TimestepSchedule(ABC):
    """Which timesteps training samples and which ones inference walks (descending)."""

    @abstractmethod
    def training_timesteps(self, batch_size: int, num_train_timesteps: int, device: torch.device,
                           generator: torch.Generator | None = None) -> Tensor:
        """Timesteps for one training batch, ``[batch_size]`` long, drawn with ``generator`` if random."""

    @abstractmethod
    def inference_timesteps(self, num_train_timesteps: int) -> list[int]:
        """The timesteps an inference walk visits, from noisiest to cleanest."""


class SingleStep(TimestepSchedule):
    """Lotus's single step: train and infer only at ``t`` (default T - 1 = 999)."""

    def __init__(self, timestep: int | None = None) -> None:
        self.timestep = timestep

    def _t(self, num_train_timesteps: int) -> int:
        t = num_train_timesteps - 1 if self.timestep is None else self.timestep
        if not 0 <= t < num_train_timesteps:
            raise ValueError(f"SingleStep timestep {t} outside [0, {num_train_timesteps})")
        return t

    def training_timesteps(self, batch_size: int, num_train_timesteps: int, device: torch.device,
                           generator: torch.Generator | None = None) -> Tensor:
        return torch.full((batch_size,), self._t(num_train_timesteps), dtype=torch.long, device=device)

    def inference_timesteps(self, num_train_timesteps: int) -> list[int]:
        return [self._t(num_train_timesteps)]

    def __repr__(self) -> str:
        return f"SingleStep(timestep={self.timestep})"


class MultiStep(TimestepSchedule):
    """Multi-step diffusion: DDIM walk over ``num_inference_steps`` timesteps.

    Args:
        num_inference_steps: K, the number of denoising steps at inference.
        num_training_timesteps: sample training t from this many evenly spaced timesteps (with the
            same spacing as inference); ``None`` trains on all T timesteps, as Stable Diffusion did.
        spacing: diffusers' ``timestep_spacing``; "trailing" starts the walk at T - 1 (needed with
            zero terminal SNR, and what Lotus's single-step limit corresponds to).
    """

    def __init__(self, num_inference_steps: int = 50, num_training_timesteps: int | None = None, spacing: str = "trailing") -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        self.num_training_timesteps = num_training_timesteps
        self.spacing = spacing

    def _spaced(self, k: int, num_train_timesteps: int) -> list[int]:
        scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, timestep_spacing=self.spacing)
        scheduler.set_timesteps(k)
        return [int(t) for t in scheduler.timesteps]

    def training_timesteps(self, batch_size: int, num_train_timesteps: int, device: torch.device,
                           generator: torch.Generator | None = None) -> Tensor:
        if self.num_training_timesteps is None:
            return torch.randint(0, num_train_timesteps, (batch_size,), device=device, generator=generator)
        choices = torch.tensor(self._spaced(self.num_training_timesteps, num_train_timesteps), device=device)
        return choices[torch.randint(0, len(choices), (batch_size,), device=device, generator=generator)]

    def inference_timesteps(self, num_train_timesteps: int) -> list[int]:
        return self._spaced(self.num_inference_steps, num_train_timesteps)

    def __repr__(self) -> str:
        return (f"MultiStep(num_inference_steps={self.num_inference_steps}, "
                f"num_training_timesteps={self.num_training_timesteps}, spacing={self.spacing!r})")
