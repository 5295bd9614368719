"""Tasks: target encodings computed by hand, decoding, masks, flips and outputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lotus_pl.tasks import Depth, Normal, NormalizedDepth, NormalizedDisparity
from lotus_pl.tasks.normal import hflip_normals


def test_trunc_disparity_by_hand():
    # Depths 1, 2, 4, 5 m plus one invalid pixel; disparities 1, .5, .25, .2.
    depth = torch.tensor([[[[1.0, 2.0], [4.0, 5.0]]]])
    encoding = NormalizedDisparity(low_quantile=0.0, high_quantile=1.0)
    out = encoding.encode(depth, depth > 0)
    expected = (torch.tensor([1.0, 0.5, 0.25, 0.2]) - 0.2) / 0.8 * 2 - 1
    torch.testing.assert_close(out.flatten(), expected)


def test_trunc_depth_quantiles_clip_and_invalid_is_far():
    depth = torch.arange(1, 102, dtype=torch.float32).reshape(1, 1, 1, 101)
    depth[..., 0] = 0  # invalid
    valid = depth > 0
    out = NormalizedDepth(0.02, 0.98).encode(depth, valid)
    values = depth[valid]
    q2, q98 = torch.quantile(values, 0.02), torch.quantile(values, 0.98)
    expected = ((values - q2) / (q98 - q2) * 2 - 1).clamp(-1, 1)
    torch.testing.assert_close(out[valid], expected)
    assert out[..., 0].item() == 1.0  # invalid -> far (+1 in depth space)
    assert out.min() == -1 and out.max() == 1
    disparity = NormalizedDisparity().encode(depth, valid)
    assert disparity[..., 0].item() == -1.0  # far in disparity space


def test_depth_task_masks_encode_decode():
    task = Depth(min_depth=0.5, max_depth=10.0)
    gt = torch.tensor([[[[0.0, 0.4, 2.0], [5.0, float("nan"), 11.0]]]])
    assert task.valid_mask(gt).flatten().tolist() == [False, False, True, True, False, False]
    encoded = task.encode(torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]]), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert encoded.shape == (1, 3, 2, 2) and torch.equal(encoded[:, 0], encoded[:, 2])
    decoded = task.decode(torch.tensor([[[[-1.0]], [[0.0]], [[1.0]]]]) * torch.ones(1, 3, 1, 1))
    assert decoded.shape == (1, 1, 1, 1) and decoded.item() == pytest.approx(0.5)


def test_normal_encoding_flip_and_decoding():
    task = Normal()
    gt = torch.zeros(1, 3, 1, 2)
    gt[0, :, 0, 0] = torch.tensor([0.0, 0.0, 2.0])  # non-unit: normalised by encode
    valid = task.valid_mask(gt)
    assert valid.flatten().tolist() == [True, False]
    enc = task.encode(gt, valid)
    torch.testing.assert_close(enc[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(enc[0, :, 0, 1], torch.zeros(3))
    n = torch.zeros(3, 1, 2)
    n[:, 0, 0] = torch.tensor([-1.0, 0.0, 0.0])  # faces image-right, at the left pixel
    flipped = hflip_normals(n)
    torch.testing.assert_close(flipped[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))  # now faces left, at the right pixel
    decoded = task.decode(torch.tensor([3.0, 0.0, 4.0]).reshape(1, 3, 1, 1))
    torch.testing.assert_close(decoded.flatten(), torch.tensor([0.6, 0.0, 0.8]))
    resized = task.resize_for(torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1), (7, 5))
    torch.testing.assert_close(resized.norm(dim=1), torch.ones(1, 7, 5))


def test_depth_and_normal_outputs(tmp_path):
    pred = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    files = Depth().save(pred, tmp_path, "img")
    png = np.asarray(Image.open(files[0]))
    assert png.dtype == np.uint16 and png.shape == (3, 4)
    np.testing.assert_allclose(png / 65535, pred[0], atol=1 / 65535)
    np.testing.assert_array_equal(np.load(files[1]), pred[0])  # H×W float32
    assert np.asarray(Image.open(files[2])).shape == (3, 4, 3)
    assert json.loads(files[3].read_text())["space"] == "disparity"
    normal = np.zeros((3, 2, 2), dtype=np.float32)
    normal[2] = 1
    files = Normal().save(normal, tmp_path, "img")
    assert np.asarray(Image.open(files[0]))[0, 0].tolist() == [128, 128, 255]
    np.testing.assert_array_equal(np.load(files[1]), normal)
