"""Decode one raw WebDataset sample into tensors, and the matching PNG encoders.

Every dataset in the project is stored as WebDataset shards with the same
per-sample layout, so this is the single place that knows the byte formats:

* ``rgb.png`` / ``rgb.jpg``: any PIL-readable image, converted to RGB.
* ``depth.png``: uint16 PNG, metres = value / ``depth_scale`` (from ``json``);
  0 means invalid.
* ``depth.npy``: float32 ``[H,W]`` metres (``np.save`` bytes), for ground truth
  that 16 bits cannot hold to its own precision (ETH3D, DIODE: 0.5 m to
  hundreds of metres); 0 or non-finite means invalid. No ``depth_scale``.
* ``normal.png``: uint8 PNG, ``n = v / 255 * 2 - 1`` in the camera frame
  (x left, y up, z toward the camera); an all-zero pixel means invalid.
* ``normal.npy``: float32 ``[H,W,3]`` normals in the same frame, for float
  ground truth that 8 bits would round by up to ~0.3°; a zero or non-finite
  vector means invalid.
* ``albedo.png``: uint8 RGB reflectance.
* ``json``: per-sample metadata (``depth_scale``, ``fx, fy, cx, cy``, ...).
* any other field ``<name>`` a task asks for (its ``gt_key``): ``<name>.npy``, a float
  ``[H,W]`` or ``[H,W,C]`` array, decoded as is to ``[C,H,W]`` float32 (non-finite values kept,
  for the task's ``valid_mask`` to judge), or ``<name>.png``, decoded to ``[C,H,W]`` float32 in
  [0, 1] (8- or 16-bit). New tasks need no change here.

Decoding failures raise :class:`SampleError` naming the sample key and shard,
so a bad sample deep inside a long run can be found.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# Logical field -> accepted raw keys, first present wins.
FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb.png", "rgb.jpg", "rgb.jpeg", "rgb.webp"),
    "depth": ("depth.png", "depth.npy"),
    "normal": ("normal.png", "normal.npy"),
    "albedo": ("albedo.png",),
    "mask": ("mask.png",),
    "json": ("json",),
}
_ALIASES = {"image": "rgb"}


class SampleError(ValueError):
    """A sample is missing a field or has bytes that cannot be decoded."""


def _where(raw: Mapping[str, Any]) -> str:
    return f"sample {raw.get('__key__', '?')!r} in shard {raw.get('__url__', '?')!r}"


def _field_keys(field: str) -> tuple[str, ...]:
    """Raw keys a logical field may be stored under; fields of new tasks: ``<field>.npy|png``."""
    return FIELD_KEYS.get(field, (f"{field}.npy", f"{field}.png"))


def _find(raw: Mapping[str, Any], field: str) -> str | None:
    for key in _field_keys(field):
        if key in raw:
            return key
    return None


def _open(raw: Mapping[str, Any], key: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(raw[key]))
        img.load()
        return img
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(f"{_where(raw)}: cannot decode {key!r}: {exc}") from exc


def _to_rgb_float(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 [H,W,3] in [0,1], keeping 16-bit precision where PIL has it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float32) / 65535.0
        return np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=-1)
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=-1)
    # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, RGB: PIL handles the conversion
    # (alpha is dropped, palettes expanded).
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _load_npy(raw: Mapping[str, Any], key: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """An ``np.save`` payload as float64 with ``ndim`` dimensions, or one of several (no pickles)."""
    try:
        arr = np.load(io.BytesIO(raw[key]), allow_pickle=False)
    except Exception as exc:
        raise SampleError(f"{_where(raw)}: cannot decode {key!r}: {exc}") from exc
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed or not np.issubdtype(arr.dtype, np.number):
        dims = " or ".join(str(n) for n in allowed)
        raise SampleError(f"{_where(raw)}: {key!r} must be a {dims}-D numeric array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64)


def _depth_scale(raw: Mapping[str, Any], meta: Mapping[str, Any]) -> float:
    """The json's depth_scale; a zero, negative or non-finite one would silently void every pixel."""
    try:
        scale = float(meta["depth_scale"])
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise SampleError(f"{_where(raw)}: depth_scale must be a positive finite number, got {meta['depth_scale']!r}")
    return scale


def _chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def image_to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``image`` (``decode_sample(..., uint8_image=True)``) -> float in [-1, 1], bit for bit what
    the float decode gives; done on the device, so loader workers ship a quarter of the bytes."""
    return image.to(torch.float32).div_(255.0).mul_(2.0).sub_(1.0)


def _decode_generic(raw: Mapping[str, Any], key: str) -> torch.Tensor:
    """``<name>.npy`` as stored, or ``<name>.png`` scaled to [0, 1]; always ``[C, H, W]`` float32."""
    if key.endswith(".npy"):
        arr = _load_npy(raw, key, ndim=(2, 3))  # [H, W] or [H, W, C]
    else:
        img = _open(raw, key)
        arr = np.asarray(img)
        peak = 65535.0 if arr.dtype == np.uint16 or img.mode.startswith("I;16") else 255.0
        arr = arr.astype(np.float32) / peak
    arr = arr.astype(np.float32)
    return _chw(arr[..., None] if arr.ndim == 2 else arr)


def decode_sample(
    raw: Mapping[str, Any], required: Sequence[str] = ("rgb", "depth"), uint8_image: bool = False,
    extra: Sequence[str] = (),
) -> dict[str, torch.Tensor | dict]:
    """Decode a raw (bytes-valued) WebDataset sample.

    Returns ``image`` [3,H,W] in [-1,1] (uint8 [0, 255] with ``uint8_image``; 16-bit sources are
    rounded to 8 bits then), and when present ``depth`` [1,H,W]
    metres (0 = invalid), ``normal`` [3,H,W] unit (0 = invalid), ``albedo``
    [3,H,W] in [-1,1], ``intrinsics`` [4] (fx, fy, cx, cy), and ``meta`` (the
    json contents plus ``__key__`` / ``__url__``). ``required`` lists logical
    fields (``rgb``/``image``, ``depth``, ``normal``, ``albedo``, ``json``, or a
    new task's field) whose absence is an error; fields of new tasks are decoded
    when named in ``required`` or ``extra``.
    """
    extra = [*extra, *(_ALIASES.get(n, n) for n in required)]
    for name in required:
        field = _ALIASES.get(name, name)
        if _find(raw, field) is None:
            raise SampleError(
                f"{_where(raw)}: missing required field {name!r} (looked for {list(_field_keys(field))}; "
                f"sample has {sorted(k for k in raw if not k.startswith('__'))})"
            )

    out: dict[str, torch.Tensor | dict] = {}

    meta: dict[str, Any] = {}
    if (key := _find(raw, "json")) is not None:
        try:
            value = raw[key]
            meta = json.loads(value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value)
        except Exception as exc:
            raise SampleError(f"{_where(raw)}: cannot decode 'json': {exc}") from exc
        if not isinstance(meta, dict):
            raise SampleError(f"{_where(raw)}: 'json' must hold an object, got {type(meta).__name__}")
    meta = dict(meta, __key__=raw.get("__key__"), __url__=raw.get("__url__"))

    if (key := _find(raw, "rgb")) is not None:
        img = _open(raw, key)
        if not uint8_image:
            out["image"] = _chw(_to_rgb_float(img) * 2.0 - 1.0)
        elif img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            out["image"] = _chw(np.round(_to_rgb_float(img) * 255.0).astype(np.uint8))
        else:
            out["image"] = _chw(np.asarray(img.convert("RGB")))

    if (key := _find(raw, "depth")) is not None:
        if key == "depth.npy":
            depth = _load_npy(raw, key, ndim=2)
        else:
            img = _open(raw, key)
            if "depth_scale" not in meta:
                raise SampleError(f"{_where(raw)}: 'depth.png' present but json has no 'depth_scale'")
            arr = np.asarray(img)
            if arr.ndim != 2:
                raise SampleError(f"{_where(raw)}: 'depth.png' must be single-channel, got mode {img.mode}")
            scale = _depth_scale(raw, meta)
            depth = arr.astype(np.float64) / scale
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        out["depth"] = torch.from_numpy(depth.astype(np.float32)[None])

    if (key := _find(raw, "normal")) is not None:
        if key == "normal.npy":
            n = _load_npy(raw, key, ndim=3)
            if n.shape[-1] != 3:
                raise SampleError(f"{_where(raw)}: 'normal.npy' must be [H, W, 3], got {n.shape}")
            invalid = ~np.isfinite(n).all(axis=-1)
            n[invalid] = 0.0
        else:
            img = _open(raw, key)
            if img.mode != "RGB":
                raise SampleError(f"{_where(raw)}: 'normal.png' must be 8-bit RGB, got mode {img.mode}")
            arr = np.asarray(img)
            invalid = np.all(arr == 0, axis=-1)
            n = arr.astype(np.float32) / 255.0 * 2.0 - 1.0
        norm = np.linalg.norm(n, axis=-1, keepdims=True)
        n = np.where(norm > 1e-6, n / np.maximum(norm, 1e-6), 0.0)
        n[invalid] = 0.0
        out["normal"] = _chw(n.astype(np.float32))

    if (key := _find(raw, "albedo")) is not None:
        out["albedo"] = _chw(_to_rgb_float(_open(raw, key)) * 2.0 - 1.0)

    if (key := _find(raw, "mask")) is not None:  # 8-bit, nonzero = pixel may be supervised / scored
        arr = np.asarray(_open(raw, key))
        if arr.ndim != 2:
            raise SampleError(f"{_where(raw)}: 'mask.png' must be single-channel")
        out["mask"] = torch.from_numpy(arr != 0)[None]

    for field in extra:  # fields of tasks the project does not know (see the module docstring)
        if field in out or field in FIELD_KEYS or (key := _find(raw, field)) is None:
            continue
        out[field] = _decode_generic(raw, key)

    if all(k in meta for k in ("fx", "fy", "cx", "cy")):
        out["intrinsics"] = torch.tensor([meta[k] for k in ("fx", "fy", "cx", "cy")], dtype=torch.float32)

    shapes = {k: tuple(v.shape[-2:]) for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 3}
    if len(set(shapes.values())) > 1:
        raise SampleError(f"{_where(raw)}: fields have different sizes {shapes}")

    out["meta"] = meta
    return out


# --------------------------------------------------------------------------- #
# Encoders used by the shard writers
# --------------------------------------------------------------------------- #
def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """uint8 [H,W,3] (or float [0,1], rounded) -> PNG bytes."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected [H,W,3], got shape {arr.shape}")
    return _png_bytes(Image.fromarray(arr))


def quantize_depth(depth_m: np.ndarray, scale: float) -> np.ndarray:
    """Metres -> uint16 ``round(d * scale)`` clipped to 65535; non-finite / negative -> 0."""
    d = np.asarray(depth_m, dtype=np.float64)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    return np.clip(np.round(d * scale), 0, 65535).astype(np.uint16)


def encode_depth_png(depth_m: np.ndarray, scale: float) -> bytes:
    """Planar depth in metres [H,W] -> 16-bit grayscale PNG (value = metres * scale)."""
    q = quantize_depth(depth_m, scale)
    if q.ndim != 2:
        raise ValueError(f"expected [H,W] depth, got shape {q.shape}")
    return _png_bytes(Image.fromarray(q))  # uint16 -> mode I;16, stored as 16-bit PNG


def encode_npy(arr: np.ndarray) -> bytes:
    """A float32 array -> ``np.save`` bytes (``depth.npy`` / ``normal.npy``)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def encode_normal_png(normal: np.ndarray) -> bytes:
    """Unit normals [H,W,3] in [-1,1] -> uint8 PNG; zero vectors (invalid) -> (0,0,0)."""
    n = np.asarray(normal, dtype=np.float64)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"expected [H,W,3] normals, got shape {n.shape}")
    valid = np.linalg.norm(n, axis=-1) > 0.5
    q = np.clip(np.round((n + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
    q[~valid] = 0
    return _png_bytes(Image.fromarray(q))
