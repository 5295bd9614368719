"""Fine detail: how well predicted depth discontinuities match the true ones.

AbsRel and δ1 are dominated by large smooth surfaces; the detail preserver's claim is about object
boundaries. On data with exact depth (the procedural scenes), a pixel is a depth edge when the
relative depth jump to its right or lower neighbour exceeds ``threshold``. After the same per-image
alignment as the depth metrics, predicted edges are compared with true edges within a tolerance of
``tolerance`` pixels:

- accuracy (precision): fraction of predicted edge pixels near a true edge;
- completeness (recall): fraction of true edge pixels near a predicted edge;
- F1 of the two.
Counts are summed over the whole dataset (DDP-safe sums), like iBims-1's boundary measures in spirit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lotus_pl.alignment import Alignment, DisparityAlignment


def depth_edges(depth: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """``[B, 1, H, W]`` bool: pixels whose relative depth jump to the right or lower neighbour > threshold."""
    edges = torch.zeros_like(valid)
    for dim in (-1, -2):
        a, b = depth.narrow(dim, 0, depth.shape[dim] - 1), depth.narrow(dim, 1, depth.shape[dim] - 1)
        ok = valid.narrow(dim, 0, valid.shape[dim] - 1) & valid.narrow(dim, 1, valid.shape[dim] - 1)
        jump = (a - b).abs() / torch.minimum(a, b).clamp_min(1e-6) > threshold
        edges.narrow(dim, 0, edges.shape[dim] - 1).logical_or_(jump & ok)
    return edges


def _near(mask: Tensor, tolerance: int) -> Tensor:
    if tolerance == 0:
        return mask
    return F.max_pool2d(mask.float(), 2 * tolerance + 1, stride=1, padding=tolerance).bool()


class DepthEdgeMetrics(Metric):
    """Edge accuracy / completeness / F1 of aligned depth against exact depth discontinuities."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, alignment: Alignment | None = None, threshold: float = 0.1, tolerance: int = 1,
                 min_depth: float = 1e-3, max_depth: float = 80.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alignment = alignment if alignment is not None else DisparityAlignment()
        self.threshold, self.tolerance = threshold, tolerance
        self.min_depth, self.max_depth = min_depth, max_depth
        for name in ("pred_edges", "pred_hits", "true_edges", "true_hits"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt_depth: Tensor, valid_mask: Tensor | None = None) -> None:
        valid = torch.isfinite(gt_depth) & (gt_depth > self.min_depth) & (gt_depth < self.max_depth)
        if valid_mask is not None:
            valid &= valid_mask.bool()
        aligned = self.alignment(pred.double(), gt_depth.double(), valid).clamp(self.min_depth, self.max_depth)
        true = depth_edges(gt_depth.double(), valid, self.threshold)
        found = depth_edges(aligned, valid, self.threshold)
        self.pred_edges += found.sum()
        self.pred_hits += (found & _near(true, self.tolerance)).sum()
        self.true_edges += true.sum()
        self.true_hits += (true & _near(found, self.tolerance)).sum()

    def compute(self) -> dict[str, Tensor]:
        accuracy = self.pred_hits / self.pred_edges.clamp_min(1)
        completeness = self.true_hits / self.true_edges.clamp_min(1)
        f1 = 2 * accuracy * completeness / (accuracy + completeness).clamp_min(1e-12)
        return {"edge_accuracy": accuracy, "edge_completeness": completeness, "edge_f1": f1}


class MetricGroup(MetricCollection):
    """Metrics updated with the same arguments whose result dicts merge under their own names."""

    def compute(self) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for metric in self.values():
            results = metric.compute()
            clash = set(merged) & set(results)
            if clash:
                raise ValueError(f"metric names {sorted(clash)} appear twice in one MetricGroup")
            merged.update(results)
        return merged
