"""A task lotus_pl does not ship, defined outside the package: the proof that a new task is one
Task class, one data source and one YAML, with no edit to the model, the trainer or the CLI.

``Illumination`` predicts the grey shading of the procedural scenes (``rgb = albedo × shading``),
stored as a new shard field ``illumination.npy`` that the project has never heard of. The data
source writes it with the project's public converter (:func:`lotus_pl.data.convert.convert_split`).
Training, evaluation, checkpointing, the learning report and ``lotus_pl predict`` all run it through
the public CLI with ``class_path: illumination_task.Illumination`` (this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from lotus_pl.data.convert import SampleFormat, SplitPlan, convert_split
from lotus_pl.data.renderer import render_random
from lotus_pl.data.samples import encode_npy, encode_rgb_png
from lotus_pl.tasks import Task
from lotus_pl.visualize import colorize


# ----------------------------------------------------------------------------- the data source
@dataclass(frozen=True)
class Frame:
    key: str
    seed: int


def convert_frame(frame: Frame, options: dict[str, Any]) -> dict[str, bytes]:
    """Render one scene; shading = rgb / albedo (grey: the mean over channels), NaN off surfaces."""
    view = render_random(frame.seed, options["size"], options["size"])
    rgb = view.rgb.astype(np.float32) / 255.0
    surface = (view.albedo > 0.05).all(-1)
    shading = np.where(surface, (rgb / np.maximum(view.albedo, 1e-6)).mean(-1), np.nan)
    meta = {"height": options["size"], "width": options["size"], "fx": view.fx, "fy": view.fy, "cx": view.cx, "cy": view.cy}
    return {"rgb.png": encode_rgb_png(view.rgb), "illumination.npy": encode_npy(shading), "json": json.dumps(meta).encode()}


def write_illumination(out: str, manifest_dir: str, num_train: int, num_val: int, size: int) -> dict[str, str]:
    """Shards and manifests of both splits; returns {split: manifest path}."""
    fmt = SampleFormat(keys=["rgb.png", "illumination.npy", "json"], resolution=[size, size], depth_scale=1.0,
                       intrinsics=None, licence="generated", preprocessing=["shading = rgb / albedo"])
    manifests = {}
    for split, num, offset in (("train", num_train, 0), ("val", num_val, 10**6)):
        plan = SplitPlan(f"illumination_{split}", split, [Frame(f"{split}_{i:05d}", offset + i) for i in range(num)])
        manifests[split] = str(Path(manifest_dir) / f"illumination_{split}.yaml")
        convert_split(plan, convert_frame, {"size": size}, out, manifests[split], fmt, created_by="test", workers=1,
                      samples_per_shard=8)
    return manifests


# ----------------------------------------------------------------------------- the task
class ShadingError(Metric):
    """Mean absolute shading error over valid pixels, averaged over images (summed states: DDP-safe)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, valid: Tensor) -> None:
        weight = valid.double()
        per_image = ((pred.double() - torch.nan_to_num(gt.double())).abs() * weight).sum((1, 2, 3))
        pixels = weight.sum((1, 2, 3))
        self.total += (per_image[pixels > 0] / pixels[pixels > 0]).sum()
        self.count += int((pixels > 0).sum())

    def compute(self) -> dict[str, Tensor]:
        return {"mae": self.total / self.count.clamp_min(1)}


class Illumination(Task):
    """Grey shading in [0, max_shading], as the annotation image ``2 s / max_shading - 1`` on 3 channels.

    Args:
        max_shading: the largest shading value represented (brighter values are clipped).
    """

    name = "illumination"
    gt_key = "illumination"

    def __init__(self, max_shading: float = 1.5) -> None:
        self.max_shading = max_shading

    def valid_mask(self, gt: Tensor) -> Tensor:
        return torch.isfinite(gt)

    def encode(self, gt: Tensor, valid: Tensor) -> Tensor:
        scaled = torch.nan_to_num(gt).clamp(0, self.max_shading) / self.max_shading * 2 - 1
        return torch.where(valid, scaled, torch.zeros_like(scaled)).expand(-1, 3, -1, -1)

    def decode(self, image: Tensor) -> Tensor:
        return ((image.mean(1, keepdim=True) + 1) / 2 * self.max_shading).clamp(0, self.max_shading)

    def metric(self) -> Metric:
        return ShadingError()

    def headline(self, results: dict[str, Tensor]) -> tuple[str, float]:
        return "mae", float(results["mae"])

    def visualize(self, pred: Tensor, valid: Tensor | None = None) -> Tensor:
        return colorize(pred, valid, 0.0, self.max_shading)

    def visualize_gt(self, gt: Tensor, valid: Tensor) -> Tensor:
        return colorize(torch.nan_to_num(gt), valid, 0.0, self.max_shading)

    def save(self, pred: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
        paths = [out_dir / f"{stem}_illumination.npy", out_dir / f"{stem}_illumination.png"]
        np.save(paths[0], pred[0].astype(np.float32))
        Image.fromarray(np.round(np.clip(pred[0] / self.max_shading, 0, 1) * 255).astype(np.uint8)).save(paths[1])
        return paths
