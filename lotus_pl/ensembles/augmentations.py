"""Test-time augmentations: extra views of the input whose predictions are mapped back and ensembled.

An augmentation contributes one or more *views*. A view transforms the input image, names the
processing resolution it is predicted at, and maps the prediction (already at the input's size)
back into the input's frame. The plain view (the image as is, at the model's processing resolution)
is always part of an ensemble; each augmentation adds its views to it (they are not multiplied).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # tasks import this package for their defaults
    from lotus_pl.tasks.base import Task

__all__ = ["Augmentation", "HorizontalFlip", "Rescale", "View"]


class View(ABC):
    """One test-time view of an image."""

    def forward(self, image: Tensor) -> Tensor:
        """The view's input from ``[B, 3, H, W]`` images."""
        return image

    def resolution(self, default: int) -> int:
        """Processing resolution (longest edge; 0 = native) of this view, given the model's."""
        return default

    def inverse(self, task: Task, pred: Tensor) -> Tensor:
        """A ``[..., C, H, W]`` prediction of this view brought back into the input's frame."""
        return pred


class PlainView(View):
    """The image as it is, at the model's processing resolution."""

    def __repr__(self) -> str:
        return "PlainView()"


class Augmentation(ABC):
    """A family of test-time views (chosen by ``class_path`` in ``Ensemble.tta``)."""

    @abstractmethod
    def views(self) -> list[View]:
        """The views this augmentation adds to the plain one."""


class _Flipped(View):
    def forward(self, image: Tensor) -> Tensor:
        return image.flip(-1)

    def inverse(self, task: Task, pred: Tensor) -> Tensor:
        # The task knows how its output mirrors: normals also negate x (Normal.flip_horizontal).
        return task.flip_horizontal(pred)

    def __repr__(self) -> str:
        return "HorizontalFlip()"


class HorizontalFlip(Augmentation):
    """The mirrored image; its prediction is mirrored back (normals: x negated as well)."""

    def views(self) -> list[View]:
        return [_Flipped()]

    def __repr__(self) -> str:
        return "HorizontalFlip()"


@dataclass(frozen=True)
class _Resized(View):
    size: int

    def resolution(self, default: int) -> int:
        return self.size


class Rescale(Augmentation):
    """The image at other processing resolutions (longest edge in pixels), one view per size;
    predictions come back at the input's size (the model resizes them), so nothing else is undone.

    Args:
        sizes: processing resolutions, e.g. ``[96, 160]`` around a model's 128.
    """

    def __init__(self, sizes: list[int]) -> None:
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"Rescale needs one or more positive sizes (longest edge in pixels), got {sizes}")
        self.sizes = [int(s) for s in sizes]

    def views(self) -> list[View]:
        return [_Resized(s) for s in self.sizes]

    def __repr__(self) -> str:
        return f"Rescale(sizes={self.sizes})"
