"""Colour maps for depth and normals, without a plotting library."""

from __future__ import annotations

import torch
from torch import Tensor

# Anchor colours of a perceptually ordered dark-to-bright map (close to "magma"), sampled evenly.
_ANCHORS = torch.tensor([
    [0.001, 0.000, 0.014], [0.112, 0.065, 0.277], [0.316, 0.071, 0.485], [0.512, 0.128, 0.506],
    [0.716, 0.215, 0.475], [0.904, 0.323, 0.388], [0.986, 0.535, 0.382], [0.996, 0.765, 0.544],
    [0.987, 0.991, 0.750],
])


def colorize(values: Tensor, valid: Tensor | None = None, low: float | None = None, high: float | None = None) -> Tensor:
    """Map ``[B, 1, H, W]`` scalars to ``[B, 3, H, W]`` RGB in [0, 1]; invalid pixels black.

    The range is per image (1st-99th percentile of valid pixels) unless ``low``/``high`` are given.
    """
    out = torch.zeros(values.shape[0], 3, *values.shape[-2:], device=values.device)
    anchors = _ANCHORS.to(values.device)
    for i, v in enumerate(values[:, 0].float()):
        mask = torch.isfinite(v) if valid is None else valid[i, 0] & torch.isfinite(v)
        if not mask.any():
            continue
        sel = v[mask]
        lo = torch.quantile(sel, 0.01) if low is None else torch.tensor(low)
        hi = torch.quantile(sel, 0.99) if high is None else torch.tensor(high)
        x = ((v - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).nan_to_num(0) * (len(anchors) - 1)
        i0 = x.floor().long().clamp(max=len(anchors) - 2)
        w = (x - i0).unsqueeze(-1)
        rgb = anchors[i0] * (1 - w) + anchors[i0 + 1] * w
        out[i] = (rgb * mask.unsqueeze(-1)).permute(2, 0, 1)
    return out


def normals_to_rgb(normals: Tensor) -> Tensor:
    """``[B, 3, H, W]`` unit normals to RGB in [0, 1], the usual ``(n + 1) / 2``; zero vectors black."""
    valid = normals.norm(dim=1, keepdim=True) > 0.5
    return ((normals + 1) / 2).clamp(0, 1) * valid
