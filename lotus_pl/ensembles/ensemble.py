"""The ensemble a model predicts with: noise seeds (Lotus-G), test-time views, and a reduction per task.

``model.ensemble`` in a config (off by default: one call, today's behaviour)::

    model:
      ensemble:
        class_path: lotus_pl.ensembles.Ensemble
        init_args:
          size: 10                                     # Lotus-G noise seeds per view
          chunk_size: 4                                # members per batched UNet call (0: all)
          tta: [{class_path: lotus_pl.ensembles.HorizontalFlip}]
          reductions: {depth: {class_path: lotus_pl.ensembles.MeanAlign}}   # default: each task's own

Every view (the plain one plus each augmentation's) is predicted with ``size`` members whose seeds
are ``model.seed + k``; member k of the plain view is exactly the single call with ``seed = model.seed + k``.
The members are brought back into the input's frame and combined per task, which also gives the
task's ``<task>_uncertainty`` map (``[B, 1, H, W]``, larger = less sure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lotus_pl.ensembles.augmentations import Augmentation, PlainView, View
from lotus_pl.ensembles.reductions import Reduction
from lotus_pl.ensembles.sparsification import SparsificationMetrics

if TYPE_CHECKING:
    from lotus_pl.model import LotusModel
    from lotus_pl.tasks.base import Task

__all__ = ["Ensemble", "uncertainty_key"]


def uncertainty_key(task_name: str) -> str:
    """The prediction key (and file infix) of a task's uncertainty: ``depth_uncertainty``."""
    return f"{task_name}_uncertainty"


class Ensemble:
    """Several predictions per image, combined, with their spread as an uncertainty.

    Args:
        size: members per view, each a Lotus-G noise seed (``model.seed + k``). Lotus-D samples
            nothing, so its members would be identical: it must use 1 (and ``tta`` for an ensemble).
        chunk_size: members per batched UNet call, to bound memory (0: every member in one call).
        tta: test-time augmentations whose views join the plain one (``HorizontalFlip``, ``Rescale``).
        reductions: reduction by task name; a task not named uses its own default
            (``Task.ensemble_reduction``: ``MedianAlign`` for depth, ``SphereMean`` for normals).
        sparsification_steps: removal fractions of the AUSE / AURG evaluation that validation and
            ``test`` run on the uncertainty (0: none).
    """

    def __init__(self, size: int = 1, chunk_size: int = 0, tta: list[Augmentation] | None = None,
                 reductions: dict[str, Reduction] | None = None, sparsification_steps: int = 50) -> None:
        if size < 1:
            raise ValueError(f"ensemble size must be >= 1, got {size}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0: all members in one call), got {chunk_size}")
        self.size, self.chunk_size = size, chunk_size
        self.tta = list(tta or [])
        self.reductions = dict(reductions or {})
        self.sparsification_steps = sparsification_steps

    @property
    def views(self) -> list[View]:
        return [PlainView()] + [view for augmentation in self.tta for view in augmentation.views()]

    @property
    def num_members(self) -> int:
        return self.size * len(self.views)

    def check(self, tasks: list[Task], samples_noise: bool, tiled: bool) -> None:
        """Refuse what cannot work, with the reason (called when the model is built)."""
        if self.size > 1 and not samples_noise:
            raise ValueError(f"ensemble size {self.size}: Deterministic (Lotus-D) samples no noise, so its members would "
                             f"be identical; use size 1 with test-time augmentation (tta), or Generative (Lotus-G)")
        if tiled:
            raise ValueError("an ensemble with tiled inference (tile_size > 0) is not supported: "
                             "each member would be a whole tiled prediction; turn one of them off")
        names = {t.name for t in tasks}
        unknown = sorted(set(self.reductions) - names)
        if unknown:
            raise ValueError(f"ensemble reductions for {unknown}, but the model's tasks are {sorted(names)}")

    def reduction(self, task: Task) -> Reduction:
        return self.reductions.get(task.name) or task.ensemble_reduction()

    def seeds(self, base: int) -> list[int]:
        return [base + k for k in range(self.size)]

    def members(self, model: LotusModel, image: Tensor) -> dict[str, Tensor]:
        """Each task's ``[num_members, B, C, H, W]`` members, in the input's frame (view-major)."""
        out: dict[str, list[Tensor]] = {task.name: [] for task in model.tasks}
        batch = image.shape[0]
        for view in self.views:
            preds, _ = model._predict_at(view.forward(image), view.resolution(model.inference_resolution),
                                         seeds=self.seeds(model.seed), chunk_size=self.chunk_size)
            for task in model.tasks:
                out[task.name].append(view.inverse(task, preds[task.name].unflatten(0, (self.size, batch))))
        return {name: torch.cat(parts) for name, parts in out.items()}

    def predict(self, model: LotusModel, image: Tensor) -> dict[str, Tensor]:
        """Every task's combined prediction and its ``<task>_uncertainty``."""
        result: dict[str, Tensor] = {}
        members = self.members(model, image)
        for task in model.tasks:
            pred, spread = self.reduction(task)(members[task.name])
            result[task.name] = pred
            result[uncertainty_key(task.name)] = spread
        return result

    def uncertainty_metric(self, task: Task) -> SparsificationMetrics | None:
        """AUSE / AURG of ``task``'s uncertainty, or None (no per-pixel errors, or turned off)."""
        errors = task.pixel_errors()
        if errors is None or self.sparsification_steps == 0:
            return None
        return SparsificationMetrics(errors, self.sparsification_steps)

    def __repr__(self) -> str:
        return (f"Ensemble(size={self.size}, chunk_size={self.chunk_size}, tta={self.tta}, reductions={self.reductions}, "
                f"sparsification_steps={self.sparsification_steps})")
