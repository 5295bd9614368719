"""Making affine-ambiguous depth predictions of several posed views consistent.

Lotus predicts each view's depth only up to a scale and a shift in the prediction's own space
(``disparity``: metric disparity ``D = s * p + t``, depth ``1 / D``; ``depth``: depth ``s * p + t``).
The aligners here find every view's ``(s, t)``; they are picked by ``class_path`` in ``lotus_pl fuse``:

* :class:`SparsePointAlignment`: each view alone, fitted robustly (:func:`fit_sparse`) to the
  sparse SfM points *observed in that view* (COLMAP's tracks say which), projected into it;
* :class:`JointAlignment`: no sparse points; all views at once from their mutual overlaps. A pixel
  of view i, lifted with i's depth and projected into view j, must land on j's surface:
  ``r = z_j(X_i) / d_j(x') - 1 = 0``. Robust Gauss-Newton / Levenberg-Marquardt over the 2K
  unknowns (analytic Jacobian through the bilinear lookup of ``p_j`` at ``x'``), trimming
  occlusions and discontinuities (residuals beyond 3 robust sigmas). The poses' translations fix
  the scale: metric poses give metric depth. ``gauge_view`` instead holds one view's ``(s, t)``
  at its initial values (e.g. when the translations' scale is not trusted);
* :class:`MetricDepth` (the inputs are metric already, e.g. ground truth) and :class:`RangeGuess`
  (each view mapped onto a guessed near/far range, no 3D information).

:func:`correspondences` and :func:`depth_consistency` are shared with the metrics: the latter is the
multi-view depth-consistency figure (median relative disagreement of aligned depths reprojected
between views, pooled over all view pairs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lotus_pl.geometry.cameras import CameraSet, PosedCamera
from lotus_pl.geometry.single_view import SPACES, fit_sparse

__all__ = [
    "Aligner", "AlignmentView", "JointAlignment", "MetricDepth", "RangeGuess", "SparsePointAlignment", "ViewAlignment",
    "apply_scale_shift", "correspondences", "depth_consistency", "sparse_depth_map",
]

log = logging.getLogger(__name__)


@dataclass
class AlignmentView:
    """One view to align: its relative prediction ``[H, W]`` (``space``: "disparity", "depth" or
    "metric" for metric depth), its camera at the prediction's size, and an optional valid mask."""

    pred: np.ndarray
    space: str
    camera: PosedCamera
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.space not in (*SPACES, "metric"):
            raise ValueError(f"view {self.camera.name!r}: space must be one of {(*SPACES, 'metric')}, got {self.space!r}")
        self.pred = np.asarray(self.pred, dtype=np.float64)
        if self.pred.shape != (self.camera.height, self.camera.width):
            raise ValueError(f"view {self.camera.name!r}: prediction is {self.pred.shape} but the camera is "
                             f"{self.camera.height}x{self.camera.width}; use camera.at_size()")

    @property
    def valid(self) -> np.ndarray:
        valid = np.isfinite(self.pred)
        if self.space == "metric":
            valid &= self.pred > 0
        return valid if self.mask is None else valid & np.asarray(self.mask, dtype=bool)


@dataclass
class ViewAlignment:
    """The per-view report: scale and shift in the prediction's space, how many points or
    correspondences the fit used and kept, and its residual (relative depth error, median)."""

    name: str
    space: str
    scale: float
    shift: float
    num_points: int
    num_inliers: int
    residual: float
    method: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def apply_scale_shift(view: AlignmentView, scale: float, shift: float, max_depth: float | None = None) -> np.ndarray:
    """Metric depth ``[H, W]`` of a view under ``(scale, shift)``, NaN where invalid, non-positive or beyond ``max_depth``."""
    value = view.pred if view.space == "metric" else scale * view.pred + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = 1.0 / value if view.space == "disparity" else value
        keep = view.valid & (value > 0) & np.isfinite(depth)
        if max_depth is not None:
            keep &= depth <= max_depth
    return np.where(keep, depth, np.nan)


# --------------------------------------------------------------------------- #
# Correspondences between views
# --------------------------------------------------------------------------- #
def _samples(view: AlignmentView, max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``[N, 2]`` of a regular sub-grid of the valid pixels, and their flat indices."""
    h, w = view.pred.shape
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_samples))))
    vv, uu = np.mgrid[stride // 2:h:stride, stride // 2:w:stride]
    flat = (vv * w + uu).ravel()
    flat = flat[view.valid.ravel()[flat]]
    return np.stack([flat % w + 0.5, flat // w + 0.5], axis=-1).astype(np.float64), flat


@dataclass
class _Correspondences:
    """Every sample of every ordered view pair ``(i, j)``, ``i != j``, as one row, the rows in pair
    order: view i's sample pixel lifted with i's depth ``d_i`` lands at ``Y = A + B * d_i`` in j's
    camera frame. Everything that does not depend on the scales and shifts is computed once here
    (rays, relative poses, j's intrinsics and its prediction stacked with the others'), so that one
    evaluation of all the residuals is a few dozen array operations over all pairs together,
    rather than per pair: the solver evaluates them hundreds of times."""

    pairs: list[tuple[int, int]]
    owner: np.ndarray  # [M] pair index of each row
    src: np.ndarray  # [M] view i
    dst: np.ndarray  # [M] view j
    cols: np.ndarray  # [M, 4] the unknowns a row depends on: s_i, t_i, s_j, t_j
    p_src: np.ndarray  # [M] i's prediction at the sample
    A: np.ndarray  # [M, 3] R_j^T (C_i - C_j)
    B: np.ndarray  # [M, 3] R_j^T R_i ray
    src_disparity: np.ndarray  # [M] whether i / j predict disparity (else depth)
    dst_disparity: np.ndarray
    fx: np.ndarray  # [M] j's intrinsics and size
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    width: np.ndarray
    height: np.ndarray
    base: np.ndarray  # [M] offset of j's image in the flat stacks
    row_stride: int  # width of the stacks
    values: np.ndarray  # flat stacked predictions [K * H * W], 0 where invalid
    valid: np.ndarray  # flat stacked validity


def _correspondences(views: list[AlignmentView], max_samples: int) -> _Correspondences:
    num = len(views)
    hmax, wmax = max(v.pred.shape[0] for v in views), max(v.pred.shape[1] for v in views)
    values, valid = np.zeros((num, hmax, wmax)), np.zeros((num, hmax, wmax), dtype=bool)
    for k, v in enumerate(views):
        h, w = v.pred.shape
        ok = v.valid
        valid[k, :h, :w], values[k, :h, :w] = ok, np.where(ok, v.pred, 0.0)
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("src", "dst", "p", "A", "B")}
    pairs = []
    for i, vi in enumerate(views):
        uv, flat = _samples(vi, max_samples)
        k = vi.camera.intrinsics
        rays = np.stack([(uv[:, 0] - k.cx) / k.fx, (uv[:, 1] - k.cy) / k.fy, np.ones(len(uv))], axis=-1)
        p_i = vi.pred.ravel()[flat]
        for j, vj in enumerate(views):
            if i == j:
                continue
            rj = vj.camera.rotation
            pairs.append((i, j))
            rows["src"].append(np.full(len(flat), i))
            rows["dst"].append(np.full(len(flat), j))
            rows["p"].append(p_i)
            rows["A"].append(np.broadcast_to(rj.T @ (vi.camera.center - vj.camera.center), (len(flat), 3)))
            rows["B"].append(rays @ (rj.T @ vi.camera.rotation).T)
    src, dst = np.concatenate(rows["src"]).astype(np.int64), np.concatenate(rows["dst"]).astype(np.int64)
    owner = np.repeat(np.arange(len(pairs)), [len(r) for r in rows["src"]])
    disparity = np.array([v.space == "disparity" for v in views])
    intr = np.array([[v.camera.intrinsics.fx, v.camera.intrinsics.fy, v.camera.intrinsics.cx, v.camera.intrinsics.cy]
                     for v in views], dtype=np.float64)
    sizes = np.array([v.pred.shape for v in views], dtype=np.int64)
    return _Correspondences(
        pairs, owner, src, dst, np.stack([2 * src, 2 * src + 1, 2 * dst, 2 * dst + 1], axis=1),
        np.concatenate(rows["p"]), np.concatenate(rows["A"]), np.concatenate(rows["B"]),
        disparity[src], disparity[dst], *(intr[dst, c] for c in range(4)), sizes[dst, 1], sizes[dst, 0],
        dst * hmax * wmax, wmax, values.ravel(), valid.ravel())


def _bilinear(c: _Correspondences, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear lookup of each row's target prediction at pixel coordinates ``(u, v)`` (centres at
    +0.5): value, d/du, d/dv and whether all four neighbours are valid and inside."""
    h, w = c.height, c.width
    x, y = u - 0.5, v - 0.5
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    x0 = np.clip(np.floor(np.where(inside, x, 0)).astype(np.int64), 0, np.maximum(w - 2, 0))
    y0 = np.clip(np.floor(np.where(inside, y, 0)).astype(np.int64), 0, np.maximum(h - 2, 0))
    a, b = np.where(inside, x - x0, 0.0), np.where(inside, y - y0, 0.0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top, bottom = c.base + y0 * c.row_stride, c.base + y1 * c.row_stride
    i00, i10, i01, i11 = top + x0, top + x1, bottom + x0, bottom + x1
    ok = inside & c.valid[i00] & c.valid[i10] & c.valid[i01] & c.valid[i11]
    p00, p10, p01, p11 = c.values[i00], c.values[i10], c.values[i01], c.values[i11]
    value = (1 - a) * (1 - b) * p00 + a * (1 - b) * p10 + (1 - a) * b * p01 + a * b * p11
    du = (1 - b) * (p10 - p00) + b * (p11 - p01)
    dv = (1 - a) * (p01 - p00) + a * (p11 - p10)
    return value, du, dv, ok


def _residuals(c: _Correspondences, theta: np.ndarray, jacobian: bool = True,
               prediction_units: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Relative residual ``z_j / d_j(x') - 1`` of every row (NaN where undefined) and, with
    ``jacobian``, its non-zero derivatives ``[M, 4]`` with respect to ``theta[c.cols]``.

    ``prediction_units``: the residual times ``(s_j p_j + t_j) / s_j``, to first order the
    disagreement in j's *prediction* (``p`` units) rather than in relative depth. A prediction error
    ``dp`` moves j's relative depth by ``s_j dp / (s_j p_j + t_j)``, which vanishes as a view is
    flattened (``t_j / s_j`` grows): in relative depth, inconsistent predictions agree best when
    every view is flat. In ``p`` units the same error stays ``dp`` whatever the fit, and exact
    inputs still give 0. Both are invariant to the global scale."""
    s, t = theta[0::2], theta[1::2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        value = s[c.src] * c.p_src + t[c.src]
        d_i = np.where(c.src_disparity, 1.0 / value, value)
        Y = c.A + c.B * d_i[:, None]
        z = Y[:, 2]
        u, v = c.fx * Y[:, 0] / z + c.cx, c.fy * Y[:, 1] / z + c.cy
    P, Pu, Pv, ok = _bilinear(c, u, v)
    sj = s[c.dst]
    D_j = sj * P + t[c.dst]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = np.where(c.dst_disparity, D_j, 1.0 / D_j)
        r = z * h - 1.0
    ok &= (d_i > 0) & (z > 0) & (D_j > 0) & np.isfinite(r)
    if prediction_units:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = D_j / sj  # = p_j(x') + t_j / s_j
            ok &= (sj > 0) & np.isfinite(q)
            weighted = r * q
    r_out = np.where(ok, weighted if prediction_units else r, np.nan)
    if not jacobian:
        return r_out, None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dd_dvalue = np.where(c.src_disparity, -1.0 / value**2, 1.0)
        dh = np.where(c.dst_disparity, 1.0, -1.0 / D_j**2)
        du_dd = c.fx * (c.B[:, 0] * z - Y[:, 0] * c.B[:, 2]) / z**2
        dv_dd = c.fy * (c.B[:, 1] * z - Y[:, 1] * c.B[:, 2]) / z**2
        dP_dd = Pu * du_dd + Pv * dv_dd  # the lookup moves with i's depth
        dr_dd = c.B[:, 2] * h + z * dh * sj * dP_dd
        J = np.stack([dr_dd * dd_dvalue * c.p_src, dr_dd * dd_dvalue, z * dh * P, z * dh], axis=1)
        if prediction_units:  # d(r q) = q dr + r dq, q = P(x'(d_i)) + t_j / s_j
            dq = np.stack([dP_dd * dd_dvalue * c.p_src, dP_dd * dd_dvalue, -t[c.dst] / sj**2, 1.0 / sj], axis=1)
            J = q[:, None] * J + r[:, None] * dq
    J[~ok] = 0.0
    return r_out, J


def _normal_equations(c: _Correspondences, r: np.ndarray, J: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``J^T J`` ``[2K, 2K]`` and ``J^T r`` of the selected rows, summed from each row's 4 non-zeros
    (never forming the dense ``[M, 2K]`` Jacobian, whose size grows with K^3)."""
    Jr, cols, rr = J[rows], c.cols[rows], r[rows]
    index = (cols[:, :, None] * size + cols[:, None, :]).ravel()
    H = np.bincount(index, weights=(Jr[:, :, None] * Jr[:, None, :]).ravel(), minlength=size * size)
    g = np.bincount(cols.ravel(), weights=(Jr * rr[:, None]).ravel(), minlength=size)
    return H.reshape(size, size), g


def correspondences(views: list[AlignmentView], theta: np.ndarray, max_samples: int = 4000) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Residual of every sample, its (source, target) pair index and the list of pairs, at ``theta``
    (``[2K]``: scale, shift per view). Residuals are NaN where a sample has no counterpart."""
    c = _correspondences(views, max_samples)
    r, _ = _residuals(c, theta, jacobian=False)
    return r, c.owner, c.pairs


def _depth_factor(views: list[AlignmentView], theta: np.ndarray, base: np.ndarray) -> float:
    """The median over views of the median ratio of the depth under ``theta`` to that under ``base``."""
    ratios = []
    for k, v in enumerate(views):
        p = v.pred[v.valid]
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = theta[2 * k] * p + theta[2 * k + 1], base[2 * k] * p + base[2 * k + 1]
            ratio = b / a if v.space == "disparity" else a / b  # depth = 1 / disparity
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        ratios.append(float(np.median(ratio)) if ratio.size else np.inf)
    return float(np.median(ratios))


def _log_range_ratio(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each view's ``log(far / near)`` under ``theta`` and its derivatives ``[K, 2]`` by ``(s, t)``.

    Both spaces put the far end (disparity) or the near end (depth) at ``p = 0``, so the ratio of
    the range's ends is ``(s + t) / t`` in either: disparity ``D_near / D_far``, depth
    ``d_far / d_near``. NaN where the view is inverted or its range crosses zero."""
    s, t = theta[0::2], theta[1::2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (s + t) / t
        value = np.where((t > 0) & (ratio > 0), np.log(ratio), np.nan)
        grad = np.stack([1.0 / (s + t), 1.0 / (s + t) - 1.0 / t], axis=1)
    return value, grad


def depth_consistency(views: list[AlignmentView], theta: np.ndarray | None = None, max_samples: int = 4000,
                      min_overlap: int = 20) -> float:
    """Multi-view depth consistency: the median of ``|z_j(X_i) / d_j(x') - 1|`` over every sample of
    every ordered view pair (pairs with at least ``min_overlap`` common samples); 0 for perfectly
    consistent depths. A point that view j sees occluded counts as disagreement, and the median
    over all pairs pooled keeps that (usually small) share from deciding the figure."""
    theta = theta if theta is not None else np.tile([1.0, 0.0], len(views))
    # compare in disparity, which is bilinear-exact on planes: metric depth d -> disparity 1/d
    as_disparity = []
    for k, v in enumerate(views):
        depth = apply_scale_shift(v, theta[2 * k], theta[2 * k + 1])
        as_disparity.append(AlignmentView(1.0 / depth, "disparity", v.camera, v.mask))
    r, owner, pairs = correspondences(as_disparity, np.tile([1.0, 0.0], len(views)), max_samples)
    pooled = []
    for values in np.split(np.abs(r), np.cumsum(np.bincount(owner, minlength=len(pairs)))[:-1]):  # rows in pair order
        values = values[np.isfinite(values)]
        if len(values) >= min_overlap:
            pooled.append(values)
    if not pooled:
        raise ValueError("no two views overlap: the depth consistency is undefined")
    return float(np.median(np.concatenate(pooled)))


# --------------------------------------------------------------------------- #
# Aligners
# --------------------------------------------------------------------------- #
class Aligner:
    """Finds each view's scale and shift; :meth:`align` returns one :class:`ViewAlignment` per view."""

    def align(self, views: list[AlignmentView], cameras: CameraSet) -> list[ViewAlignment]:
        raise NotImplementedError


class MetricDepth(Aligner):
    """The inputs are metric depth already (ground truth, or a metric model): nothing to fit."""

    def align(self, views: list[AlignmentView], cameras: CameraSet) -> list[ViewAlignment]:
        for v in views:
            if v.space != "metric":
                raise ValueError(f"view {v.camera.name!r}: MetricDepth needs metric depth, the prediction is relative {v.space}")
        return [ViewAlignment(v.camera.name, "metric", 1.0, 0.0, int(v.valid.sum()), int(v.valid.sum()), 0.0, "metric")
                for v in views]


@dataclass
class RangeGuess(Aligner):
    """Each view mapped onto a guessed ``near``..``far`` metre range (as ``lotus_pl reconstruct``
    without sparse points): no fit, no multi-view information."""

    near: float = 1.0
    far: float = 10.0

    def scale_shift(self, space: str) -> tuple[float, float]:
        if space == "disparity":
            return 1.0 / self.near - 1.0 / self.far, 1.0 / self.far
        return self.far - self.near, self.near

    def align(self, views: list[AlignmentView], cameras: CameraSet) -> list[ViewAlignment]:
        return [ViewAlignment(v.camera.name, v.space, *self.scale_shift(v.space), 0, 0, float("nan"), "range guess")
                for v in views]


def sparse_depth_map(camera: PosedCamera, points: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth of world ``points`` projected into ``camera`` (nearest per pixel, NaN elsewhere)."""
    uv, z = camera.project(points)
    u, v = np.floor(uv[:, 0]), np.floor(uv[:, 1])
    inside = (z > 0) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    nearest = np.full(camera.height * camera.width, np.inf)
    np.minimum.at(nearest, (v[inside] * camera.width + u[inside]).astype(np.int64), z[inside])
    return np.where(np.isfinite(nearest), nearest, np.nan).reshape(camera.height, camera.width)


@dataclass
class SparsePointAlignment(Aligner):
    """Each view fitted to the sparse 3D points observed in it (COLMAP's tracks), projected into
    the view, robustly and in the prediction's own space (:func:`fit_sparse`)."""

    min_points: int = 10
    robust: bool = True

    def align(self, views: list[AlignmentView], cameras: CameraSet) -> list[ViewAlignment]:
        if cameras.sparse is None:
            raise ValueError(f"{cameras.source}: no sparse points (SparsePointAlignment needs a COLMAP model with "
                             f"points3D; use JointAlignment without them)")
        out = []
        for v in views:
            if v.space == "metric":
                raise ValueError(f"view {v.camera.name!r} is metric already: use MetricDepth")
            points = cameras.sparse.in_view(v.camera.name)
            try:
                fit = fit_sparse(v.pred, v.space, sparse_depth_map(v.camera, points), v.mask, self.min_points, self.robust)
            except ValueError as exc:
                raise ValueError(f"view {v.camera.name!r} ({len(points)} observed sparse points): {exc}") from exc
            out.append(ViewAlignment(v.camera.name, v.space, fit.scale, fit.shift, fit.num_points, fit.num_inliers,
                                     fit.abs_rel, "sparse points"))
        return out


@dataclass
class JointAlignment(Aligner):
    """All views' scales and shifts at once from reprojected correspondences (module docstring).

    Args:
        max_samples: pixels sampled per view (a regular sub-grid).
        init_near: initial guess of the near end of every view's range (metres), before the global
            scale search; the result does not depend on it unless the search range misses.
        init_far: ... and of the far end.
        scale_search: the initial global depth scale is searched over this factor either way.
        gauge_view: hold this view's (scale, shift) at its initial values (index); None: the poses'
            translations set the scale.
        outlier_sigmas: correspondences with residuals beyond this many robust sigmas are trimmed...
        initial_cut: ... but never those within this relative residual, a floor that shrinks by
            ``cut_decay`` every iteration: trimming to a few sigmas from the start would lock onto
            the correspondences that happen to agree with a wrong initial scale.
        cut_decay: the floor's factor per iteration.
        iterations: most Gauss-Newton iterations.
        min_overlap: fewest correspondences a view needs with the others.
        starts: descents from the initial search's global scale and from half, twice, a quarter, four
            times it...; the result with the smallest median residual is kept.
        range_prior: weight of a prior that each view's far/near ratio stays near
            ``init_far / init_near`` (a penalty on the log ratio's deviation, per view, weighted as
            ``range_prior`` times the view's share of correspondences; 0: none). Without it, inputs
            whose errors disagree between views are made to agree by flattening every view (far/near
            -> 1, all depths alike), which the reprojections cannot tell from the truth. It biases
            exact inputs towards the guessed ratio, so give 0 for depth that is consistent already.
        prediction_units: measure each correspondence's disagreement in the target view's prediction
            units instead of relative depth (``_residuals``), which removes the same flattening
            without a prior (exact inputs still fit exactly). The descent and the choice between
            starts use these units; trimming stays in relative depth (a far row's residual is small
            in prediction units whatever it says about the scale), as do the inliers and the report.
    """

    max_samples: int = 3000
    init_near: float = 1.0
    init_far: float = 10.0
    scale_search: float = 30.0
    gauge_view: int | None = None
    outlier_sigmas: float = 3.0
    initial_cut: float = 0.1
    cut_decay: float = 0.7
    iterations: int = 80
    min_overlap: int = 50
    starts: int = 3
    range_prior: float = 0.0
    prediction_units: bool = True

    def _guess(self, views: list[AlignmentView]) -> np.ndarray:
        """Every view's ``(s, t)`` mapped onto the ``init_near``..``init_far`` range."""
        guess = RangeGuess(self.init_near, self.init_far)
        return np.concatenate([guess.scale_shift(v.space) for v in views])

    def initial(self, views: list[AlignmentView], corr: _Correspondences) -> list[np.ndarray]:
        """``starts`` starting points: the near/far guess at the searched global scale, then at half,
        twice, a quarter, four times... that scale."""
        base = self._guess(views)

        def scaled(factor: float) -> np.ndarray:  # depth x factor: disparity / factor, depth * factor
            theta = base.copy()
            for k, v in enumerate(views):
                theta[2 * k:2 * k + 2] *= (1 / factor) if v.space == "disparity" else factor
            return theta

        candidates = []
        for factor in np.geomspace(1 / self.scale_search, self.scale_search, 41):
            r, _ = _residuals(corr, scaled(factor), jacobian=False)
            # samples without a counterpart count as a bad residual, or depths that push every
            # correspondence out of frame would look consistent
            candidates.append((float(np.mean(np.where(np.isfinite(r), np.minimum(np.abs(r), 0.5), 0.5))), factor))
        factor = min(candidates)[1]
        # the search's scale, then half and twice it, a quarter and four times...: the descent's basin
        # around the true scale is a factor of a few wide (measured: 0.5x-1x converge, 2x does not)
        multiples = [1.0] + [m for k in range(1, self.starts) for m in (2.0**-k, 2.0**k)]
        return [scaled(factor * m) for m in multiples[:self.starts]]

    def solve(self, views: list[AlignmentView], init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``theta`` ``[2K]`` (scale, shift per view), the final residuals and their inlier mask."""
        for v in views:
            if v.space == "metric":
                raise ValueError(f"view {v.camera.name!r} is metric already: use MetricDepth")
        if len(views) < 2:
            raise ValueError("the joint alignment needs at least two views")
        corr = _correspondences(views, self.max_samples)
        if self.gauge_view is not None and not 0 <= self.gauge_view < len(views):
            raise ValueError(f"gauge_view {self.gauge_view} is not a view index (0..{len(views) - 1})")
        starts = [np.asarray(init, dtype=np.float64).copy()] if init is not None else self.initial(views, corr)
        # Several starts: from a wrong global scale the descent can slide towards ever larger depths,
        # where the translations stop mattering and any depths agree (all views at infinity are a
        # perfect fit). A result whose depths left the initial search's range has done that; of the
        # others, the one that agrees best is kept.
        base = self._guess(views)
        results = []
        failures = []
        for start in starts:
            try:
                theta = self._refine(views, corr, start)
            except ValueError as exc:  # e.g. from a far-off start a view trims to no overlap: try the others
                failures.append(exc)
                continue
            r, _ = _residuals(corr, theta, jacobian=False, prediction_units=self.prediction_units)
            finite = np.isfinite(r)
            cost = float(np.median(np.abs(r[finite]))) if finite.any() else np.inf
            if self.range_prior > 0:  # the refined objective's prior, on the scale of a squared residual
                cost = float(np.sqrt(cost**2 + self.range_prior * np.mean(self._prior_residuals(theta) ** 2)))
            factor = _depth_factor(views, theta, base)
            inside = 1 / self.scale_search <= factor <= self.scale_search
            results.append((not inside, cost, len(results), theta, r))
        if not results:
            raise failures[0]
        _, _, _, theta, r = min(results, key=lambda x: x[:3])
        if self.prediction_units:  # inliers and report in relative depth, as the trimming and the other aligners
            r = _residuals(corr, theta, jacobian=False)[0]
        finite = np.isfinite(r)
        sigma = 1.4826 * float(np.median(np.abs(r[finite]))) if finite.any() else 0.0
        inlier = finite & (np.abs(np.where(finite, r, np.inf)) <= max(self.outlier_sigmas * sigma, 1e-12))
        self._check_overlap(views, corr, inlier)
        self._last = (r, corr)
        return theta, r, inlier

    def _prior_residuals(self, theta: np.ndarray) -> np.ndarray:
        """Each view's deviation of ``log(far / near)`` from the guess's (``range_prior``)."""
        return _log_range_ratio(theta)[0] - np.log(self.init_far / self.init_near)

    def _refine(self, views: list[AlignmentView], corr: _Correspondences, theta: np.ndarray) -> np.ndarray:
        """Robust Levenberg-Marquardt from ``theta`` (module docstring)."""
        theta = theta.copy()
        free = np.ones(len(theta), dtype=bool)
        if self.gauge_view is not None:
            free[2 * self.gauge_view:2 * self.gauge_view + 2] = False
        damping = 1e-6
        views_idx = np.arange(len(views))
        ends = np.array([[np.min(v.pred[v.valid]), np.max(v.pred[v.valid])] if v.valid.any() else [0.0, 1.0]
                         for v in views])

        def feasible(theta: np.ndarray) -> bool:
            # every valid pixel keeps a positive depth and no view is inverted: otherwise a step could
            # "fit" the hardest pixels by pushing them past infinite depth, where they drop out
            s, t = theta[0::2], theta[1::2]
            return bool(np.all(s > 0) and np.all(s[:, None] * ends + t[:, None] > 0))

        def trimmed_cost(r: np.ndarray, cap: np.ndarray, support: np.ndarray, theta: np.ndarray, weight: float) -> float:
            # over the samples in frame both before and after a step, so that a step is judged by
            # agreement, not by how many samples it pushes out of (or into) the other views; a row
            # costs at most its cap, held for the iteration
            cost = float(np.minimum(r[support] ** 2, cap[support] ** 2).sum())
            if weight > 0:
                prior = self._prior_residuals(theta)
                cost += weight * float(np.sum(prior**2)) if np.isfinite(prior).all() else np.inf
            return cost

        for iteration in range(self.iterations):
            r, J = _residuals(corr, theta, prediction_units=self.prediction_units)
            # trimmed in relative depth either way: in prediction units a far point's residual is
            # scaled down (p + t/s is small there), so 3 sigmas of them would keep the far rows only,
            # which say least about the scale (on exact inputs the descent stopped 12 % off)
            relative = _residuals(corr, theta, jacobian=False)[0] if self.prediction_units else r
            finite = np.isfinite(r) & np.isfinite(relative)
            sigma = 1.4826 * float(np.median(np.abs(relative[finite]))) if finite.any() else 0.0
            floor = self.initial_cut * self.cut_decay**iteration
            cut = max(self.outlier_sigmas * sigma, floor, 1e-12)
            inlier = finite & (np.abs(np.where(finite, relative, np.inf)) <= cut)
            self._check_overlap(views, corr, inlier)
            if self.prediction_units:  # the cut in relative depth, as each row's cap in its own units
                with np.errstate(divide="ignore", invalid="ignore"):
                    cap = np.where(relative != 0, cut * np.abs(r / relative), np.inf)
            else:
                cap = np.full(len(r), cut)
            H, g = _normal_equations(corr, r, J, inlier, len(theta))
            weight = self.range_prior * inlier.sum() / len(views)  # per view, its share of the rows
            if weight > 0:
                prior, grad = self._prior_residuals(theta), _log_range_ratio(theta)[1]
                for a in range(2):
                    g[2 * views_idx + a] += weight * grad[:, a] * prior
                    for b in range(2):
                        H[2 * views_idx + a, 2 * views_idx + b] += weight * grad[:, a] * grad[:, b]
            H, g = H[np.ix_(free, free)], g[free]
            step_taken, was_feasible = False, feasible(theta)
            for _ in range(12):
                A = H + damping * np.diag(np.maximum(np.diag(H), 1e-12))
                delta = np.zeros_like(theta)
                delta[free] = -np.linalg.solve(A, g)
                trial = theta + delta
                if was_feasible and not feasible(trial):
                    damping *= 10
                    continue
                r_trial, _ = _residuals(corr, trial, jacobian=False, prediction_units=self.prediction_units)
                support = finite & np.isfinite(r_trial)
                if support.sum() >= finite.sum() / 2 and (trimmed_cost(r_trial, cap, support, trial, weight)
                                                           <= trimmed_cost(r, cap, support, theta, weight)):
                    theta, damping, step_taken = trial, max(damping / 10, 1e-12), True
                    break
                damping *= 10
            small = not step_taken or np.max(np.abs(delta) / np.maximum(np.abs(theta), 1e-12)) < 1e-13
            if small and floor <= max(self.outlier_sigmas * sigma, 1e-12):
                break  # converged, and the floor no longer widens the trimming
        return theta

    def _check_overlap(self, views: list[AlignmentView], corr: _Correspondences, inlier: np.ndarray) -> None:
        """Raise naming the views that share too few correspondences with the rest."""
        counts = np.zeros((len(views), len(views)), dtype=np.int64)
        per_pair = np.bincount(corr.owner[inlier], minlength=len(corr.pairs))
        for (i, j), n in zip(corr.pairs, per_pair):
            counts[i, j] = n
        linked = (counts + counts.T) >= self.min_overlap
        alone = [views[k].camera.name for k in range(len(views)) if not linked[k].any()]
        if alone:
            raise ValueError(f"view(s) {alone} overlap no other view (fewer than min_overlap={self.min_overlap} "
                             f"correspondences): their depth cannot be aligned jointly; are the poses right?")
        seen, frontier = {0}, [0]  # connected components of the overlap graph
        while frontier:
            k = frontier.pop()
            for m in np.nonzero(linked[k])[0]:
                if int(m) not in seen:
                    seen.add(int(m))
                    frontier.append(int(m))
        if len(seen) < len(views):
            rest = [views[k].camera.name for k in range(len(views)) if k not in seen]
            raise ValueError(f"the views split into groups that do not overlap: {rest} share no correspondences with "
                             f"{[views[k].camera.name for k in sorted(seen)]}")

    def align(self, views: list[AlignmentView], cameras: CameraSet) -> list[ViewAlignment]:
        theta, r, inlier = self.solve(views)
        _, corr = self._last
        out = []
        for k, v in enumerate(views):
            mine = corr.src == k
            valid = mine & np.isfinite(r)
            kept = mine & inlier
            residual = float(np.median(np.abs(r[kept]))) if kept.any() else float("nan")
            out.append(ViewAlignment(v.camera.name, v.space, float(theta[2 * k]), float(theta[2 * k + 1]),
                                     int(valid.sum()), int(kept.sum()), residual, "joint"))
        return out
