"""Your own data: RGB images with depth / normals / masks in common formats -> training shards
(``lotus_pl data folder``; guide: docs/own_data.md)."""

from lotus_pl.data.folder.source import make_folder

__all__ = ["make_folder"]
