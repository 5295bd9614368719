"""The Virtual KITTI 2 converter on raw trees in the distributed formats (16-bit centimetre PNGs with
65535 sky, JPEGs): depth and masks pixel for pixel, normals of known planes from the 5×5 plane fit,
the bottom-centred crop and its intrinsics, scene splits, skip reports and resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.manifest import Manifest
from lotus_pl.data.vkitti import make_vkitti

H, W = 40, 64
FX = FY = 40.0
CX, CY = 31.5, 19.5  # VKITTI's convention: pixel index of the principal point
CROP = (24, 48)  # top = 16, left = 8
SKY = 65535


def rays(height: int, width: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Per unit of planar depth, the point a pixel sees, in the project frame (x left, y up, z toward the camera)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([-(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], axis=-1)


def plane_depth(normal: np.ndarray, point: np.ndarray, ray: np.ndarray) -> np.ndarray:
    """Planar depth where each pixel's ray meets the plane through ``point`` with ``normal`` (inf if never)."""
    denom = ray @ normal
    depth = np.full(denom.shape, np.inf)
    hit = np.abs(denom) > 1e-9
    depth[hit] = (normal @ point) / denom[hit]
    return np.where(depth > 0, depth, np.inf)


def to_cm(depth: np.ndarray) -> np.ndarray:
    """Metres -> VKITTI's uint16 centimetres, 65535 where there is nothing (sky) or beyond 655 m."""
    return np.where(np.isfinite(depth) & (depth < 655), np.round(depth * 100), SKY).astype(np.uint16)


TILTED = np.array([-0.3, 0.5, 0.81]) / np.linalg.norm([-0.3, 0.5, 0.81])
PLANES = {  # kind -> (unit normal in the project frame, a point on the plane)
    "road": (np.array([0.0, 1.0, 0.0]), np.array([0.0, -1.5, 0.0])),  # 1.5 m below the camera
    "wall": (np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -10.0])),  # facing the camera, 10 m away
    "side": (np.array([-1.0, 0.0, 0.0]), np.array([2.0, 0.0, 0.0])),  # 2 m to the left, facing image-right
    "tilted": (TILTED, np.array([0.0, 0.0, -10.0])),  # no axis: a wrong sign of x, y or z cannot be flipped back
}


def frame_depth(kind: str, shape=(H, W), intrinsics=(FX, FY, CX, CY)) -> np.ndarray:
    if kind == "sky":
        return np.full(shape, SKY, np.uint16)
    normal, point = PLANES[kind]
    return to_cm(plane_depth(normal, point, rays(*shape, *intrinsics)))


def write_frame(root: Path, scene: str, variation: str, camera: str, index: int, kind: str,
                shape=(H, W), intrinsics=(FX, FY, CX, CY), depth: bool = True) -> np.ndarray:
    base = root / scene / variation / "frames"
    rgb = np.random.default_rng(index + len(kind)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (base / "rgb" / camera).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(base / "rgb" / camera / f"rgb_{index:05d}.jpg", quality=90)
    if depth:
        (base / "depth" / camera).mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame_depth(kind, shape, intrinsics)).save(base / "depth" / camera / f"depth_{index:05d}.png")
    return rgb


FRAMES = [  # scene, variation, camera, index, kind
    ("Scene02", "clone", "Camera_0", 0, "road"), ("Scene02", "clone", "Camera_0", 1, "side"),
    ("Scene02", "fog", "Camera_1", 0, "tilted"), ("Scene01", "clone", "Camera_0", 0, "wall"),
    ("Scene01", "clone", "Camera_0", 1, "sky"), ("Scene03", "clone", "Camera_0", 0, "wall"),  # Scene03: in no split
]


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vkitti_raw")
    for frame in FRAMES:
        write_frame(root, *frame)
    write_frame(root, "Scene02", "fog", "Camera_1", 2, "road", depth=False)
    return root


def samples(manifest: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in wds.WebDataset(Manifest.load(manifest).urls(), shardshuffle=False)}


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def angles(stored: np.ndarray, expected: np.ndarray) -> np.ndarray:
    n = stored.astype(np.float64) / 255 * 2 - 1
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(n @ expected, -1, 1)))


def test_depth_masks_normals_crop_and_splits(raw_tree, tmp_path, capsys):
    main(["data", "vkitti", f"--raw={raw_tree}", f"--out={tmp_path}", f"--manifest_dir={tmp_path}", "--crop=[24,48]",
          f"--intrinsics=[{FX},{FY},{CX},{CY}]", "--rgb_format=png", "--workers=1"])
    train, val = samples(tmp_path / "vkitti_train.yaml"), samples(tmp_path / "vkitti_val.yaml")
    assert sorted(train) == ["Scene02_clone_Camera_0_00000", "Scene02_clone_Camera_0_00001", "Scene02_fog_Camera_1_00000"]
    assert sorted(val) == ["Scene01_clone_Camera_0_00000"]
    top, left = H - CROP[0], (W - CROP[1]) // 2
    window = (slice(top, H), slice(left, left + CROP[1]))
    for scene, variation, camera, index, kind in FRAMES[:4]:
        sample = {**train, **val}[f"{scene}_{variation}_{camera}_{index:05d}"]
        raw = frame_depth(kind)
        valid = (raw != SKY) & (raw > 0) & (raw <= 8000)
        np.testing.assert_array_equal(png(sample["depth.png"]), np.where(valid, raw, 0)[window])
        np.testing.assert_array_equal(png(sample["mask.png"]) > 0, valid[window])
        source = np.asarray(Image.open(raw_tree / scene / variation / "frames" / "rgb" / camera / f"rgb_{index:05d}.jpg"))
        np.testing.assert_array_equal(png(sample["rgb.png"]), source[window])
        meta = json.loads(sample["json"])
        assert [meta[k] for k in ("fx", "fy", "cx", "cy", "depth_scale")] == [FX, FY, 24.0, 4.0, 100.0]
        # Normals where the whole 5x5 neighbourhood lies on the plane (the plane fit is exact up to 1 cm steps).
        interior = valid.copy()
        for dv in range(-2, 3):
            for du in range(-2, 3):
                interior &= np.roll(np.roll(valid, dv, 0), du, 1)
        interior[:2] = interior[-2:] = interior[:, :2] = interior[:, -2:] = False
        normal = png(sample["normal.png"])
        error = angles(normal[interior[window]], PLANES[kind][0])
        assert interior[window].sum() > 100 and error.max() < 2.0, (kind, error.max())
        assert not normal[~valid[window]].any()  # no normal where depth is invalid
    manifest = Manifest.load(tmp_path / "vkitti_train.yaml")
    assert manifest.resolution == list(CROP) and manifest.intrinsics == [FX, FY, 24.0, 4.0] and manifest.depth_scale == 100
    assert "CC BY-NC-SA 3.0" in manifest.licence
    assert manifest.skipped == {"missing depth png": {"count": 1, "examples": ["Scene02_fog_Camera_1_00002"]}}
    assert Manifest.load(tmp_path / "vkitti_val.yaml").skipped == {
        "no valid depth (all sky / beyond max_depth)": {"count": 1, "examples": ["Scene01_clone_Camera_0_00001"]}}
    assert "missing depth png" in capsys.readouterr().out

    main(["data", "vkitti", f"--raw={raw_tree}", f"--out={tmp_path}", f"--manifest_dir={tmp_path}", "--crop=[24,48]",
          f"--intrinsics=[{FX},{FY},{CX},{CY}]", "--rgb_format=png", "--workers=1"])
    out = capsys.readouterr().out
    assert "(0 converted now, 1 already complete)" in out and "1 converted now" not in out


def test_full_size_frame_gets_lotus_crop_and_intrinsics(tmp_path):
    rgb = write_frame(tmp_path / "raw", "Scene20", "clone", "Camera_0", 7, "road", shape=(375, 1242),
                      intrinsics=(725.0087, 725.0087, 620.5, 187.0))
    make_vkitti(str(tmp_path / "raw"), str(tmp_path / "shards"), manifest_dir=str(tmp_path), workers=1)
    (sample,) = samples(tmp_path / "vkitti_train.yaml").values()
    meta = json.loads(sample["json"])
    assert [meta[k] for k in ("height", "width", "fx", "cx", "cy")] == [352, 1216, 725.0087, 608.0, 164.5]
    raw = np.asarray(Image.open(tmp_path / "raw/Scene20/clone/frames/depth/Camera_0/depth_00007.png")).astype(np.int64)
    valid = (raw != SKY) & (raw <= 8000)
    np.testing.assert_array_equal(png(sample["depth.png"]), np.where(valid, raw, 0)[23:, 13:1229])
    source = np.asarray(Image.open(tmp_path / "raw/Scene20/clone/frames/rgb/Camera_0/rgb_00007.jpg")).astype(float)
    assert np.abs(png(sample["rgb.jpg"]).astype(float) - source[23:, 13:1229]).mean() < 3  # re-encoded at quality 95
    assert rgb.shape == (375, 1242, 3)
    normal = png(sample["normal.png"])[200:, 100:1100]  # road 5.8 m to 30 m ahead
    assert angles(normal.reshape(-1, 3), np.array([0.0, 1.0, 0.0])).max() < 1.0
    manifest = Manifest.load(tmp_path / "vkitti_train.yaml")
    assert manifest.resolution == [352, 1216] and manifest.intrinsics == [725.0087, 725.0087, 608.0, 164.5]
    assert Manifest.load(tmp_path / "vkitti_val.yaml").num_samples == 0  # no Scene01 here: empty, and said so
