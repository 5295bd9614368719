"""Generative pretraining of a small diffusion prior for the embedded default (:mod:`.module`),
its export as a Stable Diffusion folder (:mod:`.export`) and ``lotus_pl prior`` (:mod:`.cli`)."""

from lotus_pl.prior.export import PriorExport, export_prior
from lotus_pl.prior.module import ImagePrior, TinyTextEncoder

__all__ = ["ImagePrior", "PriorExport", "TinyTextEncoder", "export_prior"]
