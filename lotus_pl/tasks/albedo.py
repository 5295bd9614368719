"""Intrinsic albedo: the surfaces' reflectance without lighting and shadows.

The procedural renderer shades linearly, ``rgb = albedo * shading`` (no gamma), and stores the exact
reflectance as ``albedo.png`` (8-bit linear RGB, all-zero = no surface); the data pipeline decodes it
to [-1, 1] like an image, which is already the annotation image the codec takes.

An image fixes albedo only up to a global scale per channel (a brighter light and a darker surface
give the same pixels), so the metrics are those of intrinsic-image work, invariant to that scale
(Grosse et al. 2009, "Ground truth dataset and baseline evaluations for intrinsic image
algorithms"), computed per channel over valid pixels and averaged over channels and images:

* ``si_mse``: ``min_a mean((g - a p)²)``, the scale-invariant MSE of the whole image;
* ``lmse``: the local version: ``Σ_w min_a Σ_w (g - a p)²`` over ``k × k`` windows with stride
  ``k / 2``, divided by ``Σ_w Σ_w g²`` (the error of predicting zero), so 1 means "no better than black";
* ``mse``: the plain MSE, no scale fitted, for absolute reflectance.

The minimum over ``a`` has a closed form, ``Σg² - (Σgp)² / Σp²``, so every window is three sums.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from lotus_pl.tasks.base import Task

ALBEDO_METRIC_NAMES = ("si_mse", "lmse", "mse")


def _scaled_residual(gg: Tensor, gp: Tensor, pp: Tensor) -> Tensor:
    """``min_a Σ(g - a p)²`` from the sums ``Σg²``, ``Σgp``, ``Σp²`` (a = 0 where ``Σp² = 0``)."""
    return (gg - torch.where(pp > 0, gp.square() / pp.clamp_min(1e-30), torch.zeros_like(gp))).clamp_min(0)


class AlbedoMetrics(Metric):
    """Scale-invariant albedo errors (see the module docstring), averaged over images.

    ``update(pred, gt, valid_mask)``: ``pred`` ``[B, 3, H, W]`` reflectance in [0, 1]; ``gt`` as the
    data pipeline decodes ``albedo.png``, in [-1, 1] (mapped to [0, 1] here); ``valid_mask``
    ``[B, 1, H, W]``. Images without a valid pixel are skipped and counted in ``num_skipped``.

    Args:
        window: LMSE window side in pixels (stride ``window // 2``); 20 as in Grosse et al.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, window: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if window < 2:
            raise ValueError(f"LMSE window must be at least 2 pixels, got {window}")
        self.window = window
        self.add_state("sums", torch.zeros(len(ALBEDO_METRIC_NAMES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, valid_mask: Tensor | None = None) -> None:
        if pred.shape != gt.shape or pred.ndim != 4:
            raise ValueError(f"albedo prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be [B, C, H, W]")
        p = pred.double()
        g = (gt.double() + 1) / 2
        m = torch.ones_like(p[:, :1]) if valid_mask is None else valid_mask.to(p.dtype)
        if m.shape != (p.shape[0], 1, *p.shape[-2:]):
            raise ValueError(f"valid_mask must be [B, 1, H, W] = {(p.shape[0], 1, *p.shape[-2:])}, got {tuple(m.shape)}")
        m = m * torch.isfinite(p).all(1, keepdim=True) * torch.isfinite(g).all(1, keepdim=True)
        p, g = torch.nan_to_num(p) * m, torch.nan_to_num(g) * m
        pixels = m.sum(dim=(1, 2, 3))

        si = _scaled_residual((g * g).sum((2, 3)), (g * p).sum((2, 3)), (p * p).sum((2, 3))).sum(1) / (pixels * p.shape[1]).clamp_min(1)
        mse = ((g - p) ** 2).sum((1, 2, 3)) / (pixels * p.shape[1]).clamp_min(1)
        k = min(self.window, *p.shape[-2:])
        window_sum = lambda x: F.avg_pool2d(x, k, stride=max(k // 2, 1)) * (k * k)  # noqa: E731
        local = _scaled_residual(window_sum(g * g), window_sum(g * p), window_sum(p * p)).sum((1, 2, 3))
        lmse = local / window_sum(g * g).sum((1, 2, 3)).clamp_min(1e-12)

        counted = pixels > 0
        self.sums += torch.stack([si[counted].sum(), lmse[counted].sum(), mse[counted].sum()]).to(self.sums)
        self.count += int(counted.sum())
        self.skipped += int((~counted).sum())

    def compute(self) -> dict[str, Tensor]:
        means = self.sums / self.count.clamp_min(1)
        return {name: means[i] for i, name in enumerate(ALBEDO_METRIC_NAMES)}


class Albedo(Task):
    """Intrinsic albedo (linear RGB reflectance in [0, 1]); the annotation image is the albedo itself.

    Args:
        lmse_window: LMSE window side in pixels.
        loss_weight: weight of this task's loss in a joint model.
    """

    name = "albedo"
    gt_key = "albedo"

    def __init__(self, lmse_window: int = 20, loss_weight: float = 1.0) -> None:
        self.lmse_window = lmse_window
        self.loss_weight = loss_weight

    def valid_mask(self, gt: Tensor) -> Tensor:
        """A surface: some channel above black (the renderer's 0 = no surface), all finite."""
        return (gt > -1 + 1e-6).any(dim=1, keepdim=True) & torch.isfinite(gt).all(dim=1, keepdim=True)

    def encode(self, gt: Tensor, valid: Tensor) -> Tensor:
        return torch.where(valid, gt.clamp(-1, 1), torch.zeros_like(gt))

    def decode(self, image: Tensor) -> Tensor:
        return ((image + 1) / 2).clamp(0, 1)

    def metric(self) -> AlbedoMetrics:
        return AlbedoMetrics(window=self.lmse_window)

    def headline(self, results: dict[str, Tensor]) -> tuple[str, float]:
        return "si_mse", float(results["si_mse"])

    def visualize(self, pred: Tensor, valid: Tensor | None = None) -> Tensor:
        return pred if valid is None else pred * valid

    def visualize_gt(self, gt: Tensor, valid: Tensor) -> Tensor:
        return (gt + 1) / 2 * valid

    def save(self, pred: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
        albedo = np.clip(pred.astype(np.float32), 0, 1)
        paths = [out_dir / f"{stem}_albedo.png", out_dir / f"{stem}_albedo.npy"]
        Image.fromarray(np.round(albedo.transpose(1, 2, 0) * 255).astype(np.uint8)).save(paths[0])
        np.save(paths[1], albedo)
        return paths
