"""Evaluation metrics for depth (affine-invariant, Marigold protocol) and surface normals (DSINE protocol).

Both metrics keep only fixed-size summed states (``dist_reduce_fx="sum"``), so that
under DDP each rank evaluates its own shard and ``compute()`` sums the states over
ranks: the result equals a single process over all data, up to the float64
rounding of the summation order. Nothing grows with the number of pixels or images.

* :class:`DepthMetrics` computes ten metrics per image, then averages them over
  images (an image counts once, whatever its resolution).
* :class:`NormalMetrics` pools the angular errors of all pixels of a dataset (a
  pixel counts once, whatever its image): exact count, sum, sum of squares and
  counts below each threshold, plus a 0.01° histogram for the median.

All rates (δ thresholds, angular-error thresholds) are fractions in [0, 1], not
percentages.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lotus_pl.alignment import Alignment, DisparityAlignment

__all__ = ["DEPTH_METRIC_NAMES", "NORMAL_METRIC_NAMES", "DepthMetrics", "NormalMetrics", "angular_error_degrees"]

DEPTH_METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
    "i_rmse",
    "silog",
)

NORMAL_THRESHOLDS: tuple[float, ...] = (5.0, 7.5, 11.25, 22.5, 30.0)
NORMAL_METRIC_NAMES: tuple[str, ...] = ("mean", "median", "rmse", "a5", "a7_5", "a11_25", "a22_5", "a30")


def _check_mask(mask: Tensor | None, like: Tensor, name: str) -> Tensor:
    """An all-true mask when none is given; otherwise a bool mask of ``like``'s shape."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(f"{name} {tuple(mask.shape)} must have shape {tuple(like.shape)}")
    return mask.bool()


class DepthMetrics(Metric):
    """Depth metrics after per-image alignment, averaged over images.

    Per image, over the valid pixels (``min_depth < gt < max_depth``, finite, and
    inside ``valid_mask``), with ``p`` the aligned prediction clipped to
    ``[min_depth, max_depth]`` (then to at least 1e-6, so logs stay finite) and
    ``g`` the ground truth:

    * ``abs_rel = mean(|p - g| / g)``, ``sq_rel = mean((p - g)² / g)``;
    * ``rmse = sqrt(mean((p - g)²))``, ``rmse_log = sqrt(mean((ln p - ln g)²))``;
    * ``log10 = mean(|log10 p - log10 g|)``;
    * ``delta{k}`` = fraction of pixels with ``max(p/g, g/p) < 1.25**k`` (strict);
    * ``i_rmse = sqrt(mean((1/p - 1/g)²))`` (in 1/m);
    * ``silog = 100 * sqrt(mean(d²) - mean(d)²)`` with ``d = ln p - ln g``: the
      standard deviation of the log error, times 100 (Marigold's convention; the
      KITTI benchmark reports the same quantity; the BTS/AdaBins training loss with
      its 0.85 weight on ``mean(d)²`` is a different thing).

    Each metric is then averaged over the images that have at least one valid
    pixel. Images without any are not counted (``num_skipped``) and cannot turn
    the result into NaN. With no counted image at all, ``compute()`` returns
    zeros and ``num_images`` is 0: check it before trusting the numbers.

    ``update(pred, gt_depth, valid_mask=None)`` takes ``[B, 1, H, W]`` (or
    ``[B, H, W]``) tensors: ``pred`` is the model's relative prediction in the space
    ``alignment`` expects, already resized to the ground truth; ``gt_depth`` is in
    metres with 0 for "no measurement". All arithmetic is float64.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sums: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(
        self,
        alignment: Alignment = DisparityAlignment(),
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.alignment = alignment
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.add_state("sums", torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self._num_images = 0
        self._num_skipped = 0

    def valid_pixels(self, gt_depth: Tensor, valid_mask: Tensor | None = None) -> Tensor:
        """The evaluation mask: finite ground truth strictly inside the depth range, and ``valid_mask``."""
        in_range = torch.isfinite(gt_depth) & (gt_depth > self.min_depth) & (gt_depth < self.max_depth)
        return in_range & _check_mask(valid_mask, gt_depth, "valid_mask")

    def update(self, pred: Tensor, gt_depth: Tensor, valid_mask: Tensor | None = None) -> None:
        if pred.shape != gt_depth.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and gt_depth {tuple(gt_depth.shape)} differ in shape; "
                "resize the prediction to the ground truth first"
            )
        if pred.dim() not in (3, 4) or (pred.dim() == 4 and pred.shape[1] != 1):
            raise ValueError(f"expected [B, 1, H, W] or [B, H, W], got {tuple(pred.shape)}")
        pred = pred.detach().double()
        gt = gt_depth.detach().double()
        valid = self.valid_pixels(gt, valid_mask)

        depth = self.alignment(pred, gt, valid)
        depth = depth.clamp(self.min_depth, self.max_depth).clamp_min(1e-6)

        per_image = self._per_image_metrics(depth, gt, valid)
        has_pixels = valid.flatten(1).any(dim=1)
        self.sums += per_image[has_pixels].sum(dim=0)
        self.count += has_pixels.sum()
        self.skipped += (~has_pixels).sum()

    @staticmethod
    def _per_image_metrics(p: Tensor, g: Tensor, valid: Tensor) -> Tensor:
        """``[B, 10]`` metrics in the order of ``DEPTH_METRIC_NAMES``; rows of empty images are 0."""
        m = valid.flatten(1)
        # Outside the mask, put p = g = 1: every error term is then exactly 0.
        p = torch.where(m, p.flatten(1), 1.0)
        g = torch.where(m, g.flatten(1), 1.0)
        n = m.sum(dim=1).double().clamp_min(1.0)

        def mean(x: Tensor) -> Tensor:
            return torch.where(m, x, 0.0).sum(dim=1) / n

        diff = p - g
        log_diff = torch.log(p) - torch.log(g)
        ratio = torch.maximum(p / g, g / p)
        mean_log, mean_log_sq = mean(log_diff), mean(log_diff**2)
        return torch.stack(
            [
                mean(diff.abs() / g),
                mean(diff**2 / g),
                mean(diff**2).sqrt(),
                mean_log_sq.sqrt(),
                mean((torch.log10(p) - torch.log10(g)).abs()),
                mean((ratio < 1.25).double()),
                mean((ratio < 1.25**2).double()),
                mean((ratio < 1.25**3).double()),
                mean((1.0 / p - 1.0 / g) ** 2).sqrt(),
                (mean_log_sq - mean_log**2).clamp_min(0.0).sqrt() * 100.0,
            ],
            dim=1,
        )

    def compute(self) -> dict[str, Tensor]:
        # Runs on the states summed over ranks; record the global counts for the properties.
        self._num_images = int(self.count)
        self._num_skipped = int(self.skipped)
        means = self.sums / self.count.clamp_min(1)
        return {name: means[i] for i, name in enumerate(DEPTH_METRIC_NAMES)}

    def reset(self) -> None:
        super().reset()
        self._num_images = 0
        self._num_skipped = 0

    @property
    def num_images(self) -> int:
        """Images averaged over, summed over ranks, as of the last ``compute()``."""
        return self._num_images

    @property
    def num_skipped(self) -> int:
        """Images skipped for an empty valid mask, summed over ranks, as of the last ``compute()``."""
        return self._num_skipped


def angular_error_degrees(pred: Tensor, gt: Tensor, dim: int = 1) -> Tensor:
    """Angle in degrees between ``pred`` and ``gt`` along ``dim`` (the vector axis).

    ``degrees(acos(clamp(cos_sim(pred, gt), -1, 1)))`` as in DSINE; neither input
    needs unit length. Computed in float64, because acos is ill-conditioned near 0°
    where the best predictions are (float32 cosines resolve only ~0.02° there).
    A zero vector has cosine 0 with anything, hence 90°.
    """
    cos = torch.nn.functional.cosine_similarity(pred.double(), gt.double(), dim=dim)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


class NormalMetrics(Metric):
    """Angular error of surface normals, pooled over all valid pixels of a dataset (DSINE).

    ``update(pred, gt, valid_mask=None)`` takes ``[B, 3, H, W]`` normals (``pred``
    need not be unit length) and an optional ``[B, 1, H, W]`` or ``[B, H, W]`` mask;
    ground-truth pixels with zero or non-finite norm are invalid.

    ``compute()`` returns ``mean``, ``median`` and ``rmse`` of the angular error in
    degrees and ``a5 ... a30``, the fraction of pixels with error strictly below
    5, 7.5, 11.25, 22.5 and 30 degrees. Mean, RMSE and the fractions come from
    exact sums; the median from a histogram of ``bin_width``-degree bins over
    [0, 180] (bin centres, averaged for an even count as numpy does), so it is
    within ``bin_width / 2`` of the exact median. Zeros when no pixel was seen;
    ``num_pixels`` tells.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    count: Tensor
    error_sum: Tensor
    error_sq_sum: Tensor
    below: Tensor
    histogram: Tensor

    def __init__(self, bin_width: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        num_bins = round(180.0 / bin_width)
        if num_bins < 1 or not math.isclose(num_bins * bin_width, 180.0):
            raise ValueError(f"bin_width must divide 180 degrees, got {bin_width}")
        self.bin_width = float(bin_width)
        self.num_bins = num_bins
        self.thresholds = NORMAL_THRESHOLDS
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("error_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("error_sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("below", torch.zeros(len(NORMAL_THRESHOLDS), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(num_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self._num_pixels = 0

    def update(self, pred: Tensor, gt: Tensor, valid_mask: Tensor | None = None) -> None:
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected pred and gt of shape [B, 3, H, W], got {tuple(pred.shape)}, {tuple(gt.shape)}")
        pred, gt = pred.detach(), gt.detach()
        gt_norm = torch.linalg.vector_norm(gt.double(), dim=1)
        valid = torch.isfinite(gt_norm) & (gt_norm > 0)
        if valid_mask is not None:
            if valid_mask.dim() == 4:
                valid_mask = valid_mask.squeeze(1)
            valid = valid & _check_mask(valid_mask, valid, "valid_mask")

        errors = angular_error_degrees(pred, gt, dim=1)[valid]
        self.count += errors.numel()
        self.error_sum += errors.sum()
        self.error_sq_sum += (errors**2).sum()
        thresholds = torch.tensor(self.thresholds, dtype=errors.dtype, device=errors.device)
        self.below += (errors[:, None] < thresholds).sum(dim=0)
        bins = (errors / self.bin_width).floor().long().clamp_(0, self.num_bins - 1)
        self.histogram += torch.bincount(bins, minlength=self.num_bins)

    def _median(self) -> Tensor:
        """Median from the histogram: the bin centres of the two middle order statistics, averaged."""
        n = int(self.count)
        cumulative = self.histogram.cumsum(0)
        middle = torch.tensor([(n - 1) // 2, n // 2], dtype=cumulative.dtype, device=cumulative.device)
        # First bin whose cumulative count exceeds the 0-based rank.
        bins = torch.searchsorted(cumulative, middle, right=True)
        return ((bins.double() + 0.5) * self.bin_width).mean()

    def compute(self) -> dict[str, Tensor]:
        self._num_pixels = int(self.count)
        if self._num_pixels == 0:
            zero = torch.zeros((), dtype=torch.float64, device=self.error_sum.device)
            return {name: zero.clone() for name in NORMAL_METRIC_NAMES}
        n = self.count.double()
        result = {
            "mean": self.error_sum / n,
            "median": self._median(),
            "rmse": (self.error_sq_sum / n).sqrt(),
        }
        fractions = self.below.double() / n
        for name, fraction in zip(NORMAL_METRIC_NAMES[3:], fractions):
            result[name] = fraction
        return result

    def reset(self) -> None:
        super().reset()
        self._num_pixels = 0

    @property
    def num_pixels(self) -> int:
        """Pixels pooled, summed over ranks, as of the last ``compute()``."""
        return self._num_pixels
