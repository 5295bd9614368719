"""Is the uncertainty informative? Sparsification curves, AUSE and AURG (Poggi et al., CVPR 2020).

Per image, the valid pixels are ranked by their uncertainty and the most uncertain fraction ``f`` is
removed, for ``f = 0, 1/K, ..., (K-1)/K`` (Poggi: K = 50, steps of 2 %); the error metric of the
pixels that remain, as a function of ``f``, is the sparsification curve. The *oracle* ranks by the
true error instead (the best any uncertainty could do); a *random* uncertainty leaves the metric
flat at its value on all pixels (its expectation for these means of per-pixel errors). With areas
taken by the trapezoid rule over ``f`` in ``[0, (K-1)/K]``:

- ``AUSE = area(curve) - area(oracle)``: 0 for a perfect ranking, lower is better;
- ``AURG = area(random) - area(curve)``: above 0 when the uncertainty beats chance, higher is better.

Curves are computed per image and averaged over images (Poggi's protocol). The metric keeps the
*sums over images* of the curve and the oracle at the K fractions (``dist_reduce_fx="sum"``), so under
DDP each rank ranks its own images and ``compute()`` sums: the result equals one process over all
images, up to float64 summation order. Nothing is binned over uncertainty values, which would not be
exact.

Ties in the uncertainty (a constant map, e.g. an ensemble of one) are broken *in expectation*: when a
cut falls inside a run of equal uncertainties, the remaining pixels of that run count with the run's
mean error, so a constant uncertainty gives exactly the random (flat) curve, whatever the pixel order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lotus_pl.alignment import Alignment, DisparityAlignment

__all__ = ["AngularPixelErrors", "DepthPixelErrors", "PixelErrors", "SparsificationMetrics", "sparsification_curve"]


class PixelErrors(ABC):
    """Per-pixel errors whose per-image means (square-rooted for ``root`` ones) are the metrics."""

    #: metric names, in the order of the error channels
    names: tuple[str, ...]
    #: per metric: the metric is sqrt(mean(error)) (RMSE from squared errors) instead of mean(error)
    root: tuple[bool, ...]

    @abstractmethod
    def __call__(self, pred: Tensor, gt: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """``[B, K, H, W]`` float64 errors (one channel per name) and the ``[B, H, W]`` bool pixels to rank."""


class DepthPixelErrors(PixelErrors):
    """AbsRel, RMSE and 1 - δ1 of depth after the evaluation's per-image alignment, exactly as
    :class:`~lotus_pl.metrics.DepthMetrics` computes them (same valid range, alignment and clipping)."""

    names = ("abs_rel", "rmse", "bad_delta1")
    root = (False, True, False)

    def __init__(self, alignment: Alignment = DisparityAlignment(), min_depth: float = 1e-3, max_depth: float = 80.0) -> None:
        self.alignment = alignment
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    def __call__(self, pred: Tensor, gt: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        pred, gt = pred.detach().double(), gt.detach().double()
        ok = torch.isfinite(gt) & (gt > self.min_depth) & (gt < self.max_depth)
        if valid is not None:
            ok = ok & valid.bool()
        depth = self.alignment(pred, gt, ok).clamp(self.min_depth, self.max_depth).clamp_min(1e-6)
        g = torch.where(ok, gt, 1.0)
        p = torch.where(ok, depth, 1.0)
        ratio = torch.maximum(p / g, g / p)
        errors = torch.cat([(p - g).abs() / g, (p - g) ** 2, (ratio >= 1.25).double()], dim=1)
        return errors, ok[:, 0]


class AngularPixelErrors(PixelErrors):
    """Angular error of normals in degrees (the mean angular error per image)."""

    names = ("mean_angular",)
    root = (False,)

    def __call__(self, pred: Tensor, gt: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        from lotus_pl.metrics import angular_error_degrees

        norm = torch.linalg.vector_norm(gt.double(), dim=1)
        ok = torch.isfinite(norm) & (norm > 0)
        if valid is not None:
            ok = ok & (valid[:, 0] if valid.dim() == 4 else valid).bool()
        errors = angular_error_degrees(pred.detach(), torch.where(ok[:, None], gt.double(), 1.0), dim=1)
        return errors[:, None], ok


def removal_fractions(steps: int) -> Tensor:
    """``0, 1/K, ..., (K-1)/K``: the fractions of most uncertain pixels removed."""
    return torch.arange(steps, dtype=torch.float64) / steps


def sparsification_curve(errors: Tensor, key: Tensor, steps: int, root: bool = False) -> Tensor:
    """The ``[K]`` metric of the pixels kept after removing the largest-``key`` fractions.

    ``errors`` and ``key`` are one image's ``[N]`` valid pixels (N >= 1). ``m = N - floor(f N)``
    pixels are kept; a cut inside a run of tied keys takes that run's mean error for its kept part.
    """
    key, order = torch.sort(key.double(), stable=True)  # most certain first
    sorted_errors = errors.double()[order]
    n = sorted_errors.numel()
    totals = torch.cat([sorted_errors.new_zeros(1), sorted_errors.cumsum(0)])  # totals[m] = sum of the first m
    _, run, counts = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    kept = n - torch.floor(removal_fractions(steps).to(errors.device) * n).long()
    last_run = run[kept - 1]
    a, b = starts[last_run], ends[last_run]
    kept_sum = totals[a] + (kept - a).double() / (b - a).double() * (totals[b] - totals[a])
    mean = kept_sum / kept.double()
    return mean.clamp_min(0).sqrt() if root else mean


class SparsificationMetrics(Metric):
    """AUSE and AURG of an uncertainty map for each of ``errors``' metrics, exact under DDP.

    ``update(pred, gt, valid, uncertainty)``: ``uncertainty`` is ``[B, 1, H, W]``, larger = less
    sure. ``compute()`` gives ``ause_<metric>`` and ``aurg_<metric>``; :meth:`curves` the mean curves.

    Args:
        errors: the per-pixel errors (:class:`DepthPixelErrors`, :class:`AngularPixelErrors`).
        steps: K, the number of removal fractions (50 = Poggi's 2 % steps).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    curve_sum: Tensor
    oracle_sum: Tensor
    count: Tensor

    def __init__(self, errors: PixelErrors, steps: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if steps < 2:
            raise ValueError(f"steps must be >= 2 (removal fractions 0, 1/K, ...), got {steps}")
        self.errors, self.steps = errors, steps
        k = len(errors.names)
        self.add_state("curve_sum", torch.zeros(k, steps, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("oracle_sum", torch.zeros(k, steps, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, valid: Tensor | None, uncertainty: Tensor) -> None:
        errors, ok = self.errors(pred, gt, valid)
        if uncertainty.dim() != 4 or uncertainty.shape[1] != 1 or uncertainty.shape[-2:] != ok.shape[-2:] \
                or uncertainty.shape[0] != ok.shape[0]:
            raise ValueError(f"uncertainty must be [B, 1, H, W] = [{ok.shape[0]}, 1, {ok.shape[1]}, {ok.shape[2]}], "
                             f"got {tuple(uncertainty.shape)}")
        for i in range(ok.shape[0]):
            mask = ok[i]
            if not mask.any():
                continue
            key = uncertainty[i, 0][mask]
            if not torch.isfinite(key).all():
                raise ValueError(f"uncertainty of image {i} of the batch is not finite on valid pixels")
            for j, root in enumerate(self.errors.root):
                e = errors[i, j][mask]
                self.curve_sum[j] += sparsification_curve(e, key, self.steps, root)
                self.oracle_sum[j] += sparsification_curve(e, e, self.steps, root)
            self.count += 1

    def curves(self) -> dict[str, dict[str, Tensor]]:
        """Mean ``curve``, ``oracle`` and ``random`` curves per metric over ``fractions``."""
        n = self.count.clamp_min(1).double()
        curve, oracle = self.curve_sum / n, self.oracle_sum / n
        return {name: {"fractions": removal_fractions(self.steps), "curve": curve[j], "oracle": oracle[j],
                       "random": curve[j, :1].expand(self.steps)} for j, name in enumerate(self.errors.names)}

    def compute(self) -> dict[str, Tensor]:
        out = {}
        dx = 1.0 / self.steps
        for name, c in self.curves().items():
            out[f"ause_{name}"] = torch.trapezoid(c["curve"] - c["oracle"], dx=dx)
            out[f"aurg_{name}"] = torch.trapezoid(c["random"] - c["curve"], dx=dx)
        return out

    @property
    def num_images(self) -> int:
        return int(self.count)
