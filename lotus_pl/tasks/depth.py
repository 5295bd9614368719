"""Monocular depth, affine-invariant: targets normalised per image in depth or disparity space.

Encodings (how metres become the annotation image in [-1, 1]):
- :class:`NormalizedDisparity`: Lotus v2's "trunc_disparity": ``d = 1/depth`` over valid pixels,
  ``y = clip((d - q_low) / (q_high - q_low) * 2 - 1, -1, 1)`` with 2% / 98% quantiles by default.
- :class:`NormalizedDepth`: Marigold's "truncnorm": the same on depth.
Quantiles 0 and 1 give the plain min-max normalised depth or disparity. Invalid pixels get the
"far" value (+1 in depth, -1 in disparity); the loss mask ignores them anyway.

Predictions are relative (up to scale and shift in their space), so evaluation aligns each image
to the ground truth by least squares in that same space before computing metrics.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lotus_pl.alignment import DepthAlignment, DisparityAlignment, least_squares_scale_shift
from lotus_pl.edge_metrics import DepthEdgeMetrics, MetricGroup
from lotus_pl.metrics import DepthMetrics
from lotus_pl.tasks.base import Task
from lotus_pl.visualize import colorize


class DepthEncoding(ABC):
    """Per-image quantile normalisation of depth in some space."""

    #: "depth" or "disparity": the space predictions live in (recorded in output files).
    space: str
    #: Encoded value of invalid pixels ("far").
    far: float

    def __init__(self, low_quantile: float = 0.02, high_quantile: float = 0.98) -> None:
        if not 0 <= low_quantile < high_quantile <= 1:
            raise ValueError(f"need 0 <= low_quantile < high_quantile <= 1, got {low_quantile}, {high_quantile}")
        self.low_quantile = low_quantile
        self.high_quantile = high_quantile

    @abstractmethod
    def transform(self, depth: Tensor) -> Tensor:
        """Depth (metres, > 0) -> the value that is normalised."""

    @abstractmethod
    def alignment(self):
        """The least-squares alignment that matches this space."""

    def encode(self, depth: Tensor, valid: Tensor) -> Tensor:
        """``[B, 1, H, W]`` metres -> ``[B, 1, H, W]`` in [-1, 1]."""
        out = torch.full_like(depth, self.far)
        for i in range(depth.shape[0]):
            mask = valid[i]
            if not mask.any():
                continue
            values = self.transform(depth[i][mask])
            q = torch.quantile(values.float(), torch.tensor([self.low_quantile, self.high_quantile], device=values.device))
            scaled = (values - q[0]) / (q[1] - q[0]).clamp_min(1e-12) * 2 - 1
            out[i][mask] = scaled.clamp(-1, 1).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(low_quantile={self.low_quantile}, high_quantile={self.high_quantile})"


class NormalizedDisparity(DepthEncoding):
    """Lotus v2's truncated normalised disparity (near = +1, far = -1)."""

    space = "disparity"
    far = -1.0

    def transform(self, depth: Tensor) -> Tensor:
        return 1.0 / depth

    def alignment(self):
        return DisparityAlignment()


class NormalizedDepth(DepthEncoding):
    """Marigold's truncated normalised depth (near = -1, far = +1)."""

    space = "depth"
    far = 1.0

    def transform(self, depth: Tensor) -> Tensor:
        return depth

    def alignment(self):
        return DepthAlignment()


class Depth(Task):
    """Affine-invariant depth.

    Args:
        encoding: how depth becomes the annotation image (and which space predictions are in).
        min_depth, max_depth: valid ground-truth range (exclusive), for the loss mask and metrics.
        edge_metrics: also score depth discontinuities (edge accuracy / completeness / F1); meaningful
            on ground truth with exact edges, such as the procedural scenes.
        loss_weight: weight of this task's loss in a joint model.
    """

    name = "depth"
    gt_key = "depth"

    def __init__(self, encoding: DepthEncoding | None = None, min_depth: float = 1e-3, max_depth: float = 80.0,
                 edge_metrics: bool = False, loss_weight: float = 1.0) -> None:
        self.loss_weight = loss_weight
        self.encoding = encoding if encoding is not None else NormalizedDisparity()
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.edge_metrics = edge_metrics

    def valid_mask(self, gt: Tensor) -> Tensor:
        return torch.isfinite(gt) & (gt > self.min_depth) & (gt < self.max_depth)

    def encode(self, gt: Tensor, valid: Tensor) -> Tensor:
        return self.encoding.encode(gt, valid).expand(-1, 3, -1, -1)

    def decode(self, image: Tensor) -> Tensor:
        """Mean of the three channels, mapped from [-1, 1] to [0, 1] (relative depth or disparity)."""
        return ((image.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)

    def align(self, pred: Tensor, reference: Tensor) -> Tensor:
        """Least-squares scale and shift of a tile onto the whole-image prediction (both relative)."""
        scale, shift = least_squares_scale_shift(pred, reference, torch.ones_like(pred, dtype=torch.bool))
        return pred * scale.reshape(-1, 1, 1, 1) + shift.reshape(-1, 1, 1, 1)

    def ensemble_reduction(self):
        """Marigold's: align the members' scale and shift, then the median (uncertainty: MAD)."""
        from lotus_pl.ensembles.reductions import MedianAlign

        return MedianAlign()

    def pixel_errors(self):
        from lotus_pl.ensembles.sparsification import DepthPixelErrors

        return DepthPixelErrors(self.encoding.alignment(), self.min_depth, self.max_depth)

    def metric(self) -> DepthMetrics | MetricGroup:
        metric = DepthMetrics(alignment=self.encoding.alignment(), min_depth=self.min_depth, max_depth=self.max_depth)
        if not self.edge_metrics:
            return metric
        edges = DepthEdgeMetrics(alignment=self.encoding.alignment(), min_depth=self.min_depth, max_depth=self.max_depth)
        return MetricGroup({"depth": metric, "edges": edges}, compute_groups=False)

    def headline(self, results: dict[str, Tensor]) -> tuple[str, float]:
        return "abs_rel", float(results["abs_rel"])

    def visualize(self, pred: Tensor, valid: Tensor | None = None) -> Tensor:
        # Near is bright: disparity as is, depth inverted.
        near = pred if self.encoding.space == "disparity" else -pred
        return colorize(near, valid)

    def visualize_gt(self, gt: Tensor, valid: Tensor) -> Tensor:
        return colorize(torch.where(valid, 1.0 / gt.clamp_min(1e-6), torch.zeros_like(gt)), valid)

    def save(self, pred: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
        value = np.clip(pred[0].astype(np.float32), 0, 1)
        paths = [out_dir / f"{stem}_depth.png", out_dir / f"{stem}_depth.npy", out_dir / f"{stem}_depth_color.png", out_dir / f"{stem}_depth.json"]
        Image.fromarray(np.round(value * 65535).astype(np.uint16)).save(paths[0])
        np.save(paths[1], value)
        color = self.visualize(torch.from_numpy(value)[None, None])[0].permute(1, 2, 0).numpy()
        Image.fromarray(np.round(color * 255).astype(np.uint8)).save(paths[2])
        paths[3].write_text(json.dumps({
            "space": self.encoding.space,
            "affine_invariant": True,
            "png_scale": 65535,
            "note": f"relative {self.encoding.space} in [0, 1] (PNG value / 65535); align scale and shift to metric ground truth",
        }, indent=2))
        return paths
