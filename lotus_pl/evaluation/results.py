"""The ``lotus_pl test`` results file: one JSON per evaluated dataset, which the suite reads.

:class:`EvaluationResults` is the callback ``experiments/eval/*.yaml`` install. At the end of the
test epoch it reads the model's metric (the same one ``test_step`` fed, synchronised over ranks),
collects the keys of every sample each rank scored, and rank 0 writes
``<default_root_dir>/test_results.json``::

    {"dataset": "nyuv2", "task": "depth", "metrics": {"abs_rel": ..., ...},
     "counts": {"num_images": 654, "num_skipped": 0}, "num_samples": 654, "duplicate_keys": 0,
     "world_size": 1, "samples_per_rank": [654], "keys": [...], "ckpt_path": ..., ...}

``counts`` are the metric's own (images averaged over and images skipped for an empty valid mask
for depth; pixels pooled for normals); ``keys`` lets anyone check that a multi-GPU evaluation
scored each sample exactly once. ``tasks`` holds ``metrics`` and ``counts`` of every task scored:
one for a single-task model; for a joint model, each task whose ground truth the dataset has (the
first of them also heads the report, as ``task`` / ``metrics``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from torchmetrics import Metric, MetricCollection

RESULTS_FILE = "test_results.json"
_COUNT_NAMES = ("num_images", "num_skipped", "num_pixels")


def metric_counts(metric: Metric | MetricCollection) -> dict[str, int]:
    """The counts the metric (or each member of a metric collection) reports after ``compute()``."""
    members = list(metric.values()) if isinstance(metric, MetricCollection) else [metric]
    counts: dict[str, int] = {}
    for member in members:
        for name in _COUNT_NAMES:
            if hasattr(member, name):
                counts.setdefault(name, int(getattr(member, name)))
    return counts


def _gather(values: list[str]) -> list[list[str]]:
    """Every rank's list, in rank order (on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [list(values)]
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(values))
    return [part or [] for part in gathered]


def _number(value: Any) -> float | None:
    """A JSON-safe float (NaN / inf would make invalid JSON and must never be reported as a score)."""
    value = float(value)
    return value if math.isfinite(value) else None


class EvaluationResults(Callback):
    """Write the test metrics of one dataset to JSON.

    Args:
        dataset: the dataset's name in the results (``nyuv2``, ``kitti``, ...).
        output: the JSON file; ``<trainer.default_root_dir>/test_results.json`` by default.
    """

    def __init__(self, dataset: str = "", output: str | None = None) -> None:
        self.dataset = dataset
        self.output = output
        self._keys: list[str] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._keys = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._keys.extend(str(k) for k in batch.get("key", []))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs before the module's own hook, which logs and then resets the metric. compute() is a
        # collective under DDP (all ranks are here) and caches its result for the module's call.
        scored = {}  # a joint model is scored on each task whose ground truth the dataset has
        for scored_task in pl_module.scored_tasks():
            metric = pl_module.val_metrics[scored_task.name]
            scored[scored_task.name] = {"metrics": {name: _number(value) for name, value in metric.compute().items()},
                                        "counts": metric_counts(metric)}
            uncertainty = getattr(pl_module, "uncertainty_metrics", {})
            if scored_task.name in uncertainty:  # an ensemble's AUSE / AURG (lotus_pl.ensembles)
                values = uncertainty[scored_task.name].compute().items()
                scored[scored_task.name]["metrics"].update({name: _number(value) for name, value in values})
        per_rank = _gather(self._keys)
        keys = [key for part in per_rank for key in part]
        if not trainer.is_global_zero or not scored:
            return
        task = next(t for t in pl_module.tasks if t.name in scored)  # the first scored task heads the report
        report = {
            "dataset": self.dataset,
            "task": task.name,
            "metrics": scored[task.name]["metrics"],
            "counts": scored[task.name]["counts"],
            "tasks": scored,
            "num_samples": len(keys),
            "duplicate_keys": len(keys) - len(set(keys)),
            "world_size": trainer.world_size,
            "samples_per_rank": [len(part) for part in per_rank],
            "ckpt_path": trainer.ckpt_path,
            "test_manifest": getattr(trainer.datamodule, "test_manifest", None) if trainer.datamodule else None,
            "processing_resolution": pl_module.inference_resolution,
            "keys": sorted(keys),
        }
        if hasattr(task, "min_depth"):  # None for an unbounded range (ETH3D's max_depth: inf)
            report["depth_range"] = [_number(task.min_depth), _number(task.max_depth)]
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, allow_nan=False))
