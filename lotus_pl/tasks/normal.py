"""Surface normals in the camera frame.

Convention (that of the Lotus / DSINE evaluation data): x points image-left, y up, z toward the
camera, so a wall facing the camera is (0, 0, 1), a floor (0, 1, 0), a surface facing image-right
(-1, 0, 0). Normals face the camera; a horizontal flip of the image negates x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from lotus_pl.metrics import NormalMetrics
from lotus_pl.tasks.base import Task
from lotus_pl.visualize import normals_to_rgb


def hflip_normals(normal: Tensor) -> Tensor:
    """Mirror normals with their image: flip the width axis and negate x."""
    flipped = normal.flip(-1).clone()
    flipped[..., 0, :, :] = -flipped[..., 0, :, :]
    return flipped


class Normal(Task):
    """Camera-frame unit surface normals; the annotation image is the normal itself.

    Args:
        loss_weight: weight of this task's loss in a joint model.
    """

    name = "normal"
    gt_key = "normal"

    def __init__(self, loss_weight: float = 1.0) -> None:
        self.loss_weight = loss_weight

    def valid_mask(self, gt: Tensor) -> Tensor:
        return (gt.norm(dim=1, keepdim=True) > 0.5) & torch.isfinite(gt).all(dim=1, keepdim=True)

    def encode(self, gt: Tensor, valid: Tensor) -> Tensor:
        return torch.where(valid, F.normalize(gt, dim=1), torch.zeros_like(gt))

    def decode(self, image: Tensor) -> Tensor:
        return F.normalize(image, dim=1, eps=1e-6)

    def resize_for(self, pred: Tensor, size: tuple[int, int]) -> Tensor:
        return F.normalize(super().resize_for(pred, size), dim=1, eps=1e-6)

    def flip_horizontal(self, pred: Tensor) -> Tensor:
        return hflip_normals(pred)

    def ensemble_reduction(self):
        """The normalised mean on the sphere (uncertainty: mean angle to it, degrees)."""
        from lotus_pl.ensembles.reductions import SphereMean

        return SphereMean()

    def pixel_errors(self):
        from lotus_pl.ensembles.sparsification import AngularPixelErrors

        return AngularPixelErrors()

    def metric(self) -> NormalMetrics:
        return NormalMetrics()

    def headline(self, results: dict[str, Tensor]) -> tuple[str, float]:
        return "mean", float(results["mean"])

    def visualize(self, pred: Tensor, valid: Tensor | None = None) -> Tensor:
        rgb = normals_to_rgb(pred)
        return rgb if valid is None else rgb * valid

    def visualize_gt(self, gt: Tensor, valid: Tensor) -> Tensor:
        return self.visualize(gt, valid)

    def save(self, pred: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
        normal = pred.astype(np.float32)
        paths = [out_dir / f"{stem}_normal.png", out_dir / f"{stem}_normal.npy"]
        rgb = np.round((np.clip(normal, -1, 1) + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(rgb).save(paths[0])
        np.save(paths[1], normal)
        return paths
