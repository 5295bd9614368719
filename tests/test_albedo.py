"""The albedo task: its scale-invariant metrics against hand-computed values, the annotation round
trip, masks, outputs, and the renderer's albedo as exact ground truth (rgb = albedo × shading)."""

import numpy as np
import pytest
import torch
from PIL import Image

from lotus_pl.tasks import Albedo
from lotus_pl.tasks.albedo import AlbedoMetrics


def signed(x: torch.Tensor) -> torch.Tensor:
    """Reflectance in [0, 1] -> the pipeline's [-1, 1] ground truth."""
    return x * 2 - 1


def test_scaled_prediction_has_zero_scale_invariant_error_but_not_zero_mse():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 24, 24, generator=gen) * 0.8 + 0.1
    metric = AlbedoMetrics(window=8)
    metric.update(gt * 0.5, signed(gt))  # half as bright: the same albedo up to scale
    out = metric.compute()
    assert out["si_mse"] < 1e-12 and out["lmse"] < 1e-12
    torch.testing.assert_close(out["mse"], (0.25 * gt**2).mean().double())


def test_values_match_hand_computation():
    gt = torch.tensor([0.2, 0.4, 0.6, 0.8]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2).clone()
    pred = torch.tensor([0.5, 0.5, 0.5, 0.5]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2).clone()
    metric = AlbedoMetrics(window=2)
    metric.update(pred, signed(gt))
    out = metric.compute()
    g, p = gt[0, 0].flatten().double(), pred[0, 0].flatten().double()
    a = (g * p).sum() / (p * p).sum()  # best scale: 1.0
    expected_si = ((g - a * p) ** 2).mean()  # 0.05
    torch.testing.assert_close(out["si_mse"], expected_si)
    torch.testing.assert_close(out["mse"], ((g - p) ** 2).mean())
    # one 2×2 window = the whole image: residual over the error of predicting black
    torch.testing.assert_close(out["lmse"], ((g - a * p) ** 2).sum() / (g * g).sum())


def test_lmse_is_local_and_si_mse_global():
    """Two halves lit differently: one global scale cannot fit, local windows can."""
    gt = torch.full((1, 3, 16, 16), 0.5)
    pred = gt.clone()
    pred[..., 8:] *= 0.25  # right half darker, e.g. a shadow baked into the albedo
    metric = AlbedoMetrics(window=8)
    metric.update(pred, signed(gt))
    out = metric.compute()
    assert out["si_mse"] > 1e-3  # a single scale cannot explain both halves
    assert out["lmse"] < out["si_mse"] / (0.5 ** 2)  # windows inside one half are fitted exactly


def test_masks_and_empty_images():
    gt = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    pred = gt.clone()
    pred[0, :, :4] = 0.0  # wrong only where masked out
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    mask[0, :, :4] = False
    mask[1] = False  # an image without valid pixels is skipped, not NaN
    metric = AlbedoMetrics(window=4)
    metric.update(pred, signed(gt), mask)
    out = metric.compute()
    assert metric.count == 1 and metric.skipped == 1
    assert all(float(v) < 1e-10 for v in out.values())
    with pytest.raises(ValueError, match="valid_mask"):
        metric.update(pred, signed(gt), mask[:, :, :4])


def test_metric_states_sum_across_updates_like_ddp_shards():
    gen = torch.Generator().manual_seed(1)
    gt, pred = torch.rand(4, 3, 12, 12, generator=gen), torch.rand(4, 3, 12, 12, generator=gen)
    whole, parts = AlbedoMetrics(window=6), [AlbedoMetrics(window=6), AlbedoMetrics(window=6)]
    whole.update(pred, signed(gt))
    parts[0].update(pred[:1], signed(gt[:1]))
    parts[1].update(pred[1:], signed(gt[1:]))
    merged = AlbedoMetrics(window=6)
    for part in parts:  # the DDP sum reduction of the states
        merged.merge_state(part)
    for name, value in whole.compute().items():
        torch.testing.assert_close(merged.compute()[name], value)


def test_task_round_trip_masks_and_outputs(tmp_path):
    task = Albedo()
    albedo = torch.rand(1, 3, 6, 5) * 0.9 + 0.05
    albedo[..., 0, 0] = 0.0  # no surface
    gt = signed(albedo)
    valid = task.valid_mask(gt)
    assert not valid[0, 0, 0, 0] and valid.sum() == 29
    encoded = task.encode(gt, valid)
    assert encoded.shape == (1, 3, 6, 5) and encoded.abs().max() <= 1
    torch.testing.assert_close(task.decode(encoded)[..., 1:, :], albedo[..., 1:, :])
    paths = task.save(task.decode(encoded)[0].numpy(), tmp_path, "x")
    png, npy = np.asarray(Image.open(paths[0])), np.load(paths[1])
    assert png.shape == (6, 5, 3) and png.dtype == np.uint8 and npy.shape == (3, 6, 5) and npy.dtype == np.float32
    assert np.abs(png / 255.0 - npy.transpose(1, 2, 0)).max() <= 0.5 / 255 + 1e-6


def test_renderer_albedo_explains_the_image_up_to_shading():
    """The exact ground truth the task learns: rgb / albedo is one grey shading value per pixel."""
    from lotus_pl.data.renderer import render_random

    view = render_random(3, 48, 48)
    rgb = view.rgb / 255.0
    lit = (view.albedo > 0.2).all(-1) & (rgb < 0.99).all(-1) & (rgb > 0.05).all(-1)
    shading = rgb[lit] / view.albedo[lit]
    assert lit.sum() > 500
    # the same factor on R, G and B, up to the 8-bit rounding of rgb (0.5 / 255 / 0.2 per channel)
    assert np.abs(shading - shading.mean(-1, keepdims=True)).max() < 0.02


def test_the_task_guide_shows_the_real_code():
    """docs/new_task.md quotes the Albedo class verbatim; it cannot drift from the source."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block = (root / "docs" / "new_task.md").read_text().split("```python\n")[1].split("```")[0]
    assert "class Albedo(Task)" in block and block.strip() in (root / "lotus_pl" / "tasks" / "albedo.py").read_text()
