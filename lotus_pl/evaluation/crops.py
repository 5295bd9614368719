"""The evaluation crops of the depth benchmarks, as boolean masks (written into shards as ``mask.png``).

* NYUv2, Eigen crop: rows 45..470 and columns 41..600 of the 480 × 640 image (the border where
  the Kinect depth was filled or is missing is not scored).
* KITTI, first the benchmark crop the images are cut to (352 × 1216: bottom rows, centred
  columns, as the KITTI depth benchmark), then the Eigen crop, given as fractions of the image
  height and width (Eigen et al. 2014 / Garg et al. 2016): rows 0.40810811..0.99189189,
  columns 0.03594771..0.96405229, each bound truncated to an integer.
"""

from __future__ import annotations

import numpy as np

NYU_SIZE = (480, 640)
NYU_EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right (bottom / right exclusive)
KITTI_BENCHMARK_SIZE = (352, 1216)
KITTI_EIGEN_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def box_mask(size: tuple[int, int], top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``[H, W]`` bool, true on rows ``top:bottom`` and columns ``left:right``."""
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def nyu_eigen_mask(size: tuple[int, int]) -> np.ndarray:
    """The Eigen crop of a 480 × 640 NYUv2 image (any other size is refused: the crop is in pixels)."""
    if tuple(size) != NYU_SIZE:
        raise ValueError(f"the NYUv2 Eigen crop is defined on {NYU_SIZE} images, got {tuple(size)}")
    return box_mask(NYU_SIZE, *NYU_EIGEN_CROP)


def kitti_benchmark_crop(size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the 352 × 1216 benchmark crop of a KITTI image of ``size``."""
    height, width = size
    crop_h, crop_w = KITTI_BENCHMARK_SIZE
    if height < crop_h or width < crop_w:
        raise ValueError(f"a KITTI image must be at least {KITTI_BENCHMARK_SIZE}, got {tuple(size)}")
    return height - crop_h, (width - crop_w) // 2


def kitti_eigen_mask(size: tuple[int, int]) -> np.ndarray:
    """The Eigen crop of a KITTI image of ``size`` (after the benchmark crop: 352 × 1216)."""
    height, width = size
    top, bottom, left, right = KITTI_EIGEN_FRACTIONS
    return box_mask(size, int(top * height), int(bottom * height), int(left * width), int(right * width))
