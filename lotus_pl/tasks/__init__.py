"""Dense prediction tasks: each owns its target encoding, decoding, masks, metrics and outputs."""

from lotus_pl.tasks.albedo import Albedo
from lotus_pl.tasks.base import Task
from lotus_pl.tasks.depth import Depth, DepthEncoding, NormalizedDepth, NormalizedDisparity
from lotus_pl.tasks.normal import Normal

__all__ = ["Task", "Albedo", "Depth", "DepthEncoding", "NormalizedDepth", "NormalizedDisparity", "Normal"]
