"""Surface reconstruction metrics as the literature defines them (e.g. DTU / Tanks and Temples /
Occupancy Networks):

* accuracy: mean distance from each reconstructed point to the nearest true surface point;
* completeness: mean distance from each true point to the nearest reconstructed point;
* Chamfer-L1 = (accuracy + completeness) / 2;
* precision / recall at ``tau``: the fraction of reconstructed (true) points within ``tau`` of the
  other set; F-score = 2 P R / (P + R);
* normal consistency: the mean |cos| between each point's normal and its nearest neighbour's in
  the other set, averaged over both directions.

Both sets are point samples (a mesh is sampled uniformly on its area first, :func:`sample_mesh`).

``max_distance`` caps every nearest-neighbour distance (as DTU's evaluation bounds outliers): a
point with no counterpart within it counts as exactly that far, and as normal consistency 0. Besides
keeping a few far outliers from dominating the means, it keeps the k-d tree queries fast: a query
far outside the other set (a badly scaled reconstruction) visits most of the tree's nodes, which
took minutes per mesh on walls of 300k true points.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["reconstruction_metrics", "sample_mesh"]


def sample_mesh(mesh: Any, num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num_points`` points uniformly on an Open3D mesh's area, with their triangle normals."""
    import open3d as o3d

    o3d.utility.random.seed(seed)
    cloud = mesh.sample_points_uniformly(number_of_points=num_points, use_triangle_normal=True)
    return np.asarray(cloud.points), np.asarray(cloud.normals)


def _unit(n: np.ndarray) -> np.ndarray:
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _nearest(tree: Any, queries: np.ndarray, max_distance: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (capped at ``max_distance``) and indices (-1 where nothing is within it)."""
    if max_distance is None:
        return tree.query(queries, workers=1)
    distance, index = tree.query(queries, workers=1, distance_upper_bound=max_distance)
    missing = ~np.isfinite(distance)
    return np.where(missing, max_distance, distance), np.where(missing, -1, index)


def _consistency(n: np.ndarray, other: np.ndarray, index: np.ndarray) -> float:
    cos = np.abs(np.sum(n * other[np.maximum(index, 0)], axis=-1))
    return float(np.where(index >= 0, cos, 0.0).mean())


def reconstruction_metrics(points: np.ndarray, truth: np.ndarray, tau: float | Sequence[float],
                           normals: np.ndarray | None = None, truth_normals: np.ndarray | None = None,
                           max_distance: float | None = None) -> dict[str, Any]:
    """Accuracy, completeness, Chamfer-L1, precision, recall, F-score at ``tau`` (all distances in the
    points' unit) and, with both normal sets, normal consistency. Several ``tau`` share one pair of
    k-d tree queries: then precision, recall and fscore are lists, one per tau."""
    from scipy.spatial import cKDTree

    points, truth = np.asarray(points, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if len(points) == 0 or len(truth) == 0:
        raise ValueError(f"need points on both sides, got {len(points)} reconstructed and {len(truth)} true")
    taus = [float(t) for t in np.atleast_1d(tau)]
    if not all(t > 0 for t in taus):
        raise ValueError(f"tau must be > 0, got {tau}")
    if max_distance is not None and not max_distance > max(taus):
        raise ValueError(f"max_distance must exceed tau, got {max_distance} for tau {tau}")
    to_truth, nearest_truth = _nearest(cKDTree(truth), points, max_distance)
    to_points, nearest_point = _nearest(cKDTree(points), truth, max_distance)
    precision = [float(np.mean(to_truth < t)) for t in taus]
    recall = [float(np.mean(to_points < t)) for t in taus]
    fscore = [2 * p * r / (p + r) if p + r > 0 else 0.0 for p, r in zip(precision, recall)]
    one = np.ndim(tau) == 0
    out: dict[str, Any] = {
        "accuracy": float(to_truth.mean()), "completeness": float(to_points.mean()),
        "chamfer_l1": float((to_truth.mean() + to_points.mean()) / 2),
        "precision": precision[0] if one else precision, "recall": recall[0] if one else recall,
        "fscore": fscore[0] if one else fscore, "tau": taus[0] if one else taus,
    }
    if normals is not None and truth_normals is not None:
        n, t = _unit(np.asarray(normals, dtype=np.float64)), _unit(np.asarray(truth_normals, dtype=np.float64))
        out["normal_consistency"] = (_consistency(n, t, nearest_truth) + _consistency(t, n, nearest_point)) / 2
    return out
