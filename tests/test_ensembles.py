"""Ensembles and uncertainty: reductions (identical members -> zero spread; affinely distorted members
align back to the original), the sparsification metric (hand-computed curve, oracle AUSE = 0,
constant uncertainty = random), test-time flips of normals, the model's ensemble path (seeds,
chunking, refusals), the files predict writes and the reconstruct confidence filter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lotus_pl.callbacks import PredictionWriter
from lotus_pl.ensembles import (
    AngularPixelErrors,
    DepthPixelErrors,
    Ensemble,
    HorizontalFlip,
    Mean,
    MeanAlign,
    Median,
    MedianAlign,
    PixelErrors,
    Rescale,
    SparsificationMetrics,
    SphereMean,
)
from lotus_pl.ensembles.confidence import confident_pixels
from lotus_pl.ensembles.sparsification import sparsification_curve
from lotus_pl.formulations import Generative
from lotus_pl.reconstruct import reconstruct
from lotus_pl.tasks import Depth, Normal

from test_model import make_model


def unit_range_depth(seed: int = 0, size=(20, 24)) -> torch.Tensor:
    """A smooth ``[1, H, W]`` relative disparity spanning exactly [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    d = F.interpolate(torch.rand(1, 1, 5, 6, generator=gen), size=size, mode="bilinear", align_corners=False)[0]
    return (d - d.min()) / (d.max() - d.min())


@pytest.mark.parametrize("reduction", [MedianAlign(), MeanAlign(), Mean(), Median()], ids=repr)
def test_identical_members_give_zero_uncertainty(reduction):
    d = unit_range_depth(size=(8, 10))
    members = d.expand(3, 2, 1, *d.shape[-2:]).clone()  # 3 members, a batch of 2
    pred, spread = reduction(members)
    assert pred.shape == (2, 1, *d.shape[-2:]) and spread.shape == (2, 1, *d.shape[-2:])
    torch.testing.assert_close(pred, members[0], atol=1e-5, rtol=0)
    assert spread.abs().max() < 1e-6


def test_identical_normals_give_zero_angular_spread():
    n = F.normalize(torch.randn(1, 3, 8, 9, generator=torch.Generator().manual_seed(1)), dim=1)
    pred, spread = SphereMean()(n.expand(4, 1, 3, 8, 9).clone())
    torch.testing.assert_close(pred, n, atol=1e-6, rtol=0)
    assert spread.abs().max() < 0.05  # degrees: float32 acos of a cosine at 1 - 1e-7


@pytest.mark.parametrize("reduction", [MedianAlign(), MeanAlign()], ids=repr)
def test_members_differing_by_known_affine_maps_align_and_combine_to_the_original(reduction):
    d = unit_range_depth(seed=3, size=(10, 12))
    scales, shifts = [0.5, 2.0, 0.8, 1.7, 1.3], [0.3, -0.4, 0.1, 0.25, -0.2]
    members = torch.stack([s * d + t for s, t in zip(scales, shifts)])[:, None]  # [5, 1, 1, H, W]
    pred, spread = reduction(members)
    torch.testing.assert_close(pred[0], d, atol=1e-4, rtol=0)
    assert spread.abs().max() < 1e-4
    # the alignment is what did it: the plain median of the unaligned members is far from the original
    assert (Median()(members)[0][0] - d).abs().mean() > 0.03


def test_noisy_members_spread_tracks_the_noise():
    d = unit_range_depth(seed=4)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 1, 1, *d.shape[-2:], generator=gen) * 0.02
    noise[..., :10, :] *= 5  # the top half is 5x noisier
    pred, spread = MeanAlign()(d + noise)
    assert spread[0, 0, :10].mean() > 3 * spread[0, 0, 10:].mean()
    assert (pred[0] - d).abs().mean() < 0.03


class AbsoluteError(PixelErrors):
    """|pred - gt| per pixel, for hand-computed curves."""

    names = ("abs",)
    root = (False,)

    def __call__(self, pred, gt, valid):
        ok = torch.ones_like(gt[:, 0], dtype=torch.bool) if valid is None else valid[:, 0].bool()
        return (pred - gt).abs().double(), ok


def test_sparsification_curve_by_hand():
    # errors 1, 2, 3, 4; the uncertainty ranks them in reverse (the worst ranking there is)
    metric = SparsificationMetrics(AbsoluteError(), steps=2)
    gt = torch.zeros(1, 1, 1, 4)
    metric.update(torch.tensor([[[[1.0, 2, 3, 4]]]]), gt, None, torch.tensor([[[[4.0, 3, 2, 1]]]]))
    curves = metric.curves()["abs"]
    torch.testing.assert_close(curves["curve"], torch.tensor([2.5, 3.5], dtype=torch.float64))  # drop 50 %: keep 3, 4
    torch.testing.assert_close(curves["oracle"], torch.tensor([2.5, 1.5], dtype=torch.float64))  # keep 1, 2
    result = metric.compute()
    assert result["ause_abs"].item() == pytest.approx(0.5 * (0 + 2) / 2)  # trapezoid over f = 0, 0.5
    assert result["aurg_abs"].item() == pytest.approx(0.5 * (0 - 1) / 2)  # worse than random


def test_ties_are_broken_in_expectation():
    errors = torch.tensor([1.0, 2.0, 3.0, 10.0])
    flat = sparsification_curve(errors, torch.zeros(4), steps=4)
    torch.testing.assert_close(flat, torch.full((4,), 4.0, dtype=torch.float64))  # constant = random: flat
    # two tied groups: {1, 2} sure, {3, 10} unsure; dropping 1 pixel keeps 1, 2 and half of 3 + 10 in expectation
    grouped = sparsification_curve(errors, torch.tensor([0.0, 0.0, 1.0, 1.0]), steps=4)
    torch.testing.assert_close(grouped, torch.tensor([4.0, (3 + 6.5) / 3, 1.5, 1.5], dtype=torch.float64))


def depth_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(3, 1, 16, 20, generator=gen) * 5 + 1
    gt[0, 0, :3] = 0  # invalid pixels
    pred = 1 / gt.clamp_min(1) + torch.rand(3, 1, 16, 20, generator=gen) * 0.3  # relative disparity, noisy
    return pred, gt


def test_oracle_ause_is_zero_and_constant_uncertainty_is_random():
    pred, gt = depth_batch()
    errors = DepthPixelErrors()
    per_pixel, _ = errors(pred, gt, None)
    oracle = SparsificationMetrics(errors)
    oracle.update(pred, gt, None, per_pixel[:, :1].float())  # rank by the true AbsRel error
    result = oracle.compute()
    assert result["ause_abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    assert result["aurg_abs_rel"].item() > 0.01
    assert result["ause_rmse"].item() >= -1e-12 and result["ause_bad_delta1"].item() >= -1e-12
    constant = SparsificationMetrics(errors)
    constant.update(pred, gt, None, torch.zeros_like(pred))
    for name in errors.names:
        assert constant.compute()[f"aurg_{name}"].item() == pytest.approx(0.0, abs=1e-12)


def test_oracle_ause_is_zero_for_normals():
    gen = torch.Generator().manual_seed(2)
    gt = F.normalize(torch.randn(2, 3, 10, 12, generator=gen), dim=1)
    pred = F.normalize(gt + 0.3 * torch.randn(2, 3, 10, 12, generator=gen), dim=1)
    errors, _ = AngularPixelErrors()(pred, gt, None)
    metric = SparsificationMetrics(AngularPixelErrors())
    metric.update(pred, gt, None, errors.float())
    assert metric.compute()["ause_mean_angular"].item() == pytest.approx(0.0, abs=1e-9)


def test_the_uncertainty_must_match_the_batch():
    pred, gt = depth_batch()
    metric = SparsificationMetrics(DepthPixelErrors())
    with pytest.raises(ValueError, match=r"uncertainty must be \[B, 1, H, W\] = \[3, 1, 16, 20\]"):
        metric.update(pred, gt, None, torch.zeros(3, 16, 20))
    bad = torch.zeros_like(pred)
    bad[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="image 1 of the batch is not finite"):
        metric.update(pred, gt, None, bad)


def test_flip_tta_of_normals_negates_x():
    model = make_model(task=Normal(), ensemble=Ensemble(tta=[HorizontalFlip()])).eval()
    image = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    members = model.ensemble.members(model, image)["normal"]  # [plain, flipped view mapped back]
    model.ensemble = None
    plain, of_mirror = model.predict_all(image)["normal"], model.predict_all(image.flip(-1))["normal"]
    torch.testing.assert_close(members[0, 0], plain[0])
    w = image.shape[-1]
    for col in (0, 7, w - 1):  # pixel (r, c) of the image is (r, W-1-c) of its mirror, with x negated
        expected = of_mirror[0, :, :, w - 1 - col] * torch.tensor([-1.0, 1.0, 1.0])[:, None]
        torch.testing.assert_close(members[1, 0, :, :, col], expected)
    # depth has no direction: its mirror is only flipped back
    assert torch.equal(Depth().flip_horizontal(of_mirror[:, :1]), of_mirror[:, :1].flip(-1))


def test_ensemble_members_are_the_seeded_single_calls_whatever_the_chunking():
    model = make_model(formulation=Generative(pure_noise_at_terminal=True)).eval()
    image = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    singles = []
    for seed in (0, 1, 2):
        model.seed = seed
        singles.append(model.predict_all(image)["depth"])
    model.seed = 0
    one = Ensemble(size=1)
    model.ensemble = one
    out = model.predict_all(image)
    assert torch.equal(out["depth"], singles[0]) and torch.equal(out["depth_uncertainty"], torch.zeros_like(singles[0]))
    for chunk in (0, 2):
        model.ensemble = Ensemble(size=3, chunk_size=chunk)
        members = model.ensemble.members(model, image)["depth"]
        torch.testing.assert_close(members, torch.stack(singles), atol=1e-5, rtol=0)
    model.ensemble = Ensemble(size=3, tta=[HorizontalFlip(), Rescale([16])])
    assert model.ensemble.num_members == 9
    out = model.predict_all(image)
    assert out["depth"].shape == (2, 1, 24, 32) and out["depth_uncertainty"].shape == (2, 1, 24, 32)
    assert (out["depth_uncertainty"] > 0).float().mean() > 0.5  # different seeds and views disagree


def test_impossible_ensembles_are_refused():
    with pytest.raises(ValueError, match="Lotus-D.*members would be identical"):
        make_model(ensemble=Ensemble(size=4))
    with pytest.raises(ValueError, match="tiled inference"):
        make_model(ensemble=Ensemble(tta=[HorizontalFlip()]), tile_size=32, processing_resolution=16)
    with pytest.raises(ValueError, match=r"reductions for \['normal'\].*tasks are \['depth'\]"):
        make_model(ensemble=Ensemble(tta=[HorizontalFlip()], reductions={"normal": SphereMean()}))
    with pytest.raises(ValueError, match="positive sizes"):
        Rescale([])


def test_validation_scores_the_uncertainty():
    model = make_model(ensemble=Ensemble(tta=[HorizontalFlip(), Rescale([12])])).eval()
    pred, gt = depth_batch(1)
    batch = {"image": torch.rand(3, 3, 16, 20) * 2 - 1, "depth": gt}
    model._evaluate_batch(batch)
    result = model.uncertainty_metrics["depth"].compute()
    assert set(result) == {f"{k}_{n}" for k in ("ause", "aurg") for n in ("abs_rel", "rmse", "bad_delta1")}
    assert model.uncertainty_metrics["depth"].num_images == 3


def test_normal_ensembles_are_combined_on_the_sphere_and_scored():
    model = make_model(task=Normal(), formulation=Generative(pure_noise_at_terminal=True), ensemble=Ensemble(size=3)).eval()
    gt = F.normalize(torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(3)), dim=1)
    preds = model._evaluate_batch({"image": torch.rand(2, 3, 16, 20) * 2 - 1, "normal": gt})
    torch.testing.assert_close(preds["normal"].norm(dim=1), torch.ones(2, 16, 20))
    spread = preds["normal_uncertainty"]
    assert spread.shape == (2, 1, 16, 20) and (spread >= 0).all() and (spread <= 180).all() and spread.max() > 0
    assert set(model.uncertainty_metrics["normal"].compute()) == {"ause_mean_angular", "aurg_mean_angular"}


def test_predict_writes_the_uncertainty_files(tmp_path):
    model = make_model(formulation=Generative(pure_noise_at_terminal=True), ensemble=Ensemble(size=3)).eval()
    image = torch.rand(1, 3, 16, 20) * 2 - 1
    prediction = {"path": ["photos/cat.jpg"], **model.predict_all(image)}
    batch = {"size": torch.tensor([[32, 40]])}  # the original was 2x larger
    PredictionWriter(str(tmp_path)).on_predict_batch_end(None, model, prediction, batch, 0)
    spread = np.load(tmp_path / "cat_depth_uncertainty.npy")
    assert spread.shape == (32, 40) and spread.dtype == np.float32 and spread.max() > 0
    assert (tmp_path / "cat_depth_uncertainty.png").is_file() and (tmp_path / "cat_depth.npy").is_file()


def test_reconstruct_drops_the_least_confident_pixels(tmp_path, capsys):
    d = unit_range_depth(size=(12, 16))[0].numpy() * 0.8 + 0.1
    np.save(tmp_path / "room_depth.npy", d.astype(np.float32))
    (tmp_path / "room_depth.json").write_text(json.dumps({"space": "disparity"}))
    spread = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    np.save(tmp_path / "room_depth_uncertainty.npy", spread)
    full = reconstruct(str(tmp_path), output_dir=str(tmp_path / "all"))[0]["points"]
    half = reconstruct(str(tmp_path), output_dir=str(tmp_path / "half"), confidence_quantile=0.5)[0]
    assert full == 192 and half["points"] == 96 and "kept 50.0% of pixels" in half["depth"]
    assert reconstruct(str(tmp_path), output_dir=str(tmp_path / "t"), max_uncertainty=9.5)[0]["points"] == 10
    (tmp_path / "room_depth_uncertainty.npy").unlink()
    with pytest.raises(FileNotFoundError, match="room_depth_uncertainty.npy is missing"):
        reconstruct(str(tmp_path), output_dir=str(tmp_path / "x"), confidence_quantile=0.5)
    assert confident_pixels(np.array([1.0, np.nan, 3.0]), threshold=5).tolist() == [True, False, True]


def test_median_of_a_pair_is_their_midpoint_with_half_their_difference():
    d = unit_range_depth(seed=5, size=(8, 10))
    other = (d + 0.1 * torch.sin(torch.arange(10.0)))  # another shape, not an affine copy
    pred, spread = MedianAlign()(torch.stack([d, other])[:, None])
    mean_pred, std = MeanAlign()(torch.stack([d, other])[:, None])
    torch.testing.assert_close(pred, mean_pred)
    torch.testing.assert_close(spread, std / 2**0.5)
    assert spread.mean() > 0.005
