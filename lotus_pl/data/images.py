"""Images to predict on: a file, a folder or a glob, in any format PIL reads.

Grayscale, RGBA (composited on white), palette, 16-bit and EXIF-rotated images all become
``[3, H, W]`` float tensors in [-1, 1] in their upright orientation. An image that cannot be read
is reported (file named) and skipped; the rest continue.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def list_images(spec: str) -> list[Path]:
    """Expand ``spec`` (a file, a folder searched recursively, or a glob) to sorted image paths."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    else:
        found = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise FileNotFoundError(f"no images found at {spec!r} (a file, a folder, or a glob such as 'photos/*.jpg')")
    return sorted(found)


def load_image(path: str | Path) -> torch.Tensor:
    """Read ``path`` as an upright RGB ``[3, H, W]`` tensor in [-1, 1]."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.repeat((arr / peak)[..., None], 3, axis=-1)
        else:
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).clamp(0, 1) * 2 - 1


class ImageFiles(Dataset):
    """Images for ``lotus_pl predict``; unreadable files yield ``None`` and are skipped by the collate."""

    def __init__(self, spec: str) -> None:
        self.paths = list_images(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        path = self.paths[index]
        try:
            return {"image": load_image(path), "path": str(path)}
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log.warning("skipping %s: cannot read it as an image (%s)", path, exc)
            return None


def collate_images(items: list[dict | None]) -> dict:
    """Batch same-sized images; drop unreadable ones. Different sizes need batch size 1."""
    items = [it for it in items if it is not None]
    if not items:
        return {"image": torch.empty(0, 3, 1, 1), "path": []}
    sizes = {tuple(it["image"].shape) for it in items}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes {sorted(sizes)} in one batch; use predict_batch_size=1")
    return {"image": torch.stack([it["image"] for it in items]), "path": [it["path"] for it in items]}
