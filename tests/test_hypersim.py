"""The Hypersim converter on raw trees in the distributed formats (float16 HDF5 with NaN holes under
``dataset``, tonemap JPEGs, HDR colour), rows of the real split CSV, and the real depth file:
planar depth, normal signs, masks, splits, skip reports, resume, and ``lotus_pl data verify``."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.hypersim import make_hypersim
from lotus_pl.data.manifest import Manifest

SAMPLE = Path("/work/shared/data/hypersim_sample")
REAL_DEPTH = SAMPLE / "ai_037_002.cam_00.frame.0000.depth_meters.hdf5"
REAL_CSV = SAMPLE / "metadata_images_split_scene_v1.csv"
H, W = 12, 16  # small frames with Hypersim's 3:4 aspect
ROWS = {  # (scene, camera, frame) -> what the raw tree holds for it
    ("ai_037_002", "cam_00", 0): "ok", ("ai_037_002", "cam_00", 1): "ok", ("ai_037_002", "cam_00", 2): "ok",
    ("ai_037_002", "cam_00", 3): "no normals", ("ai_037_002", "cam_00", 20): "ok",  # 20: not in the public release
    ("ai_003_010", "cam_00", 0): "ok", ("ai_003_010", "cam_00", 1): "ok", ("ai_003_010", "cam_00", 2): "all nan",
    ("ai_001_010", "cam_00", 10): "ok", ("ai_001_010", "cam_00", 11): "ok",
    ("ai_003_001", "cam_00", 0): "ok",  # a known broken camera
    ("ai_001_001", "cam_00", 0): "absent",  # scene not downloaded
}


def real_rows(wanted: set[tuple[str, str, int]], out: Path) -> Path:
    """The real split CSV's rows for ``wanted``, verbatim, as a small CSV."""
    with open(REAL_CSV, newline="") as f:
        lines = f.read().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if (lambda r: (r[0], r[1], int(r[2])))(line.split(",")) in wanted]
    assert len(kept) == len(wanted) + 1
    out.write_text("\n".join(kept) + "\n")
    return out


def write_h5(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=array, compression="gzip")


def focal(width: int) -> float:
    return width / 2 / math.tan(math.radians(30))


def ray_lengths(height: int, width: int) -> np.ndarray:
    """sqrt(x² + y² + f²) / f at each pixel centre: distance per unit of planar depth."""
    x = np.arange(width) + 0.5 - width / 2
    y = np.arange(height) + 0.5 - height / 2
    return np.sqrt(x[None] ** 2 + y[:, None] ** 2 + focal(width) ** 2) / focal(width)


def frame_arrays(seed: int, kind: str) -> dict[str, np.ndarray]:
    """Distance (float16, NaN holes), Hypersim normals, entity ids and an RGB image for one frame."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    planar = 2.0 + 0.1 * u + 0.05 * v + seed
    distance = (planar * ray_lengths(H, W)).astype(np.float16)
    distance[0, :2] = np.nan
    entity = np.zeros((H, W), np.int32)
    entity[11, :4] = -1
    normal = np.zeros((H, W, 3), np.float16)
    normal[0:3] = (0, 0, 1)  # wall facing the camera
    normal[3:6] = (1, 0, 0)  # facing image-right (Hypersim x points right)
    normal[6:8] = (0, 1, 0)  # floor, below the image centre
    normal[8] = (0, 5, 12)  # tilted up and toward the camera: the orientation flip cannot hide a wrong y or z
    normal[9:11] = (0, 0, -2.5)  # back-facing and not unit
    normal[11] = (5, 0, 12)  # tilted toward image-right: the flip cannot hide a wrong x
    normal[9, 5] = np.nan
    if kind == "all nan":
        distance[:] = np.nan
    return {"distance": distance, "normal": normal, "entity": entity,
            "rgb": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "color": rng.uniform(0, 4, (H, W, 3)).astype(np.float16)}


def write_frame(raw: Path, scene: str, camera: str, index: int, arrays: dict[str, np.ndarray], normals: bool = True) -> None:
    images = raw / scene / "images"
    geometry = images / f"scene_{camera}_geometry_hdf5"
    write_h5(geometry / f"frame.{index:04d}.depth_meters.hdf5", arrays["distance"])
    if normals:
        write_h5(geometry / f"frame.{index:04d}.normal_cam.hdf5", arrays["normal"])
    write_h5(geometry / f"frame.{index:04d}.render_entity_id.hdf5", arrays["entity"])
    write_h5(images / f"scene_{camera}_final_hdf5" / f"frame.{index:04d}.color.hdf5", arrays["color"])
    preview = images / f"scene_{camera}_final_preview" / f"frame.{index:04d}.tonemap.jpg"
    preview.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arrays["rgb"]).save(preview, quality=90)


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("hypersim_raw")
    arrays = {}
    for i, ((scene, camera, index), kind) in enumerate(sorted(ROWS.items())):
        if kind == "absent":
            continue
        arrays[(scene, camera, index)] = frame_arrays(i, kind)
        write_frame(root, scene, camera, index, arrays[(scene, camera, index)], normals=kind != "no normals")
    return root, real_rows(set(ROWS), root.parent / "split.csv"), arrays


def read_samples(manifest_path: Path) -> dict[str, dict]:
    manifest = Manifest.load(manifest_path)
    return {s["__key__"]: s for s in wds.WebDataset(manifest.urls(), shardshuffle=False)} if manifest.shards else {}


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def expected_fields(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the converter must store at native size, from the definitions (not the converter's code)."""
    planar = arrays["distance"].astype(np.float64) / ray_lengths(H, W)
    mask = np.isfinite(planar) & (arrays["entity"] != -1)
    depth = np.where(mask, np.round(np.nan_to_num(planar) * 1000), 0).astype(np.uint16)
    unit = np.zeros((H, W, 3))  # project frame: x left, y up, z toward the camera
    unit[0:3] = (0, 0, 1)
    unit[3:6, :8] = (-1, 0, 0)  # left half: faces the camera; Hypersim's x-right becomes x-left
    unit[3:6, 8:] = (1, 0, 0)  # right half: faced away, turned toward the camera
    unit[6:8] = (0, 1, 0)
    unit[8] = (0, 5 / 13, 12 / 13)
    unit[9:11] = (0, 0, 1)  # back-facing (0, 0, -2.5): unit length, turned to face the camera
    unit[11] = (-5 / 13, 0, 12 / 13)
    normal = np.round((unit + 1) / 2 * 255).astype(np.uint8)
    normal[9, 5] = 0
    normal[~mask] = 0
    return {"depth": depth, "normal": normal, "mask": np.where(mask, 255, 0).astype(np.uint8)}


def test_native_size_values_masks_normals_splits_and_skips(raw_tree, tmp_path, capsys):
    raw, split_csv, arrays = raw_tree
    make_hypersim(str(raw), str(tmp_path / "shards"), split_csv=str(split_csv), manifest_dir=str(tmp_path),
                  height=0, width=0, rgb_format="png", samples_per_shard=2, workers=1)
    found = {split: read_samples(tmp_path / f"hypersim_{split}.yaml") for split in ("train", "val", "test")}
    assert sorted(found["train"]) == [f"ai_037_002_cam_00_{i:04d}" for i in range(3)]
    assert sorted(found["val"]) == ["ai_003_010_cam_00_0000", "ai_003_010_cam_00_0001"]
    assert sorted(found["test"]) == ["ai_001_010_cam_00_0010", "ai_001_010_cam_00_0011"]
    for split, samples in found.items():
        for key, sample in samples.items():
            scene, camera, index = key[:10], key[11:17], int(key[18:])
            expected = expected_fields(arrays[(scene, camera, index)])
            np.testing.assert_array_equal(png(sample["depth.png"]), expected["depth"], err_msg=key)
            np.testing.assert_array_equal(png(sample["normal.png"]), expected["normal"], err_msg=key)
            np.testing.assert_array_equal(png(sample["mask.png"]), expected["mask"], err_msg=key)
            jpeg = np.asarray(Image.open(raw / scene / "images" / f"scene_{camera}_final_preview" / f"frame.{index:04d}.tonemap.jpg"))
            np.testing.assert_array_equal(png(sample["rgb.png"]), jpeg)
            meta = json.loads(sample["json"])
            assert (meta["fx"], meta["cx"], meta["cy"], meta["depth_scale"]) == (pytest.approx(focal(W)), 8, 6, 1000)
    train = Manifest.load(tmp_path / "hypersim_train.yaml")
    assert train.resolution == [H, W] and train.intrinsics == pytest.approx([focal(W), focal(W), 8, 6])
    assert "CC BY-SA 3.0" in train.licence and "lotus_pl data hypersim" in train.created_by
    assert train.skipped == {"known broken camera": {"count": 1, "examples": ["ai_003_001_cam_00_0000"]},
                             "missing normal_cam.hdf5": {"count": 1, "examples": ["ai_037_002_cam_00_0003"]},
                             "scene not in the raw tree": {"count": 1, "examples": ["ai_001_001_cam_00_0000"]}}
    val = Manifest.load(tmp_path / "hypersim_val.yaml")
    assert val.skipped == {"no valid depth (all NaN / no geometry)": {"count": 1, "examples": ["ai_003_010_cam_00_0002"]}}
    out = capsys.readouterr().out
    assert "known broken camera" in out and "no valid depth" in out and "outside the public release" in out


def test_resized_to_three_quarters_picks_nearest_pixels(raw_tree, tmp_path):
    raw, split_csv, arrays = raw_tree
    make_hypersim(str(raw), str(tmp_path), split_csv=str(split_csv), manifest_dir=str(tmp_path), splits=["test"],
                  height=9, width=12, workers=1)
    rows, cols = [int((i + 0.5) * H / 9) for i in range(9)], [int((j + 0.5) * W / 12) for j in range(12)]
    for key, sample in read_samples(tmp_path / "hypersim_test.yaml").items():
        expected = expected_fields(arrays[("ai_001_010", "cam_00", int(key[-4:]))])
        for field in ("depth", "normal", "mask"):
            np.testing.assert_array_equal(png(sample[f"{field}.png"]), expected[field][rows][:, cols])
        assert png(sample["rgb.jpg"]).shape == (9, 12, 3)
        meta = json.loads(sample["json"])
        assert [meta[k] for k in ("fx", "fy", "cx", "cy")] == pytest.approx([0.75 * focal(W)] * 2 + [6, 4.5])


def test_hdr_colour_through_the_hypersim_tone_map(raw_tree, tmp_path):
    raw, split_csv, arrays = raw_tree
    make_hypersim(str(raw), str(tmp_path), split_csv=str(split_csv), manifest_dir=str(tmp_path), splits=["test"],
                  height=0, width=0, rgb_source="color", rgb_format="png", workers=1)
    for key, sample in read_samples(tmp_path / "hypersim_test.yaml").items():
        frame = arrays[("ai_001_010", "cam_00", int(key[-4:]))]
        rgb = frame["color"].astype(np.float64)
        brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
        scale = 0.8**2.2 / np.percentile(brightness[frame["entity"] != -1], 90)
        expected = np.round(np.clip(np.maximum(scale * rgb, 0) ** (1 / 2.2), 0, 1) * 255)
        assert np.abs(png(sample["rgb.png"]).astype(int) - expected).max() <= 1


def test_the_real_file_converts_to_planar_depth_between_2_66_and_12_97_m(tmp_path):
    raw = tmp_path / "raw"
    geometry = raw / "ai_037_002" / "images" / "scene_cam_00_geometry_hdf5"
    geometry.mkdir(parents=True)
    shutil.copy(REAL_DEPTH, geometry / "frame.0000.depth_meters.hdf5")
    with h5py.File(REAL_DEPTH) as f:
        distance = f["dataset"][()]
    assert distance.dtype == np.float16 and distance.shape == (768, 1024)
    write_h5(geometry / "frame.0000.normal_cam.hdf5", np.broadcast_to(np.float16([0, 0, 1]), (768, 1024, 3)))
    write_h5(geometry / "frame.0000.render_entity_id.hdf5", np.zeros((768, 1024), np.int32))
    preview = raw / "ai_037_002" / "images" / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg"
    preview.parent.mkdir(parents=True)
    Image.new("RGB", (1024, 768), (90, 120, 150)).save(preview)
    csv_path = real_rows({("ai_037_002", "cam_00", 0)}, tmp_path / "split.csv")
    make_hypersim(str(raw), str(tmp_path / "shards"), split_csv=str(csv_path), manifest_dir=str(tmp_path),
                  splits=["train"], workers=1)

    x = np.linspace(-511.5, 511.5, 1024)
    y = np.linspace(-383.5, 383.5, 768)
    f = 512 / math.tan(math.radians(30))
    planar = distance.astype(np.float64) * f / np.sqrt(x[None] ** 2 + y[:, None] ** 2 + f**2)
    assert (round(planar.min(), 2), round(planar.max(), 2)) == (2.66, 12.97)
    (sample,) = read_samples(tmp_path / "hypersim_train.yaml").values()
    stored = png(sample["depth.png"])
    rows, cols = [int((i + 0.5) * 4 / 3) for i in range(576)], [int((j + 0.5) * 4 / 3) for j in range(768)]
    np.testing.assert_array_equal(stored, np.round(planar[rows][:, cols] * 1000).astype(np.uint16))
    assert 2.66 <= stored.min() / 1000 and stored.max() / 1000 <= 12.97
    manifest = Manifest.load(tmp_path / "hypersim_train.yaml")
    assert manifest.resolution == [576, 768] and manifest.intrinsics == pytest.approx([665.11, 665.11, 384, 288], abs=0.01)


def test_resume_redoes_nothing_and_repairs_only_broken_shards(raw_tree, tmp_path, capsys):
    raw, split_csv, _ = raw_tree
    shards, manifests = tmp_path / "shards", tmp_path / "manifests"
    args = ["data", "hypersim", f"--raw={raw}", f"--out={shards}", f"--split_csv={split_csv}", f"--manifest_dir={manifests}",
            "--samples_per_shard=1", "--splits=[train,val]"]
    main([*args, "--workers=2"])
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("*.tar")}
    manifest_text = (manifests / "hypersim_train.yaml").read_text()
    assert len(first) == 5  # 3 train + 2 val frames; the all-NaN val frame leaves its shard empty
    capsys.readouterr()

    main([*args, "--workers=1"])
    out = capsys.readouterr().out
    assert out.count("(0 converted now, 3 already complete)") == 2
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("*.tar")} == first

    names = sorted(first)
    (shards / names[0]).unlink()  # lost
    (shards / names[1]).write_bytes(first[names[1]][1][:700])  # interrupted mid-write of the final file
    (shards / (names[2] + ".tmp")).write_bytes(b"half a shard")  # leftover of an interrupted run
    main([*args, "--workers=1"])
    out = capsys.readouterr().out
    assert "(2 converted now, 1 already complete)" in out and "(0 converted now, 3 already complete)" in out
    assert {p.name: p.read_bytes() for p in shards.glob("*.tar")} == {k: v[1] for k, v in first.items()}
    assert (manifests / "hypersim_train.yaml").read_text() == manifest_text

    main(["data", "verify", str(manifests / "hypersim_train.yaml"), str(manifests / "hypersim_val.yaml")])
    assert capsys.readouterr().out.count("ok ") == 2
    (shards / names[3]).write_bytes(first[names[3]][1][: len(first[names[3]][1]) // 2])
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "verify", str(manifests / "hypersim_train.yaml"), str(manifests / "hypersim_val.yaml")])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"shard ../shards/{names[3]} sha256 mismatch" in out and f"shard ../shards/{names[3]} is not a readable tar" in out
