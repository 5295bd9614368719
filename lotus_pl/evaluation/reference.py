"""The papers' zero-shot numbers (Lotus, He et al. 2024, Tables 1 and 2), shown beside measured rows.

Depth cells are AbsRel % / δ1 % (affine-invariant, per-image least squares); normal cells are
mean angular error in degrees / % of pixels under 11.25° / % under 30° (DSINE protocol, pixels
pooled over the dataset). Source: REFERENCE.md section 4.
"""

from __future__ import annotations

#: The datasets of each task's paper table, in its column order.
PAPER_DATASETS: dict[str, tuple[str, ...]] = {
    "depth": ("nyuv2", "kitti", "eth3d", "scannet", "diode"),
    "normal": ("nyuv2", "scannet", "ibims", "sintel"),
}

#: Column titles; datasets not listed here are shown by their own name.
DATASET_TITLES: dict[str, str] = {
    "nyuv2": "NYUv2", "kitti": "KITTI", "eth3d": "ETH3D", "scannet": "ScanNet", "diode": "DIODE",
    "ibims": "iBims-1", "sintel": "Sintel", "oasis": "OASIS", "synthetic": "synthetic val",
}

#: What a cell holds: (metric name, multiplier to the reported unit) per value.
CELL_METRICS: dict[str, tuple[tuple[str, float], ...]] = {
    "depth": (("abs_rel", 100.0), ("delta1", 100.0)),
    "normal": (("mean", 1.0), ("a11_25", 100.0), ("a30", 100.0)),
}

#: The uncertainty cell of an ensemble's results (lotus_pl.ensembles): AUSE / AURG of the headline error.
UNCERTAINTY_METRICS: dict[str, tuple[tuple[str, float], ...]] = {
    "depth": (("ause_abs_rel", 100.0), ("aurg_abs_rel", 100.0)),
    "normal": (("ause_mean_angular", 1.0), ("aurg_mean_angular", 1.0)),
}

UNCERTAINTY_TITLES: dict[str, str] = {
    "depth": "AUSE / AURG of AbsRel, in AbsRel %",
    "normal": "AUSE / AURG of the mean angular error, in degrees",
}

CELL_TITLES: dict[str, str] = {
    "depth": "AbsRel % / δ1 %",
    "normal": "mean° / % < 11.25° / % < 30°",
}

REFERENCE: dict[str, dict[str, dict[str, tuple[float, ...]]]] = {
    "depth": {
        "Marigold (50 steps × 10 ensemble)": {
            "nyuv2": (5.5, 96.4), "kitti": (9.9, 91.6), "eth3d": (6.5, 95.9), "scannet": (6.4, 95.2), "diode": (30.8, 77.3)},
        "E2E-FT (single step)": {
            "nyuv2": (5.4, 96.5), "kitti": (9.6, 92.1), "eth3d": (6.4, 95.9), "scannet": (5.8, 96.5), "diode": (30.3, 77.6)},
        "Lotus-G": {
            "nyuv2": (5.4, 96.8), "kitti": (8.5, 92.2), "eth3d": (5.9, 97.0), "scannet": (5.9, 95.7), "diode": (22.9, 72.9)},
        "Lotus-D": {
            "nyuv2": (5.1, 97.2), "kitti": (8.1, 93.1), "eth3d": (6.1, 97.0), "scannet": (5.5, 96.5), "diode": (22.8, 73.8)},
    },
    "normal": {
        "DSINE": {
            "nyuv2": (16.4, 59.6, 83.5), "scannet": (16.2, 61.0, 84.4),
            "ibims": (17.1, 67.4, 82.3), "sintel": (34.9, 21.5, 52.7)},
        "Lotus-D": {
            "nyuv2": (16.2, 59.8, 83.9), "scannet": (14.7, 64.0, 86.1),
            "ibims": (17.1, 66.4, 83.0), "sintel": (32.3, 22.4, 57.0)},
        "Lotus-G": {
            "nyuv2": (16.5, 59.4, 83.5), "scannet": (15.1, 63.9, 85.3),
            "ibims": (17.2, 66.2, 82.7), "sintel": (33.6, 21.0, 53.8)},
    },
}


def check_task(task: str) -> str:
    if task not in REFERENCE:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(REFERENCE)}")
    return task


def cell_values(task: str, metrics: dict[str, float | None], cells: dict | None = None) -> tuple[float | None, ...]:
    """A measured result in the paper's units (``None`` for a metric that is missing or not finite);
    ``cells``: another cell layout (``UNCERTAINTY_METRICS``) than the paper's."""
    values = []
    for name, scale in (cells or CELL_METRICS)[check_task(task)]:
        value = metrics.get(name)
        values.append(None if value is None else value * scale)
    return tuple(values)
