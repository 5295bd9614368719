"""Depth maps to 3D: intrinsics, back-projection, metric scale, sparse depth and meshes.

Conventions (the same everywhere in this module and in ``lotus_pl reconstruct``'s files):

* **Frame.** Points are in the OpenCV camera frame: origin at the camera centre, x image-right,
  y image-down, z forward along the optical axis, in metres. This is *not* the frame of lotus_pl's
  normal predictions (x image-left, y up, z toward the camera, :mod:`lotus_pl.tasks.normal`),
  which is the OpenCV frame negated; :func:`normals_to_opencv` converts them so that normals and
  points share one frame. Viewers with a y-up convention show these clouds upside down.
* **Pixels.** Pixel ``(u, v)`` (column, row) covers ``[u, u + 1) x [v, v + 1)`` and has its centre
  at ``(u + 0.5, v + 0.5)``, as in lotus_pl's renderer: its ray is
  ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``, and a centred principal point is
  ``cx = W / 2``. (OpenCV calibrations put pixel centres at integers: add 0.5 to their cx, cy.)
* **Depth** is planar (the z coordinate), not the distance along the ray, like lotus_pl's data.
* **Scale.** Lotus depth predictions are affine-invariant: values in [0, 1] in disparity or depth
  space (``<stem>_depth.json``'s ``space``), metric only up to an unknown scale and shift. Either
  fit both to a few metric points (:func:`align_to_sparse`, e.g. LiDAR) or map the prediction onto
  a guessed depth range (:func:`relative_to_depth`). Invalid or dropped pixels are NaN.

The PLY / OBJ writers and readers live in :mod:`lotus_pl.geometry.meshio` (plyfile, trimesh) and are re-exported here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from lotus_pl.alignment import least_squares_scale_shift
from lotus_pl.geometry.meshio import GeometryData, as_uint8_colors, read_obj, read_ply, write_obj, write_ply

__all__ = [
    "FRAME_COMMENT", "SPACES", "SPARSE_SUFFIXES", "GeometryData", "Intrinsics", "Mesh", "SparseFit",
    "align_to_sparse", "backproject", "fit_sparse", "mesh_from_depth", "normals_to_opencv", "point_map",
    "read_obj", "read_ply", "read_sparse_depth", "relative_to_depth", "valid_depth", "write_obj", "write_ply",
]

log = logging.getLogger(__name__)

SPACES = ("disparity", "depth")
#: One line describing the frame, for file headers.
FRAME_COMMENT = "frame: OpenCV camera (x right, y down, z forward), metres, pixel centres at u+0.5"


# --------------------------------------------------------------------------- #
# Camera
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (pixel centres at ``u + 0.5``, see the module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.fx, self.fy, self.cx, self.cy)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics need finite values and fx, fy > 0, got {self}")

    @classmethod
    def from_fov(cls, width: int, height: int, fov_degrees: float, axis: str = "horizontal") -> Intrinsics:
        """Square pixels, centred principal point, and the given field of view across ``axis``
        ("horizontal": the image width, "vertical": its height, "diagonal")."""
        if not 0 < fov_degrees < 180:
            raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
        spans = {"horizontal": width, "vertical": height, "diagonal": math.hypot(width, height)}
        if axis not in spans:
            raise ValueError(f"axis must be one of {sorted(spans)}, got {axis!r}")
        focal = (spans[axis] / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)
        return cls(focal, focal, width / 2.0, height / 2.0)

    def resized(self, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> Intrinsics:
        """The same camera for the image resized from ``from_shape`` to ``to_shape`` (both (H, W)).
        With pixel centres at ``u + 0.5`` every image coordinate scales by the size ratio."""
        sy, sx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def rays(self, height: int, width: int) -> np.ndarray:
        """``[H, W, 3]`` float64 ray directions through the pixel centres, with z = 1."""
        rays = np.ones((height, width, 3))
        rays[..., 0] = ((np.arange(width) + 0.5 - self.cx) / self.fx)[None, :]
        rays[..., 1] = ((np.arange(height) + 0.5 - self.cy) / self.fy)[:, None]
        return rays


def _depth_map(depth: np.ndarray | torch.Tensor, name: str = "depth") -> np.ndarray:
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"{name} must be a [H, W] map, got shape {depth.shape}")
    return depth


def valid_depth(depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``[H, W]`` bool: finite, positive depth (inside ``mask`` when given)."""
    depth = _depth_map(depth)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth.shape:
            raise ValueError(f"mask {mask.shape} and depth {depth.shape} differ in shape")
        valid &= mask
    return valid


def point_map(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """``[H, W, 3]`` float32 camera-frame point of every pixel (NaN or garbage where depth is invalid)."""
    depth = _depth_map(depth)
    return (intrinsics.rays(*depth.shape) * depth[..., None]).astype(np.float32)


def backproject(depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None) -> np.ndarray:
    """``[N, 3]`` float32 points of the valid pixels (:func:`valid_depth`), in row-major pixel order,
    so ``colors[valid_depth(depth, mask)]`` lines up with them."""
    return point_map(depth, intrinsics)[valid_depth(depth, mask)]


def normals_to_opencv(normal: np.ndarray) -> np.ndarray:
    """A lotus_pl normal prediction ``[3, H, W]`` (x left, y up, z toward the camera) -> ``[H, W, 3]``
    float32 in the points' OpenCV frame: the project frame is the OpenCV frame negated."""
    normal = np.asarray(normal, dtype=np.float32)
    if normal.ndim != 3 or normal.shape[0] != 3:
        raise ValueError(f"normals must be [3, H, W], got shape {normal.shape}")
    return -normal.transpose(1, 2, 0)


# --------------------------------------------------------------------------- #
# Relative -> metric depth
# --------------------------------------------------------------------------- #
def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")


def relative_to_depth(pred: np.ndarray, space: str, near: float, far: float) -> np.ndarray:
    """A guess without metric points: map the prediction's [0, 1] onto ``[near, far]`` metres.

    Disparity space: linear in ``1 / depth``, 0 -> ``1 / far`` and 1 -> ``1 / near``; depth space:
    linear in depth, 0 -> ``near`` and 1 -> ``far``. Values are clipped to [0, 1] first. Training
    normalises each image between its 2% and 98% quantiles, so ``near`` and ``far`` are best read
    as those quantiles of the scene's depth, not as its extremes.
    """
    _check_space(space)
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    p = np.clip(_depth_map(pred, "prediction"), 0.0, 1.0)
    if space == "disparity":
        return 1.0 / (1.0 / far + p * (1.0 / near - 1.0 / far))
    return near + p * (far - near)


@dataclass(frozen=True)
class SparseFit:
    """Scale and shift mapping a relative prediction onto metric sparse points, in its own space."""

    space: str
    scale: float
    shift: float
    num_points: int  # valid sparse points
    num_inliers: int  # points the final fit used
    abs_rel: float  # mean |aligned - sparse| / sparse over the inliers
    rmse: float  # metres, over the inliers

    def apply(self, pred: np.ndarray, mask: np.ndarray | None = None, max_depth: float | None = None) -> np.ndarray:
        """Metric depth ``[H, W]``, NaN outside ``mask`` and beyond ``max_depth``.

        A non-positive aligned value inside the area means no depth (depth space: behind the
        camera) or, in disparity space, farther than infinity (typically sky, which sparse sensors
        never see, extrapolated past zero). That raises, unless ``max_depth`` is given in disparity
        space: then those pixels are dropped together with everything beyond ``max_depth``.
        """
        pred = _depth_map(pred, "prediction")
        area = np.isfinite(pred) if mask is None else np.isfinite(pred) & np.asarray(mask, dtype=bool)
        value = self.scale * pred + self.shift
        bad = area & ~(value > 0)
        if bad.any() and not (self.space == "disparity" and max_depth is not None):
            hint = " (farther than infinity, e.g. sky): pass max_depth to drop far pixels, or a mask" \
                if self.space == "disparity" else ": pass a mask of the area the sparse points describe"
            raise ValueError(
                f"the sparse fit (scale {self.scale:.4g}, shift {self.shift:.4g} in {self.space}) gives non-positive "
                f"{self.space} on {int(bad.sum())} of {int(area.sum())} pixels ({bad.sum() / max(area.sum(), 1):.1%}){hint}"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = 1.0 / value if self.space == "disparity" else value
            keep = area & ~bad & ((depth <= max_depth) if max_depth is not None else True)
        return np.where(keep, depth, np.nan)


def fit_sparse(
    pred: np.ndarray,
    space: str,
    sparse_depth: np.ndarray,
    mask: np.ndarray | None = None,
    min_points: int = 10,
    robust: bool = True,
    iterations: int = 10,
    outlier_threshold: float = 3.0,
) -> SparseFit:
    """Least-squares scale and shift of ``pred`` onto the metric ``sparse_depth`` in ``space``.

    Disparity space fits ``s * pred + t ~ 1 / depth``, depth space ``s * pred + t ~ depth``
    (:func:`lotus_pl.alignment.least_squares_scale_shift`), over the pixels with finite, positive
    sparse depth (0 and NaN mean missing). ``robust`` refits up to ``iterations`` times on the points
    whose residual is within ``outlier_threshold`` robust standard deviations (1.4826 x the median
    absolute residual), so a few wrong LiDAR returns cannot pull the fit. Raises when fewer than
    ``min_points`` points are valid or when the fit inverts the prediction (scale <= 0).
    """
    _check_space(space)
    pred = _depth_map(pred, "prediction")
    sparse = _depth_map(sparse_depth, "sparse depth")
    if pred.shape != sparse.shape:
        raise ValueError(f"prediction {pred.shape} and sparse depth {sparse.shape} differ in size")
    if min_points < 2:
        raise ValueError(f"min_points must be >= 2 (a scale and a shift), got {min_points}")
    valid = valid_depth(sparse, mask) & np.isfinite(pred)
    num = int(valid.sum())
    if num < min_points:
        raise ValueError(f"only {num} valid sparse depth points (finite, > 0), need at least min_points={min_points}")
    x = torch.from_numpy(pred[valid])[None]
    y = torch.from_numpy(1.0 / sparse[valid] if space == "disparity" else sparse[valid])[None]

    def fit(inliers: np.ndarray) -> tuple[float, float]:
        scale, shift = least_squares_scale_shift(x, y, torch.from_numpy(inliers)[None])
        return float(scale), float(shift)

    inliers = np.ones(num, dtype=bool)
    scale, shift = fit(inliers)
    for _ in range(iterations if robust else 0):
        residual = np.abs(scale * x[0].numpy() + shift - y[0].numpy())
        sigma = 1.4826 * float(np.median(residual[inliers]))
        keep = residual <= max(outlier_threshold * sigma, 1e-9 * float(np.median(np.abs(y[0].numpy()))))
        if keep.sum() < min_points or np.array_equal(keep, inliers):
            break
        inliers = keep
        scale, shift = fit(inliers)
    if not scale > 0:
        raise ValueError(f"the sparse fit inverts the prediction (scale {scale:.4g} in {space}): the sparse depth does "
                         f"not follow the prediction; is the space ({space}) right, and are the points registered to the image?")
    value = scale * x[0].numpy()[inliers] + shift
    truth = sparse[valid][inliers]
    with np.errstate(divide="ignore"):
        aligned = np.where(value > 0, 1.0 / value, np.inf) if space == "disparity" else value
    return SparseFit(space, scale, shift, num, int(inliers.sum()), float(np.mean(np.abs(aligned - truth) / truth)),
                     float(np.sqrt(np.mean((aligned - truth) ** 2))))


def align_to_sparse(
    pred: np.ndarray,
    space: str,
    sparse_depth: np.ndarray,
    mask: np.ndarray | None = None,
    min_points: int = 10,
    robust: bool = True,
    max_depth: float | None = None,
) -> np.ndarray:
    """Metric depth ``[H, W]`` from a relative prediction and sparse metric points:
    :func:`fit_sparse` then :meth:`SparseFit.apply` (which explains ``mask`` and ``max_depth``)."""
    return fit_sparse(pred, space, sparse_depth, mask, min_points, robust).apply(pred, mask, max_depth)


# --------------------------------------------------------------------------- #
# Sparse depth files
# --------------------------------------------------------------------------- #
SPARSE_SUFFIXES = {".npy", ".png", ".txt", ".csv"}


def read_sparse_depth(path: str | Path, shape: tuple[int, int] | None = None, png_scale: float = 256.0) -> np.ndarray:
    """Sparse metric depth as a ``[H, W]`` float32 map with NaN where there is no point.

    * ``.npy``: a ``[H, W]`` array in metres; 0, negative and NaN values are missing.
    * ``.png``: 16-bit, metres = value / ``png_scale`` (KITTI's 256 by default); 0 is missing.
    * ``.txt`` / ``.csv``: rows ``u v depth`` (whitespace- or comma-separated, ``#`` comments, one
      header line allowed): column and row in pixels of the ``shape = (H, W)`` grid, which must be
      given. Fractional coordinates are floored (pixel ``u`` covers ``[u, u + 1)``); points outside
      the image are dropped (and counted in the log); several points on one pixel keep the nearest.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"sparse depth file {path} does not exist")
    if suffix == ".npy":
        depth = np.load(path).astype(np.float32)
        if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[-1]):
            depth = depth.reshape(depth.shape[-2:] if depth.shape[0] == 1 else depth.shape[:2])
        if depth.ndim != 2:
            raise ValueError(f"{path}: a sparse depth .npy must be [H, W], got shape {depth.shape}")
    elif suffix == ".png":
        with Image.open(path) as img:
            if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path}: sparse depth PNGs must be 16-bit (value / {png_scale} = metres), got mode {img.mode}")
            depth = np.asarray(img, dtype=np.float32) / png_scale
    elif suffix in (".txt", ".csv"):
        if shape is None:
            raise ValueError(f"{path}: a text file of 'u v depth' rows needs the image shape (H, W)")
        depth = _rasterize(_read_rows(path), path, shape)
    else:
        raise ValueError(f"{path}: sparse depth must be one of {sorted(SPARSE_SUFFIXES)}, got {suffix!r}")
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)


def _read_rows(path: Path) -> np.ndarray:
    delimiter = "," if path.suffix.lower() == ".csv" else None
    for skip in (0, 1):  # one header line such as "u,v,depth" is allowed
        try:
            rows = np.loadtxt(path, delimiter=delimiter, comments="#", skiprows=skip, ndmin=2, dtype=np.float64)
            break
        except ValueError as exc:
            error = exc
    else:
        raise ValueError(f"{path}: cannot read 'u v depth' rows ({error})")
    if rows.size and rows.shape[1] < 3:
        raise ValueError(f"{path}: rows need 3 columns 'u v depth', got {rows.shape[1]}")
    return rows.reshape(-1, rows.shape[1] if rows.size else 3)


def _rasterize(rows: np.ndarray, path: Path, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    u, v, depth = np.floor(rows[:, 0]), np.floor(rows[:, 1]), rows[:, 2]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & np.isfinite(depth) & (depth > 0)
    if (~inside).any():
        log.info("%s: %d of %d points outside the %dx%d image or without positive depth, dropped",
                 path, int((~inside).sum()), len(rows), width, height)
    nearest = np.full(height * width, np.inf)
    np.minimum.at(nearest, (v[inside] * width + u[inside]).astype(np.int64), depth[inside])
    return np.where(np.isfinite(nearest), nearest, 0.0).reshape(height, width).astype(np.float32)


# --------------------------------------------------------------------------- #
# Meshes
# --------------------------------------------------------------------------- #
class Mesh(NamedTuple):
    """A depth map's triangle mesh. The vertices are exactly :func:`backproject`'s points (one per
    valid pixel, row-major), so per-pixel attributes index them with the same valid mask."""

    vertices: np.ndarray  # [N, 3] float32
    faces: np.ndarray  # [F, 3] int32, counter-clockwise seen from the camera (normals face it)
    colors: np.ndarray | None  # [N, 3] uint8


def mesh_from_depth(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    mask: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    max_depth_ratio: float | None = 1.1,
) -> Mesh:
    """Triangulate the pixel grid: two triangles per 2x2 block of valid pixels.

    A triangle whose largest vertex depth exceeds ``max_depth_ratio`` times its smallest spans a
    depth discontinuity (an occlusion edge) and is dropped, as is any triangle touching an invalid
    pixel. The ratio ignores the global scale (not the shift: a range guess much wider than the
    scene's true near/far ratio cuts more). Surfaces seen at grazing angles (a road near the horizon) stretch across pixels
    too and are cut once neighbouring depths differ by more than the ratio; ``None`` keeps everything.
    ``colors``: ``[H, W, 3]`` uint8 or float in [0, 1].
    """
    depth = _depth_map(depth)
    if max_depth_ratio is not None and not max_depth_ratio >= 1:
        raise ValueError(f"max_depth_ratio must be >= 1 (or None), got {max_depth_ratio}")
    valid = valid_depth(depth, mask)
    index = np.full(depth.shape, -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    z = np.where(valid, depth, np.nan)
    corners = {  # (index, depth) of each corner of every 2x2 block
        "tl": (index[:-1, :-1], z[:-1, :-1]), "tr": (index[:-1, 1:], z[:-1, 1:]),
        "bl": (index[1:, :-1], z[1:, :-1]), "br": (index[1:, 1:], z[1:, 1:]),
    }
    faces = []
    for triangle in (("tl", "bl", "tr"), ("tr", "bl", "br")):
        ids = np.stack([corners[c][0] for c in triangle], axis=-1)
        zs = np.stack([corners[c][1] for c in triangle], axis=-1)
        keep = (ids >= 0).all(axis=-1)
        if max_depth_ratio is not None:
            with np.errstate(invalid="ignore"):
                keep &= zs.max(axis=-1) <= max_depth_ratio * zs.min(axis=-1)
        faces.append(ids[keep])
    vertices = point_map(depth, intrinsics)[valid]
    if colors is not None:
        colors = as_uint8_colors(colors)
        if colors.shape != (*depth.shape, 3):
            raise ValueError(f"colors must be [H, W, 3] = {(*depth.shape, 3)}, got {colors.shape}")
        colors = colors[valid]
    return Mesh(vertices, np.concatenate(faces).astype(np.int32), colors)
