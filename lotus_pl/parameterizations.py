"""What the UNet's output means: noise (ε), velocity (v) or the clean sample (x0).

With ``x_t = sqrt(a) * x0 + sqrt(1 - a) * eps`` and ``a = alpha_bar[t]``, each parameterization says
which quantity the network is trained to output and how to turn that output back into x0 and ε.
Lotus's first finding is that x0 ("sample") is the right choice for dense prediction: at t = 999
sqrt(a) ≈ 0.068, so recovering x0 from an ε prediction divides its error by 0.068 (~15× amplification).

Every function takes ``alpha_bar`` already gathered for the batch and shaped to broadcast against
the latents (``[B, 1, 1, 1]``); the noise schedule lives in :mod:`lotus_pl.schedules`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Parameterization(ABC):
    """The meaning of the denoiser's output."""

    #: Whether x0 can be recovered from the output when alpha_bar == 0 (zero terminal SNR).
    defined_at_zero_snr: bool = True
    #: diffusers' name for this output (a scheduler config's ``prediction_type``).
    prediction_type: str

    @abstractmethod
    def target(self, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
        """The training target for the network output."""

    @abstractmethod
    def to_x0(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        """The clean latent implied by output ``out`` at noisy latent ``x_t``."""

    @abstractmethod
    def to_eps(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        """The noise implied by output ``out`` at noisy latent ``x_t``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Epsilon(Parameterization):
    """Predict the noise, as Stable Diffusion was trained. Ill-conditioned near t = T."""

    defined_at_zero_snr = False
    prediction_type = "epsilon"

    def target(self, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
        return eps

    def to_x0(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        return (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()

    def to_eps(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        return out


class Velocity(Parameterization):
    """Predict ``v = sqrt(a) * eps - sqrt(1 - a) * x0`` (Salimans & Ho); well defined at every t."""

    prediction_type = "v_prediction"

    def target(self, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0

    def to_x0(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out

    def to_eps(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * out


class Sample(Parameterization):
    """Predict the clean annotation latent x0 directly (Lotus's choice)."""

    prediction_type = "sample"

    def target(self, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
        return x0

    def to_x0(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        return out

    def to_eps(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        # At zero terminal SNR x_t is pure noise, and the formula still holds (sqrt(1 - a) = 1).
        return (x_t - alpha_bar.sqrt() * out) / (1 - alpha_bar).sqrt().clamp_min(torch.finfo(out.dtype).tiny)
