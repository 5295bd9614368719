"""How ensemble members become one prediction and a per-pixel uncertainty.

Depth members from an affine-invariant model each carry their own unknown scale and shift, so they
are aligned to one another before they are combined, as Marigold does. The alignment and the
combination are diffusers' ``MarigoldDepthPipeline.ensemble_depth`` (per-member scale and shift
solved jointly by BFGS on the pairwise RMS differences, a weak pull of the result to [0, 1], then the
median or mean, and the result min-max normalised to [0, 1]; it needs scipy). Normals are combined
on the sphere with ``MarigoldNormalsPipeline.ensemble_normals``. Where lotus_pl differs:

- diffusers ensembles one image at a time; :meth:`Reduction.__call__` takes ``[members, B, C, H, W]``
  and loops over the batch;
- one member is returned unchanged with zero uncertainty (diffusers would min-max normalise it), so
  an ensemble of one reproduces the single call exactly;
- two members under ``MedianAlign`` (a flip pair) take their mean and half their difference (the
  median and MAD of two numbers), where diffusers' ``torch.median`` would take the lower one and
  report a MAD of 0 everywhere;
- normal uncertainty is reported in degrees (diffusers: the mean angle to the mean over pi);
- tasks without a geometric structure (albedo, new tasks) use a plain per-pixel :class:`Mean` or
  :class:`Median`.

Uncertainty is the spread of the aligned members: the median absolute deviation from the median
(``MedianAlign``, ``Median``), the standard deviation (``MeanAlign``, ``Mean``), the mean angle to
the mean normal (``SphereMean``). Depth uncertainty is in the units of the output (relative [0, 1]).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["MeanAlign", "MedianAlign", "Mean", "Median", "Reduction", "SphereMean"]


class Reduction(ABC):
    """Combine ensemble members into a prediction and an uncertainty map."""

    def __call__(self, members: Tensor) -> tuple[Tensor, Tensor]:
        """``[M, B, C, H, W]`` members -> ``([B, C, H, W]`` prediction, ``[B, 1, H, W]`` uncertainty)."""
        if members.dim() != 5:
            raise ValueError(f"{self!r}: expected members [M, B, C, H, W], got {tuple(members.shape)}")
        if members.shape[0] == 1:  # nothing to combine: the single prediction as it is
            return members[0], members.new_zeros(members.shape[1], 1, *members.shape[-2:])
        preds, spreads = zip(*(self.combine(members[:, b]) for b in range(members.shape[1])))
        return torch.cat(preds), torch.cat(spreads)

    @abstractmethod
    def combine(self, members: Tensor) -> tuple[Tensor, Tensor]:
        """One image's ``[M, C, H, W]`` members (M >= 2) -> ``[1, C, H, W]``, ``[1, 1, H, W]``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class _AlignedDepth(Reduction):
    """Marigold's affine alignment of the members, then ``reduction``."""

    reduction: str

    def __init__(self, regularizer_strength: float = 0.02, max_iter: int = 2, tol: float = 1e-3, max_res: int = 1024) -> None:
        self.regularizer_strength = regularizer_strength
        self.max_iter = max_iter
        self.tol = tol
        self.max_res = max_res

    def combine(self, members: Tensor) -> tuple[Tensor, Tensor]:
        from diffusers import MarigoldDepthPipeline

        if members.shape[1] != 1:
            raise ValueError(f"{self!r} combines one-channel depth or disparity, got {members.shape[1]} channels")
        # torch.median takes the lower middle value of an even count: for two members (a flip pair)
        # the "median" would be one of them and the MAD 0 everywhere. The median of two numbers is
        # their mean and their MAD half their difference = std / sqrt(2), so two members use the mean.
        pair = self.reduction == "median" and members.shape[0] == 2
        pred, spread = MarigoldDepthPipeline.ensemble_depth(
            members.float(), scale_invariant=True, shift_invariant=True, output_uncertainty=True,
            reduction="mean" if pair else self.reduction, regularizer_strength=self.regularizer_strength,
            max_iter=self.max_iter, tol=self.tol, max_res=self.max_res)
        if pair:
            spread = spread / 2**0.5
        return pred.to(members.dtype), spread.to(members.dtype)


class MedianAlign(_AlignedDepth):
    """Affine-invariant depth: align the members (scale and shift each), take the per-pixel median;
    uncertainty = median absolute deviation of the aligned members. Marigold's default."""

    reduction = "median"


class MeanAlign(_AlignedDepth):
    """Affine-invariant depth: align the members, take the per-pixel mean; uncertainty = their std."""

    reduction = "mean"


class SphereMean(Reduction):
    """Unit normals: the normalised mean of the members (``closest``: the member nearest to it, as
    Marigold's default); uncertainty = mean angle between the members and the mean, in degrees."""

    def __init__(self, closest: bool = False) -> None:
        self.closest = closest

    def combine(self, members: Tensor) -> tuple[Tensor, Tensor]:
        from diffusers import MarigoldNormalsPipeline

        if members.shape[1] != 3:
            raise ValueError(f"{self!r} combines 3-channel normals, got {members.shape[1]} channels")
        pred, spread = MarigoldNormalsPipeline.ensemble_normals(
            members, output_uncertainty=True, reduction="closest" if self.closest else "mean")
        return pred, spread * 180.0  # diffusers: mean angle / pi -> degrees


class Mean(Reduction):
    """Any task: the per-pixel mean of the members; uncertainty = std, averaged over channels."""

    def combine(self, members: Tensor) -> tuple[Tensor, Tensor]:
        return members.mean(0, keepdim=True), members.std(0, keepdim=True).mean(1, keepdim=True)


class Median(Reduction):
    """Any task: the per-pixel median; uncertainty = median absolute deviation, averaged over channels."""

    def combine(self, members: Tensor) -> tuple[Tensor, Tensor]:
        median = members.median(0, keepdim=True).values
        return median, (members - median).abs().median(0, keepdim=True).values.mean(1, keepdim=True)
