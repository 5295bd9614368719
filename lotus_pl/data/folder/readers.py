"""Reading a user's own annotation files: depth (16-bit PNG, NPY, PFM, EXR), normals (PNG, NPY) in a
named convention, masks and intrinsics.

Everything returns plain numpy arrays in the project's units and frame, so the converter
(:mod:`lotus_pl.data.folder.source`) never asks which format a file had:

* depth: float64 ``[H, W]`` metres of *planar* depth (z, not the distance to the camera centre),
  values as stored divided by ``depth_scale`` (a 16-bit PNG's stored value per metre: 1000 for
  millimetres, 256 for KITTI; 1 for float files already in metres). Nothing is judged valid or
  invalid here: that rule lives in the converter, in one place.
* normals: float64 ``[H, W, 3]`` in the project frame (x image-left, y up, z toward the camera, the
  Lotus/DSINE convention; see :mod:`lotus_pl.data.renderer`), converted from the file's convention,
  with all-zero / non-finite vectors left at zero (invalid).
* masks: boolean ``[H, W]``, True where a pixel may be supervised (nonzero in the file).

Errors are :class:`AnnotationError` with the file's path in the message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

DEPTH_SUFFIXES = (".png", ".npy", ".pfm", ".exr")
NORMAL_SUFFIXES = (".png", ".npy", ".exr")
MASK_SUFFIXES = (".png", ".npy", ".bmp", ".tif", ".tiff")

NormalConvention = Literal["lotus", "dsine", "opengl", "omnidata", "opencv"]

#: file convention -> per-axis sign that takes it to the project frame (x left, y up, z toward camera)
#: lotus / dsine: the project's own. opengl / omnidata: x right, y up, z toward the camera (OpenGL's
#: camera looks down -z), so x flips. opencv: x right, y down, z away from the camera, all three flip.
NORMAL_SIGNS: dict[str, tuple[float, float, float]] = {
    "lotus": (1.0, 1.0, 1.0),
    "dsine": (1.0, 1.0, 1.0),
    "opengl": (-1.0, 1.0, 1.0),
    "omnidata": (-1.0, 1.0, 1.0),
    "opencv": (-1.0, -1.0, -1.0),
}


class AnnotationError(ValueError):
    """An annotation file that cannot be read or has the wrong shape (the message names the file)."""


# --------------------------------------------------------------------------- #
# PFM (Portable Float Map): "PF" (3 channels) or "Pf" (1), "W H", a scale whose sign is the byte
# order (negative: little-endian), then float32 rows from the bottom of the image to the top.
# --------------------------------------------------------------------------- #
def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM file as float32 ``[H, W]`` or ``[H, W, 3]``, top row first."""
    data = Path(path).read_bytes()
    match = re.match(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s", data)
    if match is None:
        raise AnnotationError(f"{path}: not a PFM file (header must be 'PF' or 'Pf', width height, scale)")
    channels = 3 if match.group(1) == b"PF" else 1
    width, height, scale = int(match.group(2)), int(match.group(3)), float(match.group(4))
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    count = width * height * channels
    body = data[match.end():]
    if len(body) < count * 4:
        raise AnnotationError(f"{path}: truncated PFM ({len(body)} bytes of data, {count * 4} expected)")
    arr = np.frombuffer(body, dtype=dtype, count=count).reshape(height, width, channels)[::-1]
    return np.ascontiguousarray(arr[..., 0] if channels == 1 else arr, dtype=np.float32)


def write_pfm(path: str | Path, arr: np.ndarray) -> None:
    """Write float ``[H, W]`` or ``[H, W, 3]`` as little-endian PFM (tests and users' own tools)."""
    arr = np.asarray(arr, dtype="<f4")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"PFM holds [H, W] or [H, W, 3], got {arr.shape}")
    header = f"{'PF' if arr.ndim == 3 else 'Pf'}\n{arr.shape[1]} {arr.shape[0]}\n-1.0\n".encode("ascii")
    Path(path).write_bytes(header + np.ascontiguousarray(arr[::-1]).tobytes())


# --------------------------------------------------------------------------- #
# EXR through the ASWF's OpenEXR bindings (the ``exr`` extra)
# --------------------------------------------------------------------------- #
def read_exr(path: str | Path) -> np.ndarray:
    """An OpenEXR file's first part as float32 ``[H, W]`` (one channel, or ``Z`` / ``Y`` / ``R`` /
    ``depth`` of several) or ``[H, W, 3]`` (RGB / XYZ channels)."""
    try:
        import OpenEXR
    except ImportError as exc:
        raise AnnotationError(f"{path}: reading EXR needs the OpenEXR package: pip install 'lotus_pl[exr]'") from exc
    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = {name: np.asarray(ch.pixels, dtype=np.float32) for name, ch in exr.channels().items()}
    except Exception as exc:  # OpenEXR raises RuntimeError / OSError for damaged files
        raise AnnotationError(f"{path}: cannot read EXR: {exc}") from exc
    names = {name.split(".")[-1]: name for name in channels}  # "depth.Z" layers count as "Z"
    for triple in (("R", "G", "B"), ("X", "Y", "Z")):
        if all(c in names for c in triple) and len(channels) >= 3:
            return np.stack([channels[names[c]] for c in triple], axis=-1)
    if len(channels) == 1:
        return next(iter(channels.values()))
    for single in ("Z", "depth", "Y", "R", "V"):
        if single in names:
            return channels[names[single]]
    raise AnnotationError(f"{path}: cannot tell which of the EXR channels {sorted(channels)} holds the values")


def _read_array(path: Path) -> np.ndarray:
    """Any supported file as its stored numbers (PNG values unscaled)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".pfm":
            arr = read_pfm(path)
        elif suffix == ".exr":
            arr = read_exr(path)
        else:
            with Image.open(path) as img:
                img.load()
                arr = np.asarray(img)
    except AnnotationError:
        raise
    except Exception as exc:  # PIL and numpy raise many types for damaged files
        raise AnnotationError(f"{path}: cannot read: {exc}") from exc
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise AnnotationError(f"{path}: holds {arr.dtype} values, not numbers")
    return arr


def read_depth(path: str | Path, depth_scale: float | None) -> np.ndarray:
    """Planar depth in metres (stored value / ``depth_scale``) as float64 ``[H, W]``.

    A PNG must be 16-bit single-channel (8 bits cannot hold depth to any useful precision) and
    needs ``depth_scale``; float files default to metres (scale 1).
    """
    path = Path(path)
    arr = _read_array(path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise AnnotationError(f"{path}: depth must be a single-channel [H, W] map, got shape {arr.shape}")
    if path.suffix.lower() == ".png" or np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint8:
            raise AnnotationError(f"{path}: an 8-bit depth image cannot hold depth to a useful precision; "
                                  "store it as a 16-bit PNG (with --depth_scale), NPY, PFM or EXR")
        if depth_scale is None:
            raise AnnotationError(f"{path}: integer depth needs --depth_scale, the stored value per metre "
                                  "(1000 for millimetres, 256 for KITTI-style PNGs)")
    scale = 1.0 if depth_scale is None else float(depth_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise AnnotationError(f"depth_scale must be a positive number, got {depth_scale!r}")
    return arr.astype(np.float64) / scale


def read_normals(path: str | Path, convention: str) -> np.ndarray:
    """Normals ``[H, W, 3]`` in the project frame, from a PNG (8- or 16-bit, ``v / max * 2 - 1``,
    an all-zero pixel invalid) or an NPY / EXR (float ``[H, W, 3]`` or ``[3, H, W]``) in ``convention``."""
    path = Path(path)
    if convention not in NORMAL_SIGNS:
        raise AnnotationError(f"unknown normal convention {convention!r}; choose one of {sorted(NORMAL_SIGNS)}")
    arr = _read_array(path)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise AnnotationError(f"{path}: normals must be [H, W, 3] (RGB), got shape {arr.shape}")
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.integer):
        peak = 65535.0 if arr.dtype == np.uint16 else 255.0
        invalid = np.all(arr == 0, axis=-1)
        normals = arr.astype(np.float64) / peak * 2.0 - 1.0
    else:
        normals = arr.astype(np.float64)
        invalid = ~np.isfinite(normals).all(axis=-1) | (np.abs(normals).sum(axis=-1) == 0)
    normals = np.where(invalid[..., None], 0.0, normals) * np.asarray(NORMAL_SIGNS[convention])
    return normals


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as boolean ``[H, W]``: nonzero = the pixel may be supervised."""
    path = Path(path)
    arr = _read_array(path)
    if arr.ndim == 3:  # an RGB(A) mask: any colour channel set
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (3, 4) else arr
    if arr.ndim != 2:
        raise AnnotationError(f"{path}: a mask must be a single-channel [H, W] image, got shape {arr.shape}")
    return np.asarray(arr != 0)


def read_intrinsics(path: str | Path) -> list[float]:
    """``fx fy cx cy`` (4 numbers) or a 3×3 camera matrix K (9 numbers) from a text file, OpenCV's
    pixel-index convention (the first pixel's centre is 0)."""
    path = Path(path)
    try:
        values = np.loadtxt(path, dtype=np.float64, delimiter=None, ndmin=1, comments="#").ravel()
    except Exception as exc:
        raise AnnotationError(f"{path}: cannot read intrinsics: {exc}") from exc
    return intrinsics_from_values(values.tolist(), str(path))


def intrinsics_from_values(values: list[float], where: str) -> list[float]:
    """``[fx, fy, cx, cy]`` from 4 numbers or a row-major 3×3 K; refuses anything else."""
    if len(values) == 9:
        values = [values[0], values[4], values[2], values[5]]
    if len(values) != 4 or not all(np.isfinite(values)) or values[0] <= 0 or values[1] <= 0:
        raise AnnotationError(f"{where}: intrinsics must be fx fy cx cy (fx, fy > 0) or a 3x3 K, got {values}")
    return [float(v) for v in values]
