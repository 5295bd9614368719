"""Reading one image to predict on, in any format PIL reads, as an upright RGB tensor.

Every mode becomes ``[3, H, W]`` floats in [-1, 1] in its upright (EXIF-applied) orientation:

- 8-bit modes (L, RGB, P, 1, CMYK, YCbCr, ...) through PIL's conversion to RGB;
- modes with transparency (RGBA, LA, PA, P with a transparent colour) composited on white;
- 16-bit grayscale (``I;16``) divided by 65535 in float32, so no precision is lost;
- 32-bit integers (``I``): 8-bit or 16-bit data as such, anything else min-max normalised;
- floats (``F``): kept if within [0, 1], else min-max normalised (NaN and inf become 0).

``max_size`` lets the loader do the model's downscaling itself, so that a huge photo never becomes
a huge tensor: an image whose longest edge exceeds it is decoded reduced (JPEG DCT scaling through
``Image.draft``) and resized with PIL's antialiased bilinear filter to exactly the size the model
would resize it to (:func:`processing_size`), which is what ``torch``'s antialiased bilinear
interpolation reproduces. The caller resizes the prediction back to the original size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}

#: EXIF orientations that turn the stored image by 90 degrees (its upright size is transposed).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def processing_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """``(H, W)`` resized so that the longest edge is ``resolution`` (0 keeps it), as the model does."""
    height, width = size
    if resolution <= 0 or max(height, width) == resolution:
        return height, width
    scale = resolution / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _upright(img: Image.Image) -> tuple[bool, tuple[int, int]]:
    """Whether the EXIF orientation turns the stored image by 90 degrees, and its upright ``(H, W)``."""
    width, height = img.size
    turned = img.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS
    return turned, ((width, height) if turned else (height, width))


def upright_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of the image as displayed (EXIF rotation applied), from its header alone."""
    with Image.open(path) as img:
        return _upright(img)[1]


def _unit_range(arr: np.ndarray) -> np.ndarray:
    """Min-max normalise the finite values to [0, 1]; others become 0."""
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros_like(arr, dtype=np.float32)
    low, high = arr[finite].min(), arr[finite].max()
    out = (arr - low) / max(float(high - low), 1e-12)
    return np.where(finite, out, 0.0).astype(np.float32)


def _rgb_or_scalar(img: Image.Image) -> Image.Image:
    """An ``RGB`` image (8-bit data) or an ``F`` image with values in [0, 1] (high-precision data)."""
    if img.mode.startswith("I;16"):
        return Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0)
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if img.mode == "F" and finite.size and finite.min() >= 0 and finite.max() <= 1:
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        elif img.mode == "I" and finite.size and finite.min() >= 0 and finite.max() <= 65535:
            arr = arr / (255.0 if finite.max() <= 255 else 65535.0)
        else:
            arr = _unit_range(arr)
        return Image.fromarray(arr.astype(np.float32))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_size: int = 0) -> torch.Tensor:
    """Read ``path`` as an upright RGB ``[3, H, W]`` tensor in [-1, 1].

    With ``max_size > 0``, an image whose longest edge is larger comes back at
    ``processing_size(upright_size(path), max_size)`` instead of its own size.
    """
    with Image.open(path) as img:
        turned, upright = _upright(img)
        target = processing_size(upright, max_size) if max_size > 0 and max(upright) > max_size else None
        if target is not None:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still at least twice the target
            img.draft(None, (2 * target[0], 2 * target[1]) if turned else (2 * target[1], 2 * target[0]))
        img = _rgb_or_scalar(ImageOps.exif_transpose(img))
        if target is not None and img.size != (target[1], target[0]):
            img = img.resize((target[1], target[0]), Image.Resampling.BILINEAR)
        if img.mode == "F":
            arr = np.repeat(np.asarray(img, dtype=np.float32)[None], 3, axis=0)
        else:
            arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).clamp(0, 1) * 2 - 1
