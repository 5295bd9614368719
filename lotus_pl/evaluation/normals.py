"""Converter for DSINE-style surface-normal evaluation sets (NYUv2, ScanNet, iBims-1, Sintel, OASIS).

``lotus_pl data normals --dataset ibims --root dsine_eval/ibims`` runs it. The layout is DSINE's
(``dsine_eval/<dataset>/<scene>/<name>_img.png``), one sample per image:

* ``<name>_img.png`` (or ``.jpg``): the image;
* ``<name>_normal.png`` (uint8, ``(n + 1) / 2 * 255``, all-zero = invalid: stored as is) or
  ``<name>_normal.npy`` (float ``[H, W, 3]`` or ``[3, H, W]``: stored as float ``normal.npy``, with
  vectors shorter than 0.5 or non-finite marked invalid as DSINE does);
* optionally ``<name>_mask.png`` / ``<name>_mask.npy`` (nonzero = score the pixel) and
  ``<name>_intrins.npy`` (3 × 3 camera matrix, kept as fx, fy, cx, cy in the json).

The normals must end up in lotus_pl's camera frame (x left, y up, z toward the camera; that of
the DSINE / Lotus evaluation data). ``sign`` multiplies the source's three axes to get there, e.g.
``[-1, -1, -1]`` for normals in OpenCV's frame (x right, y down, z forward) facing the camera.
Sintel's ``_normal.exr`` must be converted to ``.npy`` first (no EXR reader is assumed here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from lotus_pl.evaluation.datasets import read_filenames
from lotus_pl.evaluation.shards import EvalSample, png_bytes, read_rgb, sample_key, write_eval_shards

IMAGE_SUFFIXES = ("_img.png", "_img.jpg")


def _sibling(image: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The first existing ``<name><suffix>`` beside ``<name>_img.<ext>``."""
    name = image.name[: image.name.rindex("_img.")]
    return next((image.with_name(name + s) for s in suffixes if image.with_name(name + s).is_file()), None)


def normal_pairs(root: Path, filenames: str | None) -> list[tuple[Path, Path]]:
    """(image, normal): from the list (``<img> <normal>`` per line), else every ``*_img.png|jpg``
    under ``root`` with its ``_normal.npy`` or ``_normal.png``."""
    if filenames is not None:
        return [(root / row[0], root / row[1]) for row in read_filenames(filenames)]
    pairs = []
    for image in sorted(p for suffix in IMAGE_SUFFIXES for p in root.rglob("*" + suffix)):
        normal = _sibling(image, ("_normal.npy", "_normal.png"))
        if normal is None:
            raise FileNotFoundError(f"{image}: no _normal.npy or _normal.png beside it")
        pairs.append((image, normal))
    return pairs


def _read_normal(path: Path, sign: np.ndarray) -> tuple[np.ndarray | None, bytes | None, tuple[int, int]]:
    """Float normals (from .npy) or shard-ready PNG bytes (from .png), and the (H, W)."""
    if path.suffix == ".npy":
        n = np.load(path).astype(np.float32)
        if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
            n = n.transpose(1, 2, 0)
        if n.ndim != 3 or n.shape[-1] != 3:
            raise ValueError(f"{path}: expected [H, W, 3] normals, got {n.shape}")
        valid = np.isfinite(n).all(axis=-1) & (np.linalg.norm(np.nan_to_num(n), axis=-1) > 0.5)
        return np.where(valid[..., None], n * sign, 0.0).astype(np.float32), None, n.shape[:2]
    with Image.open(path) as img:
        is_rgb = img.mode == "RGB"
        arr = np.asarray(img.convert("RGB"))
    if (sign > 0).all():
        return None, path.read_bytes() if is_rgb else png_bytes(arr), arr.shape[:2]
    invalid = (arr == 0).all(axis=-1)
    flipped = np.where(sign < 0, 255 - arr, arr).astype(np.uint8)  # (−n + 1) / 2 · 255 = 255 − v exactly
    flipped[invalid] = 0
    return None, png_bytes(flipped), arr.shape[:2]


def _read_mask(image: Path) -> np.ndarray | None:
    path = _sibling(image, ("_mask.png", "_mask.npy"))
    if path is None:
        return None
    if path.suffix == ".npy":
        mask = np.load(path)
    else:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L"))
    return mask.reshape(mask.shape[:2]) != 0


def _intrinsics(image: Path) -> dict[str, float]:
    path = _sibling(image, ("_intrins.npy",))
    if path is None:
        return {}
    k = np.load(path).astype(np.float64)
    return {"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}


def convert_normals(root: str, dataset: str, out: str | None = None, manifest: str | None = None,
                    filenames: str | None = None, sign: list[float] | None = None, samples_per_shard: int = 32) -> str:
    """A DSINE-style normal evaluation set -> shards (``normal.png`` or ``normal.npy``, ``mask.png``).

    Args:
        root: the dataset's folder (``<scene>/<name>_img.png`` with ``<name>_normal.png|npy``).
        dataset: its name (``nyuv2``, ``scannet``, ``ibims``, ``sintel``, ``oasis``, ...), used in the
            manifest name ``<dataset>_normal_test`` and the default paths.
        out: folder for the shards (``data/eval/<dataset>_normal`` by default).
        manifest: manifest file (``data_manifests/<dataset>_normal_test.yaml`` by default).
        filenames: optional list file (``<img> <normal>`` per line, relative to ``root``).
        sign: per-axis factors (+1 / -1) that bring the source normals into lotus_pl's frame;
            ``[1, 1, 1]`` (none) by default.
        samples_per_shard: samples per shard.
    """
    base = Path(root)
    sign = [1.0, 1.0, 1.0] if sign is None else list(sign)
    factors = np.asarray(sign, dtype=np.float32)
    if factors.shape != (3,) or not np.isin(factors, (-1.0, 1.0)).all():
        raise ValueError(f"sign must be three factors of +1 or -1, got {list(sign)}")
    out = out or f"data/eval/{dataset}_normal"
    manifest = manifest or f"data_manifests/{dataset}_normal_test.yaml"

    def samples() -> Iterator[EvalSample]:
        for image_path, normal_path in normal_pairs(base, filenames):
            data, ext, size = read_rgb(image_path)
            normal, normal_png, normal_size = _read_normal(normal_path, factors)
            if normal_size != size:
                raise ValueError(f"{normal_path}: normals {normal_size} and image {size} differ in size")
            yield EvalSample(
                key=sample_key(image_path.relative_to(base).as_posix()), size=size, rgb=data, rgb_ext=ext,
                normal=normal, normal_png=normal_png, mask=_read_mask(image_path),
                meta={"source": f"{dataset}_normal", "rgb": image_path.relative_to(base).as_posix(),
                      "normal": normal_path.relative_to(base).as_posix(), **_intrinsics(image_path)},
            )

    written = write_eval_shards(samples(), out, manifest, f"{dataset}_normal_test",
                                f"{dataset} surface normals: see the source dataset's terms",
                                f"lotus_pl data normals --dataset {dataset} --root {root} --filenames {filenames} --sign {sign}",
                                samples_per_shard)
    print(f"{dataset}_normal: {written.num_samples} samples")
    return manifest
