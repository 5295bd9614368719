"""Write evaluation samples into WebDataset shards plus a manifest, and read the source files.

Every evaluation converter (``lotus_pl.evaluation.datasets``) reduces its dataset to a stream of
:class:`EvalSample` (image bytes, ground truth in metres or unit normals, an optional scoring mask)
and hands it to :func:`write_eval_shards`, so the shard format lives in one place:

* ``rgb.png`` / ``rgb.jpg``: the source image bytes when it is used as is (no re-encoding), PNG
  when the converter had to crop or resize it;
* ``depth.png`` (uint16, ``depth_scale`` in the json) when the source is itself integer depth
  (NYUv2, ScanNet, KITTI: stored verbatim, lossless), ``depth.npy`` (float32) when it is float;
* ``normal.png`` / ``normal.npy`` likewise for normals;
* ``mask.png``: nonzero = pixel may be scored (an evaluation crop, a dataset's validity mask).

Samples go ``samples_per_shard`` to a shard, so that evaluation on several GPUs, which splits the
shards across ranks, stays balanced. Tar bytes are reproducible (fixed member mtime).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from lotus_pl.data.manifest import Manifest, ShardEntry, sha256_file
from lotus_pl.data.samples import encode_npy

_MTIME = 0.0


@dataclass
class EvalSample:
    """One evaluation sample before encoding.

    ``rgb`` is either encoded bytes (``rgb_ext`` names their format) or a uint8 ``[H, W, 3]`` array
    (written as PNG). Depth comes either as ``depth_uint16`` with ``depth_scale`` (value / scale =
    metres, 0 = invalid) or as float ``depth`` in metres. ``normal`` is ``[H, W, 3]`` float (zero =
    invalid) or ``normal_png`` bytes already in the shard format. ``mask`` is bool ``[H, W]``.
    """

    key: str
    size: tuple[int, int]  # (H, W)
    rgb: bytes | np.ndarray
    rgb_ext: str = "png"
    depth_uint16: np.ndarray | None = None
    depth_scale: float | None = None
    depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    normal_png: bytes | None = None
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> dict[str, bytes | str]:
        """The WebDataset sample: ``__key__`` and the encoded fields."""
        height, width = self.size
        sample: dict[str, bytes | str] = {"__key__": self.key}
        if isinstance(self.rgb, np.ndarray):
            sample["rgb.png"] = png_bytes(_check_size(self.rgb, self.size, "rgb"))
        else:
            sample[f"rgb.{self.rgb_ext}"] = self.rgb
        meta = dict(self.meta, height=height, width=width)
        if self.depth_uint16 is not None:
            if self.depth_scale is None or self.depth_uint16.dtype != np.uint16:
                raise ValueError(f"{self.key}: integer depth needs a uint16 array and a depth_scale")
            sample["depth.png"] = png_bytes(_check_size(self.depth_uint16, self.size, "depth"))
            meta["depth_scale"] = float(self.depth_scale)
        elif self.depth is not None:
            depth = np.where(np.isfinite(self.depth) & (self.depth > 0), self.depth, 0.0)
            sample["depth.npy"] = encode_npy(_check_size(depth, self.size, "depth"))
        if self.normal_png is not None:
            sample["normal.png"] = self.normal_png
        elif self.normal is not None:
            sample["normal.npy"] = encode_npy(_check_size(self.normal, self.size, "normal"))
        if self.mask is not None:
            sample["mask.png"] = png_bytes(_check_size(self.mask, self.size, "mask").astype(np.uint8) * 255)
        sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
        return sample


def _check_size(arr: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    if tuple(arr.shape[:2]) != tuple(size):
        raise ValueError(f"{name} has size {arr.shape[:2]}, the sample is {size}")
    return arr


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` / ``[H, W, 3]`` or uint16 ``[H, W]`` -> lossless PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def sample_key(relative_path: str) -> str:
    """A WebDataset key from a source path: no dots (they start the extension), no folders."""
    stem = relative_path.rsplit(".", 1)[0] if "." in Path(relative_path).name else relative_path
    return stem.replace("/", "-").replace("\\", "-").replace(".", "_")


# --------------------------------------------------------------------------- reading sources
def read_rgb(path: Path) -> tuple[bytes, str, tuple[int, int]]:
    """An image file's own bytes, its format (``png`` / ``jpg``) and (H, W); PNG bytes for others."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        size = (img.height, img.width)
        fmt = (img.format or "").upper()
        if fmt == "PNG" and img.mode in ("RGB", "L", "RGBA", "P"):
            return data, "png", size
        if fmt == "JPEG":
            return data, "jpg", size
        return png_bytes(np.asarray(img.convert("RGB"))), "png", size


def read_rgb_array(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (for converters that crop or resize)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_uint16_png(path: Path) -> np.ndarray:
    """A 16-bit (or 8-bit) single-channel PNG as uint16, refusing anything else."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth PNG, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: depth values outside the uint16 range")
        arr = arr.astype(np.uint16)
    return arr


def read_float32_raw(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A headerless little-endian float32 ``[H, W]`` file (ETH3D's ground truth depth)."""
    data = np.fromfile(path, dtype="<f4")
    if data.size != size[0] * size[1]:
        raise ValueError(f"{path}: {data.size} float32 values, expected {size[0]} x {size[1]} = {size[0] * size[1]}")
    return data.reshape(size)


# --------------------------------------------------------------------------- writing
def write_eval_shards(
    samples: Iterable[EvalSample],
    out_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    name: str,
    licence: str,
    created_by: str,
    samples_per_shard: int = 32,
) -> Manifest:
    """Write ``samples`` into ``<out_dir>/<name>-NNNNNN.tar`` shards and save their manifest.

    The manifest's ``resolution`` is the first sample's (datasets of mixed sizes keep each
    sample's own in its json), and its ``depth_scale`` the first integer-depth sample's (1.0 for
    float depth, whose values are metres).
    """
    if samples_per_shard <= 0:
        raise ValueError("samples_per_shard must be positive")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(manifest_path)
    manifest_dir = manifest_path.resolve().parent
    manifest_dir.mkdir(parents=True, exist_ok=True)

    shards: list[ShardEntry] = []
    keys: set[str] = set()
    seen: set[str] = set()
    first: EvalSample | None = None
    sink, count, path = None, 0, None

    def close() -> None:
        if sink is None:
            return
        sink.close()
        os.replace(str(path) + ".tmp", path)
        shards.append(ShardEntry(os.path.relpath(path, manifest_dir), count, sha256_file(path)))

    for sample in samples:
        if sample.key in seen:
            raise ValueError(f"duplicate sample key {sample.key!r}")
        seen.add(sample.key)
        first = first or sample
        if sink is None or count == samples_per_shard:
            close()
            path = out / f"{name}-{len(shards):06d}.tar"
            sink, count = wds.TarWriter(str(path) + ".tmp", mtime=_MTIME, encoder=False), 0
        encoded = sample.encode()
        keys.update(k for k in encoded if not k.startswith("__"))
        sink.write(encoded)
        count += 1
    close()
    if first is None:
        raise ValueError(f"{name}: no samples found to convert")

    manifest = Manifest(
        name=name,
        shards=shards,
        keys=sorted(keys),
        resolution=list(first.size),
        depth_scale=float(first.depth_scale or 1.0),
        licence=licence,
        created_by=created_by,
        intrinsics=None,
    )
    manifest.save(manifest_path)
    print(f"{name}: {manifest.num_samples} samples in {len(shards)} shards -> {manifest_path}")
    return manifest
