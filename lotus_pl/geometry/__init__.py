"""Depth to 3D: one view (:mod:`.single_view`, ``lotus_pl reconstruct``) and several views of one
scene (:mod:`.cameras`, :mod:`.multiview_align`, :mod:`.fusion`, :mod:`.recon_metrics`,
``lotus_pl fuse``). The names of the single-view module are re-exported here, as before.

Multi-view modules that need Open3D (the ``.[3d]`` extra) import it only when used.
"""

from lotus_pl.geometry.single_view import *  # noqa: F401,F403
from lotus_pl.geometry.single_view import __all__ as _single_view_all

__all__ = list(_single_view_all)
