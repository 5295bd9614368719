"""Lotus-G and Lotus-D: what the UNet sees, how a training pair is made, and how inference samples.

- :class:`Generative` (Lotus-G): the UNet input is ``concat(image_latent, x_t)``, so its ``conv_in``
  takes twice the latent channels. Training noises the annotation latent; inference starts from
  Gaussian noise and walks the timestep schedule with DDIM (one call for the single step).
- :class:`Deterministic` (Lotus-D): the UNet input is the image latent alone; there is no noise,
  and the timestep (999) only feeds the time embedding. Only x0 prediction is meaningful, since
  without a noisy input there is no ε or v to recover.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from lotus_pl.parameterizations import Parameterization, Sample
from lotus_pl.schedules import NoiseSchedule, SingleStep, TimestepSchedule

#: ``denoise(unet_input, t) -> output``; t is a python int shared by the batch.
DenoiseFn = Callable[[Tensor, int], Tensor]


class Formulation(ABC):
    """How the annotation latent enters (or does not enter) the UNet."""

    @abstractmethod
    def unet_in_channels(self, latent_channels: int) -> int:
        """Input channels of the UNet's ``conv_in``."""

    @abstractmethod
    def training_pair(
        self, image_latent: Tensor, x0: Tensor, t: Tensor, noise: Tensor,
        noise_schedule: NoiseSchedule, parameterization: Parameterization,
    ) -> tuple[Tensor, Tensor]:
        """The UNet input and the regression target for one training batch."""

    @abstractmethod
    def sample(
        self, denoise: DenoiseFn, image_latent: Tensor, timesteps: list[int],
        noise_schedule: NoiseSchedule, parameterization: Parameterization,
        generator: torch.Generator | None = None, init_latent: Tensor | None = None,
    ) -> Tensor:
        """The predicted annotation latent x0 for ``image_latent``."""

    def check(self, parameterization: Parameterization, timesteps: TimestepSchedule, noise_schedule: NoiseSchedule) -> None:
        """Reject combinations that cannot work, with a message that says why."""
        last = timesteps.inference_timesteps(noise_schedule.num_train_timesteps)[0]
        if float(noise_schedule.alpha_bar[last]) == 0.0 and not parameterization.defined_at_zero_snr:
            raise ValueError(
                f"{parameterization!r} cannot recover x0 at t={last}, where the noise schedule has zero SNR "
                "(alpha_bar = 0); use Velocity or Sample, or turn off zero_terminal_snr"
            )


class Deterministic(Formulation):
    """Lotus-D: the image latent alone in, the annotation latent out, one step."""

    def unet_in_channels(self, latent_channels: int) -> int:
        return latent_channels

    def training_pair(self, image_latent, x0, t, noise, noise_schedule, parameterization):
        return image_latent, x0

    def sample(self, denoise, image_latent, timesteps, noise_schedule, parameterization, generator=None, init_latent=None):
        return denoise(image_latent, timesteps[0])

    def check(self, parameterization, timesteps, noise_schedule):
        if not isinstance(parameterization, Sample):
            raise ValueError(
                f"Deterministic (Lotus-D) has no noisy input, so only the Sample (x0) parameterization is "
                f"defined; got {parameterization!r}. Use Generative (Lotus-G) to compare ε / v / x0."
            )
        if not isinstance(timesteps, SingleStep):
            raise ValueError(f"Deterministic (Lotus-D) is a single-step model; got {timesteps!r}")


class Generative(Formulation):
    """Lotus-G: ``concat(image_latent, x_t)`` in; DDIM from pure noise at inference.

    Args:
        pure_noise_at_terminal: at the last timestep (T - 1), train on x_t = pure noise instead of the
            forward process. With SD2's schedule the forward process keeps sqrt(alpha_bar) ≈ 0.068 of
            the target, a small model learns to read that leak, and then fails from pure noise at
            inference. (The other fix is ``NoiseSchedule(zero_terminal_snr=True)``.)
    """

    def __init__(self, pure_noise_at_terminal: bool = False) -> None:
        self.pure_noise_at_terminal = pure_noise_at_terminal

    def unet_in_channels(self, latent_channels: int) -> int:
        return 2 * latent_channels

    def training_pair(self, image_latent, x0, t, noise, noise_schedule, parameterization):
        x_t = noise_schedule.add_noise(x0, noise, t)
        alpha_bar = noise_schedule.at(t, x0)
        if self.pure_noise_at_terminal:
            terminal = (t == noise_schedule.num_train_timesteps - 1).reshape(-1, 1, 1, 1)
            x_t = torch.where(terminal, noise, x_t)
            alpha_bar = torch.where(terminal, torch.zeros_like(alpha_bar), alpha_bar)
        return torch.cat([image_latent, x_t], dim=1), parameterization.target(x0, noise, alpha_bar)

    def sample(self, denoise, image_latent, timesteps, noise_schedule, parameterization, generator=None, init_latent=None):
        """Deterministic DDIM (eta = 0): x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_hat."""
        x_t = init_latent
        if x_t is None:
            x_t = torch.randn(image_latent.shape, generator=generator, device=image_latent.device, dtype=image_latent.dtype)
        x0 = x_t
        for i, t in enumerate(timesteps):
            alpha_bar = noise_schedule.at(t, x_t)
            if self.pure_noise_at_terminal and t == noise_schedule.num_train_timesteps - 1:
                alpha_bar = torch.zeros_like(alpha_bar)  # as trained: x_t was pure noise there
            out = denoise(torch.cat([image_latent, x_t], dim=1), t)
            x0 = parameterization.to_x0(out, x_t, alpha_bar)
            if i + 1 == len(timesteps):
                break
            eps = parameterization.to_eps(out, x_t, alpha_bar)
            alpha_prev = noise_schedule.at(timesteps[i + 1], x_t)
            x_t = alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps
        return x0

    def check(self, parameterization, timesteps, noise_schedule):
        super().check(parameterization, timesteps, noise_schedule)
        first = timesteps.inference_timesteps(noise_schedule.num_train_timesteps)[0]
        if self.pure_noise_at_terminal and first == noise_schedule.num_train_timesteps - 1 and not parameterization.defined_at_zero_snr:
            raise ValueError(
                f"{parameterization!r} cannot recover x0 from pure noise at t={first} "
                "(pure_noise_at_terminal=True); use Velocity or Sample"
            )

    def __repr__(self) -> str:
        return f"Generative(pure_noise_at_terminal={self.pure_noise_at_terminal})"
