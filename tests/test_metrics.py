"""Depth and normal metrics against hand-computed values, split/merge invariance, and real 2-rank DDP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lotus_pl.alignment import DepthAlignment, DisparityAlignment, NoAlignment
from lotus_pl.metrics import (
    DEPTH_METRIC_NAMES,
    NORMAL_METRIC_NAMES,
    DepthMetrics,
    NormalMetrics,
    angular_error_degrees,
)

F64 = torch.float64


def t(rows: list[list[float]]) -> torch.Tensor:
    """One 1-channel image [1, 1, H, W] from nested rows."""
    return torch.tensor(rows, dtype=F64)[None, None]


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


def assert_results_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=tol, abs=tol), key


# --- depth: hand-computed values ---------------------------------------------------------

# Four pixels, NoAlignment, nothing clipped (range 1e-3..80):
#   a: g=1, p=1 (ratio 1)       b: g=2, p=1 (ratio 2)
#   c: g=4, p=5 (ratio 1.25 exactly: NOT < 1.25)   d: g=4, p=2 (ratio 2)
HAND_GT = [[1.0, 2.0], [4.0, 4.0]]
HAND_PRED = [[1.0, 1.0], [5.0, 2.0]]
LN2, LN125 = math.log(2), math.log(1.25)
HAND_MEAN_D = (-2 * LN2 + LN125) / 4  # d = ln p - ln g = [0, -ln 2, ln 1.25, -ln 2]
HAND_MEAN_D2 = (2 * LN2**2 + LN125**2) / 4
HAND_EXPECTED = {
    "abs_rel": (0 + 1 / 2 + 1 / 4 + 2 / 4) / 4,  # 0.3125
    "sq_rel": (0 + 1 / 2 + 1 / 4 + 4 / 4) / 4,  # 0.4375
    "rmse": math.sqrt((0 + 1 + 1 + 4) / 4),  # sqrt(1.5)
    "rmse_log": math.sqrt(HAND_MEAN_D2),
    "log10": (2 * math.log10(2) + math.log10(1.25)) / 4,
    "delta1": 1 / 4,  # only a; c sits exactly on 1.25
    "delta2": 2 / 4,  # a, c (1.25 < 1.5625); the ratio-2 pixels not
    "delta3": 2 / 4,  # 2 is not < 1.953125
    "i_rmse": math.sqrt((0 + 0.5**2 + 0.05**2 + 0.25**2) / 4),  # 1/p - 1/g = [0, .5, -.05, .25]
    "silog": 100 * math.sqrt(HAND_MEAN_D2 - HAND_MEAN_D**2),
}


def test_depth_metrics_by_hand() -> None:
    metric = DepthMetrics(alignment=NoAlignment())
    metric.update(t(HAND_PRED), t(HAND_GT))
    result = as_floats(metric.compute())
    assert list(result) == list(DEPTH_METRIC_NAMES)
    for key, value in HAND_EXPECTED.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert (metric.num_images, metric.num_skipped) == (1, 0)


def test_delta_is_strict_at_exactly_1_25() -> None:
    # g = 4, p = 5: ratio exactly 1.25 -> delta1 = 0; g = 5, p = 4: same from below.
    for p, g in ((5.0, 4.0), (4.0, 5.0)):
        metric = DepthMetrics(alignment=NoAlignment())
        metric.update(t([[p]]), t([[g]]))
        result = metric.compute()
        assert float(result["delta1"]) == 0.0
        assert float(result["delta2"]) == 1.0


def test_extra_valid_mask() -> None:
    # Masking out pixel d leaves a, b, c: abs_rel = (0 + 1/2 + 1/4) / 3, delta1 = 1/3.
    metric = DepthMetrics(alignment=NoAlignment())
    metric.update(t(HAND_PRED), t(HAND_GT), valid_mask=t([[1, 1], [1, 0]]).bool())
    result = as_floats(metric.compute())
    assert result["abs_rel"] == pytest.approx(0.25)
    assert result["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert result["delta1"] == pytest.approx(1 / 3)


def test_dataset_range_masks_gt_and_clips_pred() -> None:
    # Range (1, 10): gt 0.5 and gt 10 are invalid (strict bounds); the valid pixels are
    # g=2 with p=20 -> clipped to 10, and g=5 with p=0.1 -> clipped to 1.
    metric = DepthMetrics(alignment=NoAlignment(), min_depth=1.0, max_depth=10.0)
    metric.update(t([[3.0, 20.0], [0.1, 7.0]]), t([[0.5, 2.0], [5.0, 10.0]]))
    result = as_floats(metric.compute())
    assert result["abs_rel"] == pytest.approx((8 / 2 + 4 / 5) / 2)  # 2.4
    assert result["rmse"] == pytest.approx(math.sqrt((64 + 16) / 2))
    assert result["delta3"] == 0.0  # ratios 5 and 5


def test_disparity_alignment_output_is_clipped_to_range() -> None:
    # Fit on the first three pixels: s = 1/2, t = 0 (see test_alignment). The fourth,
    # pred = -1, aligns to depth 1/1e-3 = 1000 and is clipped to max_depth = 80.
    metric = DepthMetrics(alignment=DisparityAlignment(), min_depth=1e-3, max_depth=80.0)
    metric.update(t([[2, 1], [0.5, -1]]), t([[1, 2], [4, 40]]))
    result = as_floats(metric.compute())
    assert result["abs_rel"] == pytest.approx((80 - 40) / 40 / 4)  # 0.25
    assert result["rmse"] == pytest.approx(math.sqrt(40**2 / 4))  # 20
    assert result["delta1"] == pytest.approx(3 / 4)


def test_images_are_averaged_not_pixels() -> None:
    # Image 1 is the hand example (abs_rel 0.3125); image 2 is perfect but has 9 pixels.
    metric = DepthMetrics(alignment=NoAlignment())
    metric.update(t(HAND_PRED), t(HAND_GT))
    perfect = torch.full((1, 1, 3, 3), 3.0, dtype=F64)
    metric.update(perfect, perfect)
    result = as_floats(metric.compute())
    assert result["abs_rel"] == pytest.approx(0.3125 / 2)
    assert result["delta1"] == pytest.approx((0.25 + 1) / 2)
    assert metric.num_images == 2


@pytest.mark.parametrize("alignment", [NoAlignment(), DepthAlignment(), DisparityAlignment()])
def test_empty_image_is_skipped_without_nan(alignment) -> None:
    gt = torch.cat([t(HAND_GT), torch.zeros(1, 1, 2, 2, dtype=F64)])  # image 2: no measurement
    pred = torch.cat([t(HAND_PRED), torch.ones(1, 1, 2, 2, dtype=F64)])
    both = DepthMetrics(alignment=alignment)
    both.update(pred, gt)
    alone = DepthMetrics(alignment=alignment)
    alone.update(pred[:1], gt[:1])
    assert_results_close(both.compute(), alone.compute())
    assert (both.num_images, both.num_skipped) == (1, 1)


def test_only_empty_images_give_zeros() -> None:
    metric = DepthMetrics()
    metric.update(torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    metric.update(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3), valid_mask=torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    result = as_floats(metric.compute())
    assert all(v == 0.0 for v in result.values())
    assert (metric.num_images, metric.num_skipped) == (0, 3)


def random_depth(num: int, h: int = 10, w: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random gt in (0.5, 20) with holes, and a noisy affine disparity prediction, float32."""
    g = torch.Generator().manual_seed(seed)
    gt = 0.5 + 19.5 * torch.rand(num, 1, h, w, generator=g)
    gt[torch.rand(num, 1, h, w, generator=g) < 0.2] = 0.0
    pred = 2.0 / gt.clamp_min(0.5) + 0.3 + 0.05 * torch.randn(num, 1, h, w, generator=g)
    return pred, gt


@pytest.mark.parametrize(
    "alignment, make_pred",
    [
        (DepthAlignment(), lambda gt: 0.4 * gt + 1.5),
        (DisparityAlignment(), lambda gt: 0.4 / gt + 1.5),
    ],
)
def test_exact_affine_predictions_score_perfectly(alignment, make_pred) -> None:
    gt = 0.5 + torch.rand(3, 1, 8, 8, dtype=F64) * 10
    metric = DepthMetrics(alignment=alignment)
    metric.update(make_pred(gt), gt)
    result = as_floats(metric.compute())
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "i_rmse"):
        assert result[key] == pytest.approx(0.0, abs=1e-9), key
    assert result["silog"] == pytest.approx(0.0, abs=1e-5)  # sqrt of a difference at rounding level
    assert result["delta1"] == 1.0


def test_depth_split_and_merge_invariance() -> None:
    pred, gt = random_depth(7)
    gt[3] = 0.0  # one empty image
    whole = DepthMetrics()
    whole.update(pred, gt)
    expected = whole.compute()

    split = DepthMetrics()
    for lo, hi in ((0, 1), (1, 4), (4, 7)):
        split.update(pred[lo:hi], gt[lo:hi])
    assert_results_close(split.compute(), expected)

    # What DDP does: each "rank" sees a disjoint part; states are summed.
    first, second = DepthMetrics(), DepthMetrics()
    first.update(pred[::2], gt[::2])
    second.update(pred[1::2], gt[1::2])
    first.merge_state(second)
    assert_results_close(first.compute(), expected)
    assert (first.num_images, first.num_skipped) == (6, 1)

    manual_a, manual_b, manual = DepthMetrics(), DepthMetrics(), DepthMetrics()
    manual_a.update(pred[:2], gt[:2])
    manual_b.update(pred[2:], gt[2:])
    manual.update(pred[:0], gt[:0])  # an empty batch changes nothing (and marks it updated)
    assert int(manual.count) == int(manual.skipped) == 0
    for name in ("sums", "count", "skipped"):
        setattr(manual, name, getattr(manual_a, name) + getattr(manual_b, name))
    assert_results_close(manual.compute(), expected)


def test_depth_shape_checks() -> None:
    metric = DepthMetrics()
    with pytest.raises(ValueError):
        metric.update(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError):
        metric.update(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError):
        DepthMetrics(min_depth=5.0, max_depth=1.0)


# --- normals ------------------------------------------------------------------------------


def normals_at_angles(degrees: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A [1, 3, 1, N] pred/gt pair whose per-pixel angles are ``degrees`` (gt = +z, pred tilted in x-z)."""
    theta = torch.deg2rad(torch.tensor(degrees, dtype=F64))
    pred = torch.stack([torch.sin(theta), torch.zeros_like(theta), torch.cos(theta)])[None, :, None, :]
    gt = torch.zeros_like(pred)
    gt[:, 2] = 1.0
    return pred, gt


def test_angular_error_by_hand() -> None:
    pred = torch.tensor([[1.0, 0, 0], [1, 1, 0], [2, 0, 0], [-1, 0, 0], [1, math.sqrt(3), 0]])
    gt = torch.tensor([[0.0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    errors = angular_error_degrees(pred, gt, dim=1)
    torch.testing.assert_close(errors, torch.tensor([90.0, 45, 0, 180, 60], dtype=F64), atol=1e-6, rtol=0)
    # Default dim=1 is the channel axis of [B, 3, H, W].
    image_err = angular_error_degrees(pred.T[None, :, None, :], gt.T[None, :, None, :])
    assert image_err.shape == (1, 1, 5)
    torch.testing.assert_close(image_err.flatten(), errors)


def test_normal_metrics_by_hand_thresholds_exact() -> None:
    angles = [1.0, 6.0, 7.4, 10.0, 12.0, 25.0, 29.0, 45.0]
    pred, gt = normals_at_angles(angles)
    metric = NormalMetrics()
    metric.update(3.0 * pred, gt)  # pred need not be unit length
    result = as_floats(metric.compute())
    assert list(result) == list(NORMAL_METRIC_NAMES)
    assert result["mean"] == pytest.approx(sum(angles) / 8, abs=1e-9)
    assert result["rmse"] == pytest.approx(math.sqrt(sum(a * a for a in angles) / 8), abs=1e-9)
    assert result["median"] == pytest.approx((10.0 + 12.0) / 2, abs=0.01)
    assert result["a5"] == 1 / 8
    assert result["a7_5"] == 3 / 8
    assert result["a11_25"] == 4 / 8
    assert result["a22_5"] == 5 / 8
    assert result["a30"] == 7 / 8
    assert metric.num_pixels == 8


def test_normal_masks() -> None:
    # Pixel 0: error 90 but gt has zero norm -> invalid. Pixel 1: error 0 but masked out.
    # Pixels 2, 3: errors 10 and 20 remain.
    pred, gt = normals_at_angles([90.0, 0.0, 10.0, 20.0])
    gt[..., 0] = 0.0
    for mask in (torch.tensor([[[True, False, True, True]]]), torch.tensor([[[[True, False, True, True]]]])):
        metric = NormalMetrics()
        metric.update(pred, gt, valid_mask=mask)
        result = as_floats(metric.compute())
        assert result["mean"] == pytest.approx(15.0, abs=1e-9)
        assert result["median"] == pytest.approx(15.0, abs=0.01)
        assert metric.num_pixels == 2


def test_pixels_are_pooled_not_images() -> None:
    # Image A: one valid pixel at 90 deg. Image B: three pixels at 0 deg.
    # Pooled mean = 90 / 4 = 22.5 (a per-image mean would be (90 + 0) / 2 = 45); median 0.
    pred_a, gt_a = normals_at_angles([90.0, 0.0, 0.0])
    gt_a[..., 1:] = 0.0
    pred_b, gt_b = normals_at_angles([0.0, 0.0, 0.0])
    metric = NormalMetrics()
    metric.update(torch.cat([pred_a, pred_b]), torch.cat([gt_a, gt_b]))
    result = as_floats(metric.compute())
    assert result["mean"] == pytest.approx(22.5, abs=1e-9)
    assert result["mean"] != pytest.approx(45.0)
    assert result["median"] == pytest.approx(0.0, abs=0.01)
    assert result["a5"] == 0.75
    assert result["rmse"] == pytest.approx(math.sqrt(90**2 / 4), abs=1e-9)


def random_normals(num: int, h: int = 16, w: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit gt with ~10% invalid (zero) pixels and a noisy, non-unit float32 prediction."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.nn.functional.normalize(torch.randn(num, 3, h, w, generator=g), dim=1)
    gt = gt * (torch.rand(num, 1, h, w, generator=g) > 0.1)
    pred = gt + 0.4 * torch.randn(num, 3, h, w, generator=g)
    return pred, gt


@pytest.mark.parametrize("parity", [0, 1])
def test_median_matches_numpy(parity: int) -> None:
    # Even counts take numpy's mean of the two middle values, odd ones the middle value.
    pred, gt = random_normals(4, h=31, w=33)
    valid = torch.linalg.vector_norm(gt, dim=1) > 0
    if int(valid.sum()) % 2 != parity:
        b, y, x = valid.nonzero()[0].tolist()  # drop one valid pixel
        valid[b, y, x] = False
        gt[b, :, y, x] = 0.0
    errors = angular_error_degrees(pred, gt)[valid].numpy()
    assert errors.size % 2 == parity
    metric = NormalMetrics()
    metric.update(pred, gt)
    result = as_floats(metric.compute())
    assert metric.num_pixels == errors.size
    assert abs(result["median"] - float(np.median(errors))) <= 0.01
    assert result["mean"] == pytest.approx(float(errors.mean()), rel=1e-12)
    assert result["rmse"] == pytest.approx(float(np.sqrt((errors**2).mean())), rel=1e-12)
    for name, threshold in zip(NORMAL_METRIC_NAMES[3:], (5, 7.5, 11.25, 22.5, 30)):
        assert result[name] == np.count_nonzero(errors < threshold) / errors.size, name


def test_normal_split_and_merge_invariance() -> None:
    pred, gt = random_normals(6)
    whole = NormalMetrics()
    whole.update(pred, gt)
    expected = whole.compute()

    split = NormalMetrics()
    for lo, hi in ((0, 1), (1, 4), (4, 6)):
        split.update(pred[lo:hi], gt[lo:hi])
    assert_results_close(split.compute(), expected)

    first, second = NormalMetrics(), NormalMetrics()
    first.update(pred[::2], gt[::2])
    second.update(pred[1::2], gt[1::2])
    first.merge_state(second)
    assert_results_close(first.compute(), expected)
    assert first.num_pixels == whole.num_pixels


def test_no_normals_give_zeros() -> None:
    metric = NormalMetrics()
    metric.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    result = as_floats(metric.compute())
    assert all(v == 0.0 for v in result.values())
    assert metric.num_pixels == 0


# --- real DDP: 2 CPU ranks over gloo --------------------------------------------------------

DDP_DEPTH_IMAGES = 5  # odd: the ranks get 3 and 2 images
DDP_NORMAL_IMAGES = 5


def ddp_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    depth_pred, depth_gt = random_depth(DDP_DEPTH_IMAGES, seed=1)
    depth_gt[2] = 0.0  # an empty image, lands on rank 0
    return (depth_pred, depth_gt), random_normals(DDP_NORMAL_IMAGES, seed=2)


def single_process_results() -> dict[str, dict[str, float]]:
    (depth_pred, depth_gt), (normal_pred, normal_gt) = ddp_data()
    depth, normal = DepthMetrics(), NormalMetrics()
    depth.update(depth_pred, depth_gt)
    normal.update(normal_pred, normal_gt)
    out = {"depth": as_floats(depth.compute()), "normal": as_floats(normal.compute())}
    out["counts"] = {"num_images": depth.num_images, "num_skipped": depth.num_skipped, "num_pixels": normal.num_pixels}
    return out


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        (depth_pred, depth_gt), (normal_pred, normal_gt) = ddp_data()
        depth, normal = DepthMetrics(), NormalMetrics()
        # A DistributedSampler-like disjoint shard, fed one image per update.
        for i in range(rank, DDP_DEPTH_IMAGES, world_size):
            depth.update(depth_pred[i : i + 1], depth_gt[i : i + 1])
        for i in range(rank, DDP_NORMAL_IMAGES, world_size):
            normal.update(normal_pred[i : i + 1], normal_gt[i : i + 1])
        out = {"depth": as_floats(depth.compute()), "normal": as_floats(normal.compute())}
        out["counts"] = {
            "num_images": depth.num_images,
            "num_skipped": depth.num_skipped,
            "num_pixels": normal.num_pixels,
        }
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_equals_single_process(tmp_path: Path) -> None:
    expected = single_process_results()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["counts"] == expected["counts"]
        assert expected["counts"]["num_skipped"] == 1
        for group in ("depth", "normal"):
            for key, value in expected[group].items():
                # Exact up to the order in which float64 sums are added.
                assert got[group][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (rank, group, key)
        for key in ("median", "a5", "a7_5", "a11_25", "a22_5", "a30"):
            assert got["normal"][key] == expected["normal"][key]  # from integer counts: exact
