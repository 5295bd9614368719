"""Virtual KITTI 2 (Cabon et al., 2020; CC BY-NC-SA 3.0) -> shards in the project's sample format.

Reads the layout as distributed (RGB and depth may be unpacked into separate roots)::

    <raw>/SceneXX/<variation>/frames/rgb/Camera_Z/rgb_IIIII.jpg          1242×375
    <depth_raw>/SceneXX/<variation>/frames/depth/Camera_Z/depth_IIIII.png   uint16 centimetres, 65535 = sky/far

VKITTI has no normals; Lotus computes them from depth by fitting a plane to each pixel's 5×5
neighbourhood, and so does :func:`plane_fit_normals`, on the full frame before cropping so that
border pixels keep their real neighbours. Depth is valid from 1e-5 m to 80 m (65535 = sky is
invalid); ``mask.png`` marks valid depth, and ``depth.png`` keeps the raw centimetres there
(``depth_scale`` 100: lossless).

Lotus's 352×1216 crop (top = H - 352, left = (W - 1216) / 2: the bottom rows, centred, as in the
KITTI benchmark) happens here, for the reason given in :mod:`lotus_pl.data.hypersim`. Intrinsics
are stored in the project convention (pixel ``u`` has its centre at ``u + 0.5``): VKITTI's
``cx = 620.5, cy = 187`` count from the first pixel's centre, so the stored principal point is
``(621 - left, 187.5 - top)``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from lotus_pl.data.convert import (
    FrameSkipped,
    SampleFormat,
    SplitPlan,
    command_line,
    convert_split,
    encode_mask_png,
    encode_rgb,
    face_camera,
    json_bytes,
)
from lotus_pl.data.samples import encode_normal_png

LICENCE = "CC BY-NC-SA 3.0 (Virtual KITTI 2, Naver Labs Europe; https://europe.naverlabs.com/vkitti2)"
DEPTH_SCALE = 100.0  # uint16 depth = centimetres, as distributed
SKY = 65535
# VKITTI 2 intrinsics, pixel-index convention (the first pixel's centre is 0).
FX = FY = 725.0087
CX, CY = 620.5, 187.0
TRAIN_SCENES = (2, 6, 18, 20)
VAL_SCENES = (1,)
_RGB = re.compile(r"^rgb_(\d+)\.jpg$")


@dataclass(frozen=True)
class VkittiFrame:
    scene: str  # Scene01
    variation: str  # clone, fog, 15-deg-left, ...
    camera: str  # Camera_0
    index: int

    @property
    def key(self) -> str:
        return f"{self.scene}_{self.variation}_{self.camera}_{self.index:05d}"

    def rgb(self, raw: Path) -> Path:
        return raw / self.scene / self.variation / "frames" / "rgb" / self.camera / f"rgb_{self.index:05d}.jpg"

    def depth(self, raw: Path) -> Path:
        return raw / self.scene / self.variation / "frames" / "depth" / self.camera / f"depth_{self.index:05d}.png"


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``a`` over each pixel's (2r+1)² window, zero outside the image (an integral image)."""
    height, width = a.shape[:2]
    padded = np.pad(a, ((radius + 1, radius), (radius + 1, radius)) + ((0, 0),) * (a.ndim - 2))
    integral = padded.cumsum(0).cumsum(1)
    k = 2 * radius + 1
    return (integral[k:k + height, k:k + width] - integral[:height, k:k + width]
            - integral[k:k + height, :width] + integral[:height, :width])


def backproject(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Planar depth -> ``[H, W, 3]`` points in the project frame (x left, y up, z toward the camera),
    with intrinsics in the pixel-index convention (pixel ``u`` is at ``u - cx``)."""
    height, width = depth.shape
    u = (np.arange(width) - cx) / fx
    v = (np.arange(height) - cy) / fy
    return np.stack([-u[None, :] * depth, -v[:, None] * depth, -depth], axis=-1)


def plane_fit_normals(depth: np.ndarray, valid: np.ndarray, fx: float = FX, fy: float = FY, cx: float = CX,
                      cy: float = CY, window: int = 5, min_points: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals from depth by a least-squares plane through each pixel's valid neighbours.

    The plane through the ``window``² neighbourhood's 3D points is the one whose normal is the
    covariance's eigenvector of smallest eigenvalue (total least squares: any plane orientation,
    also ones parallel to the viewing ray). A normal is valid where the pixel's own depth is,
    at least ``min_points`` neighbours are, and they span a plane (not a line). Normals are
    turned toward the camera. Returns ``[H, W, 3]`` normals (zero where invalid) and the mask.
    """
    points = backproject(np.where(valid, depth, 0.0), fx, fy, cx, cy)
    weight = valid.astype(np.float64)
    radius = window // 2
    count = _box_sum(weight, radius)
    mean = _box_sum(points * weight[..., None], radius) / np.maximum(count, 1)[..., None]
    outer = points[..., :, None] * points[..., None, :] * weight[..., None, None]
    second = _box_sum(outer.reshape(*depth.shape, 9), radius).reshape(*depth.shape, 3, 3)
    cov = second / np.maximum(count, 1)[..., None, None] - mean[..., :, None] * mean[..., None, :]

    normals = np.zeros((*depth.shape, 3))
    ok = valid & (count >= min_points)
    values, vectors = np.linalg.eigh(cov[ok])  # ascending eigenvalues
    planar = values[:, 1] > 1e-6 * np.maximum(values[:, 2], 1e-12)
    found = np.zeros(depth.shape, dtype=bool)
    found[ok] = planar
    normals[found] = vectors[planar, :, 0]
    # Toward the camera: the camera sits at -P from a point P, and pixel coordinates here are
    # index-based, so shift the principal point by half a pixel for face_camera's centre convention.
    normals = face_camera(normals, fx, fy, cx + 0.5, cy + 0.5)
    return normals * found[..., None], found


def read_depth_cm(path: Path) -> np.ndarray:
    """A VKITTI depth PNG as integer centimetres."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"expected a single-channel 16-bit PNG, got shape {arr.shape}")
    return arr.astype(np.int64)


def convert_frame(frame: VkittiFrame, options: dict[str, Any]) -> dict[str, bytes]:
    """One VKITTI frame -> the sample's fields (see the module docstring)."""
    try:
        depth_cm = read_depth_cm(frame.depth(Path(options["depth_raw"])))
        rgb_bytes = frame.rgb(Path(options["raw"])).read_bytes()
        with Image.open(io.BytesIO(rgb_bytes)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise FrameSkipped("unreadable file", str(exc)) from exc
    if rgb.shape[:2] != depth_cm.shape:
        raise FrameSkipped("inconsistent image sizes", f"rgb {rgb.shape} vs depth {depth_cm.shape}")

    metres = depth_cm / DEPTH_SCALE
    mask = (depth_cm != SKY) & (metres > options["min_depth"]) & (metres <= options["max_depth"])
    if not mask.any():
        raise FrameSkipped("no valid depth (all sky / beyond max_depth)")
    fx, fy, cx, cy = options["intrinsics"]
    normals, _ = plane_fit_normals(metres, mask, fx, fy, cx, cy)

    height, width = depth_cm.shape
    crop_h, crop_w = options["crop"] or (height, width)
    if crop_h > height or crop_w > width:
        raise FrameSkipped("smaller than the crop", f"{height}x{width} < {crop_h}x{crop_w}")
    top, left = height - crop_h, (width - crop_w) // 2
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    rgb, depth_cm, normals, mask = rgb[window], depth_cm[window], normals[window], mask[window]
    if (crop_h, crop_w) == (height, width) and options["rgb_format"] == "jpg":
        rgb_key = "rgb.jpg"  # uncropped: keep the distributed JPEG bytes, no second compression
    else:
        rgb_key, rgb_bytes = encode_rgb(np.ascontiguousarray(rgb), options["rgb_format"], options["jpeg_quality"])
    buf_depth = np.where(mask, depth_cm, 0).astype(np.uint16)
    meta = {"source": "vkitti2", "scene": frame.scene, "variation": frame.variation, "camera": frame.camera,
            "frame": frame.index, "fx": fx, "fy": fy, "cx": cx + 0.5 - left, "cy": cy + 0.5 - top,
            "depth_scale": DEPTH_SCALE, "height": crop_h, "width": crop_w,
            "valid_fraction": round(float(mask.mean()), 6)}
    return {
        rgb_key: rgb_bytes,
        "depth.png": _png16(buf_depth),
        "normal.png": encode_normal_png(normals),
        "mask.png": encode_mask_png(mask),
        "json": json_bytes(meta),
    }


def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def scene_number(scene: str) -> int | None:
    match = re.fullmatch(r"Scene(\d+)", scene)
    return int(match.group(1)) if match else None


def plan_splits(raw: Path, depth_raw: Path, splits: dict[str, tuple[int, ...]], variations: list[str] | None,
                cameras: list[str] | None) -> dict[str, SplitPlan]:
    """Frames per split by scene number, found by listing the RGB folders; frames without a depth
    PNG are left out and reported."""
    plans = {name: SplitPlan(f"vkitti_{name}", name, []) for name in splits}
    owner = {number: name for name, numbers in splits.items() for number in numbers}
    for scene_dir in sorted(p for p in raw.iterdir() if p.is_dir()):
        name = owner.get(scene_number(scene_dir.name))
        if name is None:
            continue
        for variation_dir in sorted(p for p in scene_dir.iterdir() if p.is_dir()):
            if variations and variation_dir.name not in variations:
                continue
            rgb_root = variation_dir / "frames" / "rgb"
            for camera_dir in sorted(rgb_root.glob("Camera_*")) if rgb_root.is_dir() else []:
                if cameras and camera_dir.name not in cameras:
                    continue
                for path in sorted(camera_dir.iterdir()):
                    match = _RGB.match(path.name)
                    if not match:
                        continue
                    frame = VkittiFrame(scene_dir.name, variation_dir.name, camera_dir.name, int(match.group(1)))
                    if frame.depth(depth_raw).is_file():
                        plans[name].frames.append(frame)
                    else:
                        plans[name].skipped.setdefault("missing depth png", []).append(frame.key)
    return plans


def make_vkitti(
    raw: str,
    out: str,
    depth_raw: str | None = None,
    manifest_dir: str = "data_manifests",
    train_scenes: list[int] | None = None,
    val_scenes: list[int] | None = None,
    variations: list[str] | None = None,
    cameras: list[str] | None = None,
    crop: list[int] | None = None,
    no_crop: bool = False,
    intrinsics: list[float] | None = None,
    min_depth: float = 1e-5,
    max_depth: float = 80.0,
    rgb_format: Literal["jpg", "png"] = "jpg",
    jpeg_quality: int = 95,
    samples_per_shard: int = 256,
    workers: int = 4,
    seed: int = 0,
) -> list[str]:
    """Convert Virtual KITTI 2 into shards and the manifests ``vkitti_train.yaml`` and ``vkitti_val.yaml``.

    Args:
        raw: root holding ``SceneXX/<variation>/frames/rgb``.
        out: folder for the tar shards.
        depth_raw: root holding ``SceneXX/<variation>/frames/depth`` (default: ``raw``).
        manifest_dir: folder for the manifests.
        train_scenes: scene numbers for training (Lotus: 2, 6, 18, 20).
        val_scenes: held-out scene numbers (Lotus: 1).
        variations: only these variations (default: all found).
        cameras: only these cameras, e.g. ``[Camera_0]`` (default: all found).
        crop: [height, width] of the bottom-centred crop (Lotus: 352 1216).
        no_crop: keep the full frame.
        intrinsics: fx, fy, cx, cy in VKITTI's pixel-index convention (default: VKITTI 2's).
        min_depth, max_depth: valid depth range in metres (Lotus: 1e-5 .. 80).
        rgb_format: ``jpg`` (quality ``jpeg_quality``) or lossless ``png``.
        jpeg_quality: JPEG quality of a re-encoded (cropped) RGB.
        samples_per_shard: frames per shard.
        workers: conversion processes.
        seed: the shuffle of frames into shards.

    Returns:
        The paths of the written manifests.
    """
    raw_path = Path(raw)
    depth_path = Path(depth_raw) if depth_raw else raw_path
    if not raw_path.is_dir():
        raise FileNotFoundError(f"VKITTI root not found: {raw_path}")
    splits = {"train": tuple(train_scenes or TRAIN_SCENES), "val": tuple(val_scenes or VAL_SCENES)}
    if set(splits["train"]) & set(splits["val"]):
        raise ValueError(f"train and val scenes overlap: {sorted(set(splits['train']) & set(splits['val']))}")
    crop_size = None if no_crop else list(crop or [352, 1216])
    if crop_size is not None and (len(crop_size) != 2 or min(crop_size) <= 0):
        raise ValueError(f"crop must be [height, width] > 0, got {crop_size}")
    fx, fy, cx, cy = intrinsics or (FX, FY, CX, CY)
    plans = plan_splits(raw_path, depth_path, splits, variations, cameras)

    options = {"raw": str(raw_path.resolve()), "depth_raw": str(depth_path.resolve()), "crop": crop_size,
               "intrinsics": [fx, fy, cx, cy], "min_depth": min_depth, "max_depth": max_depth,
               "rgb_format": rgb_format, "jpeg_quality": jpeg_quality}
    created_by = command_line("vkitti", raw=raw, out=out, depth_raw=depth_raw, train_scenes=list(splits["train"]),
                              val_scenes=list(splits["val"]), variations=variations, cameras=cameras,
                              crop=crop_size, no_crop=no_crop or None, intrinsics=[fx, fy, cx, cy],
                              min_depth=min_depth, max_depth=max_depth, rgb_format=rgb_format,
                              jpeg_quality=jpeg_quality, samples_per_shard=samples_per_shard, seed=seed)
    height, width = crop_size or (375, 1242)
    top, left = 375 - height, (1242 - width) // 2
    fmt = SampleFormat(
        keys=[f"rgb.{rgb_format}", "depth.png", "normal.png", "mask.png", "json"],
        resolution=[height, width],
        depth_scale=DEPTH_SCALE,
        intrinsics=[fx, fy, cx + 0.5 - left, cy + 0.5 - top],
        licence=LICENCE,
        preprocessing=[
            f"splits: scenes {list(splits['train'])} train, {list(splits['val'])} val",
            f"depth: centimetres as distributed; valid {min_depth}..{max_depth} m, 65535 (sky) invalid; stored as is",
            "normals: plane fit (total least squares) over each pixel's 5x5 valid neighbours on the full frame, "
            "project frame (x left, y up, z toward camera), flipped to face the camera; invalid = (0,0,0)",
            "no crop" if crop_size is None else f"crop: {height}x{width} at top = H - {height}, left = (W - {width}) / 2",
            f"intrinsics: fx = fy = {fx}; project convention (pixel centre at u + 0.5): cx = {cx} + 0.5 - left, "
            f"cy = {cy} + 0.5 - top",
            "mask.png: 255 where depth is valid",
            f"frames shuffled into shards (seed {seed})",
        ],
    )
    paths = []
    for name, plan in plans.items():
        manifest_path = Path(manifest_dir) / f"vkitti_{name}.yaml"
        report = convert_split(plan, convert_frame, options, Path(out), manifest_path, fmt, created_by,
                               samples_per_shard=samples_per_shard, workers=workers, seed=seed,
                               unfingerprinted=("raw", "depth_raw"))
        print(report.summary(), flush=True)
        paths.append(str(manifest_path))
    return paths
