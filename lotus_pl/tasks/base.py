"""The Task interface: everything the model needs to know about one kind of annotation.

A task turns its ground truth into the codec's 3-channel image in [-1, 1] (the "annotation image"
the VAE encodes), turns a decoded 3-channel prediction back into its own output, says which pixels
are valid, and brings its metrics, visualisation and file outputs. The model, the trainer and the
CLI know nothing else about it, so a new task is one new subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from torch import Tensor
from torchmetrics import Metric


class Task(ABC):
    """One dense prediction target."""

    #: Name used for outputs and logged metrics ("depth", "normal", ...).
    name: str
    #: Batch key holding this task's ground truth, decoded by the data pipeline. Keys the project
    #: does not know are read from ``<gt_key>.npy`` / ``<gt_key>.png`` in the shards.
    gt_key: str
    #: Weight of this task's latent loss when several tasks train together.
    loss_weight: float = 1.0

    @abstractmethod
    def valid_mask(self, gt: Tensor) -> Tensor:
        """``[B, 1, H, W]`` bool: pixels whose ground truth is usable."""

    @abstractmethod
    def encode(self, gt: Tensor, valid: Tensor) -> Tensor:
        """Ground truth -> ``[B, 3, H, W]`` annotation image in [-1, 1]."""

    @abstractmethod
    def decode(self, image: Tensor) -> Tensor:
        """Decoded ``[B, 3, H, W]`` annotation image -> the task's prediction ``[B, C, H, W]``."""

    @abstractmethod
    def metric(self) -> Metric:
        """A fresh torchmetrics metric whose ``update(pred, gt, valid)`` scores predictions."""

    @abstractmethod
    def headline(self, results: dict[str, Tensor]) -> tuple[str, float]:
        """The metric name and value a learning curve is judged by (lower is better)."""

    @abstractmethod
    def visualize(self, pred: Tensor, valid: Tensor | None = None) -> Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] for image panels."""

    @abstractmethod
    def visualize_gt(self, gt: Tensor, valid: Tensor) -> Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] of the ground truth, comparable to :meth:`visualize`."""

    @abstractmethod
    def save(self, pred: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
        """Write one ``[C, H, W]`` prediction to files; return their paths."""

    def align(self, pred: Tensor, reference: Tensor) -> Tensor:
        """Bring a tile's prediction onto a reference prediction of the same pixels (tiled inference).
        Absolute outputs (normals) need nothing; relative ones (affine-invariant depth) override."""
        return pred

    def flip_horizontal(self, pred: Tensor) -> Tensor:
        """Mirror a ``[..., C, H, W]`` prediction left-right (test-time flip); tasks whose values
        have a direction (normals' x) override."""
        return pred.flip(-1)

    def ensemble_reduction(self):
        """How ensemble members of this task combine by default (``lotus_pl.ensembles``): a plain
        per-pixel mean with the std as uncertainty; geometric tasks override."""
        from lotus_pl.ensembles.reductions import Mean

        return Mean()

    def pixel_errors(self):
        """Per-pixel errors for the sparsification evaluation of uncertainty (AUSE), or None."""
        return None

    def resize_for(self, pred: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize a prediction to ``size`` (H, W); tasks with constraints (unit norm) override."""
        import torch.nn.functional as F

        if tuple(pred.shape[-2:]) == tuple(size):
            return pred
        return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
