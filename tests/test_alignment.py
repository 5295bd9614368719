"""Per-image scale/shift alignment, checked against fits worked out by hand."""

from __future__ import annotations

import pytest
import torch

from lotus_pl.alignment import (
    Alignment,
    DepthAlignment,
    DisparityAlignment,
    NoAlignment,
    least_squares_scale_shift,
)

F64 = torch.float64


def t(rows: list[list[float]]) -> torch.Tensor:
    """One 1-channel image [1, 1, H, W] from nested rows."""
    return torch.tensor(rows, dtype=F64)[None, None]


def smooth_depth(batch: int = 2, h: int = 12, w: int = 18) -> torch.Tensor:
    """A smooth positive depth field (ramps plus a gentle wave), different per image."""
    y = torch.linspace(0, 1, h, dtype=F64)[:, None]
    x = torch.linspace(0, 1, w, dtype=F64)[None, :]
    images = [2.0 + 3.0 * y + (1.0 + b) * x + 0.5 * torch.sin(3 * x + 2 * y + b) for b in range(batch)]
    return torch.stack(images)[:, None]


# --- least squares --------------------------------------------------------------------


def test_exact_affine_2x2() -> None:
    # target = 2 * pred + 1 exactly.
    scale, shift = least_squares_scale_shift(t([[1, 2], [3, 4]]), t([[3, 5], [7, 9]]), None)
    torch.testing.assert_close(scale, torch.tensor([2.0], dtype=F64))
    torch.testing.assert_close(shift, torch.tensor([1.0], dtype=F64))


def test_inexact_fit_by_hand_with_mask() -> None:
    # Valid x = [0, 1, 2], y = [0, 1, 1]: mean x = 1, mean y = 2/3,
    # cov = (-1)(-2/3) + 0 + (1)(1/3) = 1, var = 2, so s = 1/2, t = 2/3 - 1/2 = 1/6.
    # The masked pixel holds garbage (and an inf target) that must not leak in.
    pred = t([[0, 1], [2, 99]])
    target = t([[0, 1], [1, float("inf")]])
    mask = t([[1, 1], [1, 0]]).bool()
    scale, shift = least_squares_scale_shift(pred, target, mask)
    torch.testing.assert_close(scale, torch.tensor([0.5], dtype=F64))
    torch.testing.assert_close(shift, torch.tensor([1 / 6], dtype=F64))


def test_batched_and_shapes() -> None:
    # Two images fitted independently; [B, H, W] and [B, 1, H, W] agree.
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [2.0, 3.0]]], dtype=F64)
    target = torch.stack([2 * pred[0] + 1, -3 * pred[1] + 0.5])
    scale, shift = least_squares_scale_shift(pred, target, torch.ones_like(pred, dtype=torch.bool))
    torch.testing.assert_close(scale, torch.tensor([2.0, -3.0], dtype=F64))
    torch.testing.assert_close(shift, torch.tensor([1.0, 0.5], dtype=F64))
    scale4, shift4 = least_squares_scale_shift(pred[:, None], target[:, None], None)
    torch.testing.assert_close(scale4, scale)
    torch.testing.assert_close(shift4, shift)


def test_float32_in_float32_out() -> None:
    pred = t([[1, 2], [3, 4]]).float()
    scale, shift = least_squares_scale_shift(pred, 2 * pred + 1, None)
    assert scale.dtype == shift.dtype == torch.float32
    torch.testing.assert_close(scale, torch.tensor([2.0]))
    torch.testing.assert_close(shift, torch.tensor([1.0]))


def test_degenerate_images_are_finite() -> None:
    # 0 valid pixels -> identity; 1 valid pixel -> (0, y); constant prediction -> (0, mean y).
    pred = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]], [[3.0, 3.0]]], dtype=F64)
    target = torch.tensor([[[5.0, 7.0]], [[5.0, 7.0]], [[4.0, 6.0]]], dtype=F64)
    mask = torch.tensor([[[False, False]], [[True, False]], [[True, True]]])
    scale, shift = least_squares_scale_shift(pred, target, mask)
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(shift, torch.tensor([0.0, 5.0, 5.0], dtype=F64))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        least_squares_scale_shift(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), None)
    with pytest.raises(ValueError):
        least_squares_scale_shift(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 4, dtype=torch.bool))


# --- alignment classes ------------------------------------------------------------------


def test_no_alignment_is_identity() -> None:
    pred = smooth_depth()
    assert torch.equal(NoAlignment()(pred, pred * 7, torch.ones_like(pred, dtype=torch.bool)), pred)


def test_depth_alignment_by_hand() -> None:
    # Same numbers as test_inexact_fit_by_hand_with_mask: s = 1/2, t = 1/6, applied
    # to every pixel, the masked one included.
    pred = t([[0, 1], [2, 99]])
    gt = t([[0, 1], [1, 0]])
    valid = t([[1, 1], [1, 0]]).bool()
    expected = t([[1 / 6, 0.5 + 1 / 6], [1 + 1 / 6, 49.5 + 1 / 6]])
    torch.testing.assert_close(DepthAlignment()(pred, gt, valid), expected)


def test_depth_alignment_recovers_affine_depth() -> None:
    gt = smooth_depth()
    pred = torch.stack([0.3 * gt[0] - 0.2, 2.5 * gt[1] + 4.0])  # pred = a * gt + b per image
    valid = torch.ones_like(gt, dtype=torch.bool)
    torch.testing.assert_close(DepthAlignment()(pred, gt, valid), gt)


def test_disparity_alignment_by_hand() -> None:
    # Valid gt = [1, 2, 4] -> disparity [1, 0.5, 0.25]; pred = [2, 1, 0.5], so s = 1/2, t = 0.
    # The gt = 0 pixel is excluded from the fit; its pred 7 maps to disparity 3.5, depth 2/7.
    pred = t([[2, 1], [0.5, 7]])
    gt = t([[1, 2], [4, 0]])
    valid = gt > 0
    torch.testing.assert_close(DisparityAlignment()(pred, gt, valid), t([[1, 2], [4, 2 / 7]]))


def test_disparity_alignment_excludes_nonpositive_pred_and_clips() -> None:
    # The pixel with pred = -1 has valid gt, but a negative disparity has no depth: it is
    # left out of the fit (s = 1/2, t = 0 as above) and its aligned disparity -0.5 is
    # clipped to min_disparity, giving depth 1 / min_disparity.
    pred = t([[2, 1], [0.5, -1]])
    gt = t([[1, 2], [4, 3]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    out = DisparityAlignment(min_disparity=1e-3)(pred, gt, valid)
    torch.testing.assert_close(out, t([[1, 2], [4, 1000]]))
    out = DisparityAlignment(min_disparity=0.01)(pred, gt, valid)
    torch.testing.assert_close(out, t([[1, 2], [4, 100]]))


def test_disparity_alignment_recovers_affine_disparity() -> None:
    gt = smooth_depth()
    pred = torch.stack([0.7 / gt[0] + 0.05, 3.0 / gt[1] + 1.5])  # pred = a / gt + b per image
    gt_with_holes = gt.clone()
    gt_with_holes[:, :, ::5, ::7] = 0.0  # no measurement: excluded, and no inf/NaN may leak
    valid = gt_with_holes > 0
    torch.testing.assert_close(DisparityAlignment()(pred, gt_with_holes, valid), gt)


def test_disparity_alignment_empty_image_is_finite() -> None:
    pred = smooth_depth(batch=1)
    gt = torch.zeros_like(pred)
    out = DisparityAlignment()(pred, gt, gt > 0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_fit_downsample_same_on_smooth_exact_data(factor: int) -> None:
    gt = smooth_depth(h=31, w=40)
    valid = torch.ones_like(gt, dtype=torch.bool)
    depth_pred = 1.7 * gt + 0.4
    disp_pred = 0.9 / gt + 0.2
    for alignment_cls, pred in ((DepthAlignment, depth_pred), (DisparityAlignment, disp_pred)):
        full = alignment_cls()(pred, gt, valid)
        reduced = alignment_cls(fit_downsample=factor)(pred, gt, valid)
        assert reduced.shape == gt.shape
        torch.testing.assert_close(reduced, full)
        torch.testing.assert_close(reduced, gt)


def test_fit_downsample_uses_only_the_subsampled_pixels() -> None:
    # Pixels on the stride-2 grid follow pred = 2 * gt + 1, the rest are garbage: the
    # factor-2 fit sees only the former and recovers gt there exactly.
    gt = smooth_depth(h=8, w=10)
    pred = torch.full_like(gt, 50.0)
    pred[..., ::2, ::2] = 2 * gt[..., ::2, ::2] + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    out = DepthAlignment(fit_downsample=2)(pred, gt, valid)
    torch.testing.assert_close(out[..., ::2, ::2], gt[..., ::2, ::2])
    torch.testing.assert_close(out[..., 1, 1], torch.full_like(out[..., 1, 1], 24.5))  # (50 - 1) / 2


def test_shared_interface_and_validation() -> None:
    for alignment in (NoAlignment(), DepthAlignment(2), DisparityAlignment(3, 0.01)):
        assert isinstance(alignment, Alignment)
    assert repr(DisparityAlignment(3, 0.01)) == "DisparityAlignment(fit_downsample=3, min_disparity=0.01)"
    with pytest.raises(ValueError):
        DepthAlignment(fit_downsample=0)
    with pytest.raises(ValueError):
        DisparityAlignment(min_disparity=0.0)
