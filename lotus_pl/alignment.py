"""Per-image affine alignment of relative depth predictions to ground truth.

Affine-invariant models (Lotus, Marigold) predict depth or disparity only up to an
unknown scale and shift, so the evaluation protocol fits, per image, the scale ``s``
and shift ``t`` that best map the prediction onto the ground truth in least squares
over the valid pixels, and only then measures errors.

Two spaces are in use:

* depth space (Marigold protocol): fit ``s * pred + t ≈ gt``;
* disparity space (Lotus v2): fit ``s * pred + t ≈ 1 / gt``, clip the aligned
  disparity from below (no division by ~0) and invert it to depth.

The classes here share one interface, ``alignment(pred, gt_depth, valid) -> depth``,
so the metric can take whichever the config names (jsonargparse ``class_path``).
Clipping the result to the dataset's depth range is the metric's job, not theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "Alignment",
    "DepthAlignment",
    "DisparityAlignment",
    "NoAlignment",
    "least_squares_scale_shift",
]


def _per_image(x: Tensor, reference: Tensor) -> Tensor:
    """View a per-image vector ``[B]`` so that it broadcasts against ``reference``."""
    return x.view(-1, *([1] * (reference.dim() - 1)))


def least_squares_scale_shift(
    pred: Tensor, target: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per image, the ``(scale, shift)`` minimising ``sum_mask (scale * pred + shift - target)^2``.

    ``pred``, ``target`` and ``mask`` are ``[B, 1, H, W]`` or ``[B, H, W]`` (any
    shape whose first dimension is the batch); the result is two ``[B]`` tensors in
    ``pred``'s dtype. The sums are taken in float64 on centred data, because the
    closed form ``(n Σxy - Σx Σy) / (n Σx² - (Σx)²)`` cancels badly in float32 on
    megapixel images.

    Degenerate images never give NaN or inf:

    * no valid pixel: ``scale = 1, shift = 0`` (the identity);
    * one valid pixel, or a prediction that is constant over the valid pixels
      (variance at rounding level): every scale fits equally well, and we return
      the minimum-norm solution of the centred problem, ``scale = 0`` and
      ``shift = mean(target)``.

    Pixels outside the mask may hold anything, inf and NaN included: they are
    replaced by zeros before any arithmetic.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    elif mask.shape != pred.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and pred {tuple(pred.shape)} differ in shape")

    m = mask.flatten(1).bool()
    x = torch.where(m, pred.flatten(1).double(), 0.0)
    y = torch.where(m, target.flatten(1).double(), 0.0)

    n = m.sum(dim=1).double()
    n_safe = n.clamp_min(1.0)
    mean_x = x.sum(dim=1) / n_safe
    mean_y = y.sum(dim=1) / n_safe
    dx = torch.where(m, x - mean_x[:, None], 0.0)
    dy = torch.where(m, y - mean_y[:, None], 0.0)
    var_x = (dx * dx).sum(dim=1)
    cov_xy = (dx * dy).sum(dim=1)

    # "Constant prediction" means the spread is at the rounding level of the values.
    scale_of_x = (x * x).sum(dim=1)
    well_posed = (n >= 2) & (var_x > 64 * torch.finfo(torch.float64).eps * scale_of_x)
    scale = torch.where(well_posed, cov_xy / torch.where(well_posed, var_x, 1.0), 0.0)
    shift = mean_y - scale * mean_x

    empty = n == 0
    scale = torch.where(empty, 1.0, scale)
    shift = torch.where(empty, 0.0, shift)
    return scale.to(pred.dtype), shift.to(pred.dtype)


def _subsample(x: Tensor, factor: int) -> Tensor:
    """Every ``factor``-th pixel along H and W: nearest-neighbour downsampling that,
    unlike pooling, never mixes valid and invalid pixels."""
    return x if factor == 1 else x[..., ::factor, ::factor]


class Alignment(ABC):
    """Turns a model's raw prediction into metric depth for one batch of images.

    ``pred``, ``gt_depth`` and ``valid`` share a shape, ``[B, 1, H, W]`` or
    ``[B, H, W]``; ``gt_depth`` is in metres and ``valid`` marks the pixels whose
    ground truth the fit may use. The result has ``pred``'s shape and is finite
    wherever ``pred`` is finite.
    """

    @abstractmethod
    def __call__(self, pred: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class NoAlignment(Alignment):
    """For metric-depth models: the prediction already is depth in metres."""

    def __call__(self, pred: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
        return pred


class DepthAlignment(Alignment):
    """Affine-invariant depth (Marigold protocol): fit ``s * pred + t ≈ gt`` per image.

    ``fit_downsample = k`` fits on every k-th pixel along each axis (a k² cheaper
    fit on large images) and applies the fitted ``(s, t)`` at full resolution.
    """

    def __init__(self, fit_downsample: int = 1) -> None:
        if fit_downsample < 1:
            raise ValueError(f"fit_downsample must be >= 1, got {fit_downsample}")
        self.fit_downsample = fit_downsample

    def __call__(self, pred: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
        k = self.fit_downsample
        scale, shift = least_squares_scale_shift(
            _subsample(pred, k), _subsample(gt_depth, k), _subsample(valid, k)
        )
        return _per_image(scale, pred) * pred + _per_image(shift, pred)


class DisparityAlignment(Alignment):
    """Affine-invariant disparity (Lotus v2): fit ``s * pred + t ≈ 1 / gt`` per image.

    The fit uses only valid pixels with ``gt > 0`` and ``pred > 0`` (a non-positive
    disparity has no depth). The aligned disparity is clipped to at least
    ``min_disparity`` so that inverting it gives a finite depth, at most
    ``1 / min_disparity``. ``fit_downsample`` as in :class:`DepthAlignment`.
    """

    def __init__(self, fit_downsample: int = 1, min_disparity: float = 1e-3) -> None:
        if fit_downsample < 1:
            raise ValueError(f"fit_downsample must be >= 1, got {fit_downsample}")
        if min_disparity <= 0:
            raise ValueError(f"min_disparity must be > 0, got {min_disparity}")
        self.fit_downsample = fit_downsample
        self.min_disparity = min_disparity

    def __call__(self, pred: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
        k = self.fit_downsample
        pred_fit, gt_fit = _subsample(pred, k), _subsample(gt_depth, k)
        positive = gt_fit > 0
        fit_mask = _subsample(valid, k).bool() & positive & (pred_fit > 0)
        gt_disparity = torch.where(positive, 1.0 / torch.where(positive, gt_fit, 1.0), 0.0)
        scale, shift = least_squares_scale_shift(pred_fit, gt_disparity, fit_mask)
        disparity = _per_image(scale, pred) * pred + _per_image(shift, pred)
        return 1.0 / disparity.clamp_min(self.min_disparity)
