"""Uncertainty as a confidence: the files ``predict`` writes for an ensemble, and dropping the least
sure pixels before 3D reconstruction (``lotus_pl reconstruct --confidence_quantile / --max_uncertainty``).

``<stem>_<task>_uncertainty.npy`` is the ``[H, W]`` float32 spread of the ensemble members at the
input's size (larger = less sure; depth: in the relative [0, 1] output's units, normals: degrees),
and ``<stem>_<task>_uncertainty.png`` its colour map (bright = unsure, per-image 1-99 % range).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lotus_pl.visualize import colorize

__all__ = ["confident_pixels", "drop_uncertain", "read_uncertainty", "save_uncertainty"]


def save_uncertainty(uncertainty: np.ndarray, out_dir: Path, stem: str, task_name: str) -> list[Path]:
    """Write ``[H, W]`` (or ``[1, H, W]``) uncertainty as ``<stem>_<task>_uncertainty.npy`` and ``.png``."""
    value = np.asarray(uncertainty, dtype=np.float32).reshape(uncertainty.shape[-2:])
    npy, png = out_dir / f"{stem}_{task_name}_uncertainty.npy", out_dir / f"{stem}_{task_name}_uncertainty.png"
    np.save(npy, value)
    color = colorize(torch.from_numpy(value)[None, None])[0].permute(1, 2, 0).numpy()
    Image.fromarray(np.round(color * 255).astype(np.uint8)).save(png)
    return [npy, png]


def read_uncertainty(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An uncertainty map written by :func:`save_uncertainty`, checked against its prediction's shape."""
    value = np.load(path)
    if value.shape != tuple(shape):
        raise ValueError(f"{path}: the uncertainty is {value.shape} but its prediction is {tuple(shape)} (HxW)")
    return value.astype(np.float64)


def confident_pixels(uncertainty: np.ndarray, quantile: float | None = None, threshold: float | None = None) -> np.ndarray:
    """``[H, W]`` bool: pixels to keep. ``quantile`` q keeps the pixels at or below the q-quantile of the
    finite uncertainties (0.8: drop the least sure 20 %); ``threshold`` keeps those at or below it;
    both: both conditions. Non-finite uncertainty is never kept."""
    if quantile is not None and not 0 < quantile <= 1:
        raise ValueError(f"the confidence quantile must be in (0, 1] (the fraction of pixels kept), got {quantile}")
    keep = np.isfinite(uncertainty)
    if quantile is not None and keep.any():
        keep &= uncertainty <= np.quantile(uncertainty[keep], quantile)
    if threshold is not None:
        keep &= uncertainty <= threshold
    return keep


def drop_uncertain(depth: np.ndarray, predictions: Path, stem: str, quantile: float | None = None,
                   threshold: float | None = None) -> tuple[np.ndarray, str]:
    """``depth`` with NaN where ``<stem>_depth_uncertainty.npy`` (in ``predictions``) is not confident
    (:func:`confident_pixels`), and a note for the reconstruction's log."""
    path = Path(predictions) / f"{stem}_depth_uncertainty.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a confidence filter needs the uncertainty that lotus_pl predict "
                                f"writes with an ensemble (model.ensemble)")
    keep = confident_pixels(read_uncertainty(path, depth.shape), quantile, threshold)
    rules = []
    if quantile is not None:
        rules.append(f"uncertainty <= its {quantile:g} quantile")
    if threshold is not None:
        rules.append(f"uncertainty <= {threshold:g}")
    note = f"confidence: kept {keep.mean():.1%} of pixels ({' and '.join(rules)}, {path.name})"
    return np.where(keep, depth, np.nan), note
