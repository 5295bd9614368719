"""Temporal consistency of depth predicted on a video: how much it changes from frame to frame.

Relative depth is defined per frame up to a scale and a shift in its space (depth or disparity), so
each frame is first aligned to the previous one by least squares; what changes beyond that is
flicker, plus the scene's true motion. Per pair of consecutive frames ``t - 1, t``::

    change_t = mean |s_t * d_t + b_t - d_(t-1)| / (max d_(t-1) - min d_(t-1))

with ``(s_t, b_t)`` the least-squares fit of ``d_t`` onto ``d_(t-1)``. The figure is the mean over
pairs: unitless (a fraction of the depth range), 0 for frames that differ only by scale and shift.
It compares models or settings on the same video; it is not an error against ground truth.

Predictions are aligned in the space they are in (affine-invariant there), and that space is
recorded with the figure: the same video's figures in disparity and in depth are not comparable.
:class:`TemporalConsistencyMeter` computes the figure online, one frame at a time at a bounded size,
so a video of any length needs the memory of one small frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lotus_pl.alignment import least_squares_scale_shift
from lotus_pl.data.images import processing_size

SPACES = ("depth", "disparity")


def frame_change(previous: Tensor, current: Tensor) -> float:
    """Mean absolute change of ``current`` aligned onto ``previous`` (both ``[H, W]``), over the
    previous frame's range; pixels not finite in either frame are left out."""
    if previous.shape != current.shape:
        raise ValueError(f"frames differ in size: {tuple(previous.shape)} then {tuple(current.shape)}")
    previous, current = previous.double(), current.double()
    valid = torch.isfinite(previous) & torch.isfinite(current)
    if not valid.any():
        return 0.0
    scale, shift = least_squares_scale_shift(current[None], previous[None], valid[None])
    aligned = scale * current + shift
    reference = previous[valid]
    depth_range = (reference.max() - reference.min()).clamp_min(1e-12)
    return float((aligned[valid] - reference).abs().mean() / depth_range)


class TemporalConsistencyMeter:
    """The figure of one sequence, fed frame by frame in order.

    Args:
        space: "depth" or "disparity", the space the predictions are in (recorded with the figure).
        max_size: frames are area-downsampled to this longest edge first (0: kept as they are), so
            that the figure costs little and does not depend much on the video's resolution.
    """

    def __init__(self, space: str, max_size: int = 256) -> None:
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.space, self.max_size = space, max_size
        self.changes: list[float] = []
        self.frames: list[int] = []
        self._previous: Tensor | None = None

    def update(self, depth: Tensor, frame: int | None = None) -> None:
        """Add the next frame's ``[H, W]`` (or ``[1, H, W]``) prediction; ``frame`` is its index in the
        video (default: one after the last) and must increase."""
        frame = (self.frames[-1] + 1 if self.frames else 0) if frame is None else int(frame)
        if self.frames and frame <= self.frames[-1]:
            raise ValueError(f"frames must come in order: frame {frame} after frame {self.frames[-1]}")
        depth = depth.detach().reshape(depth.shape[-2:])
        depth = depth if depth.is_floating_point() else depth.float()
        if self.max_size and max(depth.shape) > self.max_size:
            size = processing_size(tuple(depth.shape), self.max_size)
            depth = F.interpolate(depth[None, None], size=size, mode="area")[0, 0]
        depth = depth.cpu()
        if self._previous is not None:
            self.changes.append(frame_change(self._previous, depth))
        self._previous = depth
        self.frames.append(frame)

    def compute(self) -> dict[str, Any]:
        """The figure (``mean_change``; None with fewer than two frames), its worst pair and every pair's."""
        return {
            "mean_change": sum(self.changes) / len(self.changes) if self.changes else None,
            "max_change": max(self.changes) if self.changes else None,
            "space": self.space,
            "frames": len(self.frames),
            "first_frame": self.frames[0] if self.frames else None,
            "last_frame": self.frames[-1] if self.frames else None,
            "per_pair": self.changes,
            "definition": f"mean over consecutive frames of mean |aligned change| / range of relative {self.space}, "
                          "each frame least-squares aligned (scale, shift) to the previous one",
        }


def temporal_consistency(depths: Iterable[Tensor], space: str = "disparity", max_size: int = 0) -> float:
    """Mean frame-to-frame change of the aligned relative predictions ``depths`` (each ``[H, W]``, in
    order), as a fraction of the depth range; 0 for a sequence of a single frame."""
    meter = TemporalConsistencyMeter(space, max_size)
    for depth in depths:
        meter.update(torch.as_tensor(depth))
    return meter.compute()["mean_change"] or 0.0
