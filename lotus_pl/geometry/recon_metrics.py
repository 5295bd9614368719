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
"""

from __future__ import annotations

from typing import Any

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


def reconstruction_metrics(points: np.ndarray, truth: np.ndarray, tau: float, normals: np.ndarray | None = None,
                           truth_normals: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, completeness, Chamfer-L1, precision, recall, F-score at ``tau`` (all distances in the
    points' unit) and, with both normal sets, normal consistency."""
    from scipy.spatial import cKDTree

    points, truth = np.asarray(points, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if len(points) == 0 or len(truth) == 0:
        raise ValueError(f"need points on both sides, got {len(points)} reconstructed and {len(truth)} true")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    to_truth, nearest_truth = cKDTree(truth).query(points, workers=1)
    to_points, nearest_point = cKDTree(points).query(truth, workers=1)
    precision, recall = float(np.mean(to_truth < tau)), float(np.mean(to_points < tau))
    out = {
        "accuracy": float(to_truth.mean()), "completeness": float(to_points.mean()),
        "chamfer_l1": float((to_truth.mean() + to_points.mean()) / 2), "precision": precision, "recall": recall,
        "fscore": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0, "tau": float(tau),
    }
    if normals is not None and truth_normals is not None:
        n, t = _unit(np.asarray(normals, dtype=np.float64)), _unit(np.asarray(truth_normals, dtype=np.float64))
        forward = np.abs(np.sum(n * t[nearest_truth], axis=-1)).mean()
        backward = np.abs(np.sum(t * n[nearest_point], axis=-1)).mean()
        out["normal_consistency"] = float((forward + backward) / 2)
    return out
