"""Zero-shot evaluation as the papers do it: benchmark converters, the results callback, the suite.

* :mod:`~lotus_pl.evaluation.datasets` / :mod:`~lotus_pl.evaluation.normals`: ``lotus_pl data
  nyuv2|kitti|eth3d|scannet|diode|normals`` (distributed layouts -> shards + manifests), with the
  crops of :mod:`~lotus_pl.evaluation.crops` written as ``mask.png``;
* :class:`EvaluationResults`: the callback ``experiments/eval/*.yaml`` install, which writes each
  ``lotus_pl test`` run's metrics to JSON;
* :mod:`~lotus_pl.evaluation.suite`: ``lotus_pl eval-suite``, one ``lotus_pl test`` per dataset and
  the paper-style table (:mod:`~lotus_pl.evaluation.table`, :mod:`~lotus_pl.evaluation.reference`).
"""

from lotus_pl.evaluation.results import EvaluationResults

__all__ = ["EvaluationResults"]
