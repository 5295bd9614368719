"""Ensembles and uncertainty: Lotus-G noise seeds and test-time augmentation, combined per task
(Marigold's alignment for affine-invariant depth, the sphere for normals), the members' spread as a
per-pixel uncertainty, its evaluation by sparsification (AUSE / AURG), and its use as a confidence.

* :mod:`~lotus_pl.ensembles.ensemble`: :class:`Ensemble`, the ``model.ensemble`` switch;
* :mod:`~lotus_pl.ensembles.augmentations`: :class:`HorizontalFlip`, :class:`Rescale`;
* :mod:`~lotus_pl.ensembles.reductions`: :class:`MedianAlign`, :class:`MeanAlign`, :class:`SphereMean`,
  :class:`Mean`, :class:`Median`;
* :mod:`~lotus_pl.ensembles.sparsification`: :class:`SparsificationMetrics` (AUSE / AURG, exact under DDP);
* :mod:`~lotus_pl.ensembles.confidence`: dropping uncertain pixels before 3D reconstruction.
"""

from lotus_pl.ensembles.augmentations import Augmentation, HorizontalFlip, Rescale
from lotus_pl.ensembles.ensemble import Ensemble, uncertainty_key
from lotus_pl.ensembles.reductions import Mean, MeanAlign, Median, MedianAlign, Reduction, SphereMean
from lotus_pl.ensembles.sparsification import AngularPixelErrors, DepthPixelErrors, PixelErrors, SparsificationMetrics

__all__ = [
    "AngularPixelErrors", "Augmentation", "DepthPixelErrors", "Ensemble", "HorizontalFlip", "Mean", "MeanAlign",
    "Median", "MedianAlign", "PixelErrors", "Reduction", "Rescale", "SparsificationMetrics", "SphereMean",
    "uncertainty_key",
]
