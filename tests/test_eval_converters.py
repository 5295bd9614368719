"""Evaluation converters: each benchmark's exact distributed layout in miniature -> shards whose decoded
depth, normals, masks and crops are checked pixel for pixel; the float sample fields; the eval configs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.manifest import Manifest
from lotus_pl.data.samples import SampleError, decode_sample, encode_npy

ROOT = Path(__file__).resolve().parents[1]


def pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth uint8 RGB image (cheap to encode) that differs per seed."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + seed * 7) % 256, (y + seed * 13) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def read_shards(manifest_path: Path) -> dict[str, dict]:
    """Raw and decoded samples by key, after checking the manifest against its shards."""
    manifest = Manifest.load(manifest_path)
    assert manifest.verify() == []
    out = {}
    for raw in wds.WebDataset(manifest.urls(), shardshuffle=False, empty_check=False):
        raw = {k: (bytes(v) if isinstance(v, (bytes, bytearray)) else v) for k, v in raw.items()}
        out[raw["__key__"]] = {"raw": raw, "decoded": decode_sample(raw, required=("rgb",))}
    assert len(out) == manifest.num_samples
    return out


def image_of(sample: dict) -> np.ndarray:
    return np.round((sample["decoded"]["image"].permute(1, 2, 0).numpy() + 1) / 2 * 255).astype(np.uint8)


def test_nyuv2_eigen_crop_and_millimetre_depth(tmp_path):
    root = tmp_path / "nyu_labeled_extracted"
    rng = np.random.default_rng(0)
    depths = {}
    for scene, index in (("kitchen_0004", "0001"), ("office_0005", "0009")):
        save(root / "test" / scene / f"rgb_{index}.png", pattern(480, 640, int(index)))
        depths[index] = rng.integers(0, 12000, (480, 640), dtype=np.uint16)
        save(root / "test" / scene / f"depth_{index}.png", depths[index])
    save(root / "train" / "bedroom_0001" / "rgb_0100.png", pattern(480, 640, 100))  # not part of the test split
    save(root / "train" / "bedroom_0001" / "depth_0100.png", depths["0001"])

    manifest = tmp_path / "nyuv2_test.yaml"
    main(["data", "nyuv2", f"--root={root}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}", "--samples_per_shard=1"])
    samples = read_shards(manifest)
    assert sorted(samples) == ["test-kitchen_0004-rgb_0001", "test-office_0005-rgb_0009"]
    assert len(Manifest.load(manifest).shards) == 2
    for key, index in (("test-kitchen_0004-rgb_0001", "0001"), ("test-office_0005-rgb_0009", "0009")):
        decoded = samples[key]["decoded"]
        np.testing.assert_array_equal(image_of(samples[key]), pattern(480, 640, int(index)))
        np.testing.assert_array_equal(decoded["depth"][0].numpy(), (depths[index] / 1000.0).astype(np.float32))
        mask = decoded["mask"][0].numpy()
        expected = np.zeros((480, 640), dtype=bool)
        expected[45:471, 41:601] = True
        np.testing.assert_array_equal(mask, expected)
        assert mask[45, 41] and mask[470, 600]  # first and last scored pixel
        assert not (mask[44, 41] or mask[471, 600] or mask[45, 40] or mask[45, 601])

    listed = tmp_path / "filename_list_test.txt"
    listed.write_text("test/office_0005/rgb_0009.png test/office_0005/depth_0009.png test/office_0005/filled_0009.png\n")
    main(["data", "nyuv2", f"--root={root}", f"--out={tmp_path / 'listed'}", f"--manifest={tmp_path / 'listed.yaml'}",
          f"--filenames={listed}"])
    assert sorted(read_shards(tmp_path / "listed.yaml")) == ["test-office_0005-rgb_0009"]


def test_kitti_benchmark_crop_then_eigen_crop(tmp_path):
    root = tmp_path / "kitti"
    date, drive = "2011_09_26", "2011_09_26_drive_0002_sync"
    rgb = pattern(375, 1242, 3)
    depth = (np.arange(375 * 1242, dtype=np.int64).reshape(375, 1242) % 20000).astype(np.uint16)
    save(root / date / drive / "image_02" / "data" / "0000000069.png", rgb)
    save(root / drive / "proj_depth" / "groundtruth" / "image_02" / "0000000069.png", depth)
    listed = tmp_path / "eigen_test_files_with_gt.txt"
    listed.write_text(
        f"{date}/{drive}/image_02/data/0000000069.png {drive}/proj_depth/groundtruth/image_02/0000000069.png 721.5377\n"
        f"{date}/{drive}/image_02/data/0000000070.png None 721.5377\n"  # no ground truth: not in the 652
    )
    manifest = tmp_path / "kitti_test.yaml"
    main(["data", "kitti", f"--root={root}", f"--filenames={listed}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}"])
    (sample,) = read_shards(manifest).values()
    top, left = 375 - 352, (1242 - 1216) // 2  # 23, 13
    np.testing.assert_array_equal(image_of(sample), rgb[top:, left:left + 1216])
    np.testing.assert_array_equal(sample["decoded"]["depth"][0].numpy(),
                                  (depth[top:, left:left + 1216] / 256.0).astype(np.float32))
    expected = np.zeros((352, 1216), dtype=bool)
    expected[143:349, 43:1172] = True  # int(0.40810811·352), int(0.99189189·352), int(0.03594771·1216), int(0.96405229·1216)
    np.testing.assert_array_equal(sample["decoded"]["mask"][0].numpy(), expected)
    assert sample["decoded"]["meta"]["focal"] == 721.5377

    main(["data", "kitti", f"--root={root}", f"--out={tmp_path / 'found'}", f"--manifest={tmp_path / 'found.yaml'}"])
    assert len(read_shards(tmp_path / "found.yaml")) == 1  # found without the list


def test_eth3d_float_raw_depth_is_kept_exactly(tmp_path):
    root = tmp_path / "eth3d"
    jpg = root / "rgb" / "courtyard" / "images" / "dslr_images" / "DSC_0286.JPG"
    jpg.parent.mkdir(parents=True)
    Image.fromarray(pattern(12, 18, 5)).save(jpg, format="JPEG", quality=95)
    depth = np.random.default_rng(1).uniform(0.3, 150.0, (12, 18)).astype(np.float32)
    depth[0, :5] = np.inf  # no measurement
    raw = root / "depth" / "courtyard_dslr_depth" / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0286.JPG"
    raw.parent.mkdir(parents=True)
    depth.astype("<f4").tofile(raw)

    manifest = tmp_path / "eth3d_test.yaml"
    main(["data", "eth3d", f"--root={root}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}"])
    (sample,) = read_shards(manifest).values()
    assert sample["raw"]["rgb.jpg"] == jpg.read_bytes()  # the JPEG is stored as is, never re-encoded
    assert "depth.npy" in sample["raw"] and "mask.png" not in sample["raw"]
    decoded = sample["decoded"]["depth"][0].numpy()
    np.testing.assert_array_equal(decoded, np.where(np.isfinite(depth), depth, 0.0).astype(np.float32))

    depth[:6].astype("<f4").tofile(raw)  # a truncated file is refused, not reshaped
    with pytest.raises(ValueError, match="float32 values"):
        main(["data", "eth3d", f"--root={root}", f"--out={tmp_path / 'bad'}", f"--manifest={tmp_path / 'bad.yaml'}"])


def test_scannet_depth_and_colour_resized_to_depth(tmp_path):
    root = tmp_path / "scannet"
    depth = np.random.default_rng(2).integers(0, 9000, (12, 16), dtype=np.uint16)
    save(root / "scene0001_00" / "depth" / "000100.png", depth)
    save(root / "scene0001_00" / "color" / "000100.jpg", pattern(24, 32, 1))  # raw ScanNet colour: larger than depth
    save(root / "scene0002_00" / "depth" / "000000.png", depth)
    save(root / "scene0002_00" / "color" / "000000.jpg", pattern(12, 16, 2))

    manifest = tmp_path / "scannet_test.yaml"
    main(["data", "scannet", f"--root={root}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}"])
    samples = read_shards(manifest)
    assert sorted(samples) == ["scene0001_00-color-000100", "scene0002_00-color-000000"]
    resized, kept = samples["scene0001_00-color-000100"], samples["scene0002_00-color-000000"]
    assert "rgb.png" in resized["raw"] and resized["decoded"]["image"].shape == (3, 12, 16)
    assert kept["raw"]["rgb.jpg"] == (root / "scene0002_00" / "color" / "000000.jpg").read_bytes()
    for sample in samples.values():
        np.testing.assert_array_equal(sample["decoded"]["depth"][0].numpy(), (depth / 1000.0).astype(np.float32))
        assert "mask" not in sample["decoded"]


def test_diode_npy_depth_and_dataset_mask(tmp_path):
    root = tmp_path / "val"
    folder = root / "indoors" / "scene_00021" / "scan_00189"
    stem = "00021_00189_indoors_200_010"
    save(folder / f"{stem}.png", pattern(6, 8, 4))
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 300.0, (6, 8, 1)).astype(np.float32)
    mask = (rng.random((6, 8)) > 0.3).astype(np.float32)
    np.save(folder / f"{stem}_depth.npy", depth)
    np.save(folder / f"{stem}_depth_mask.npy", mask)
    listed = tmp_path / "diode_val_all_filename_list.txt"
    rel = f"indoors/scene_00021/scan_00189/{stem}"
    listed.write_text(f"{rel}.png {rel}_depth.npy {rel}_depth_mask.npy\n")

    manifest = tmp_path / "diode_test.yaml"
    main(["data", "diode", f"--root={root}", f"--filenames={listed}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}"])
    (sample,) = read_shards(manifest).values()
    np.testing.assert_array_equal(sample["decoded"]["depth"][0].numpy(), depth[..., 0])
    np.testing.assert_array_equal(sample["decoded"]["mask"][0].numpy(), mask != 0)
    np.testing.assert_array_equal(image_of(sample), pattern(6, 8, 4))


def test_dsine_normals_png_npy_masks_and_sign(tmp_path):
    root = tmp_path / "dsine_eval" / "sintel"
    normal_png = pattern(5, 7, 6)
    normal_png[0, 0] = 0  # invalid pixel
    save(root / "test" / "000000_img.png", pattern(5, 7, 1))
    save(root / "test" / "000000_normal.png", normal_png)
    np.save(root / "test" / "000000_intrins.npy", np.array([[500.0, 0, 3.5], [0, 510.0, 2.5], [0, 0, 1]]))
    rng = np.random.default_rng(4)
    normals = rng.normal(size=(3, 5, 7))
    normals = (normals / np.linalg.norm(normals, axis=0) * rng.uniform(0.8, 1.5, (5, 7))).astype(np.float32)  # channel-first
    normals[:, 1, 1] = 0.0
    normals[:, 2, 2] = np.nan
    normals[:, 3, 3] *= 0.3 / np.linalg.norm(normals[:, 3, 3])  # shorter than 0.5: invalid, as in DSINE
    save(root / "alley_2" / "frame_0001_img.png", pattern(5, 7, 2))
    np.save(root / "alley_2" / "frame_0001_normal.npy", normals)
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[1:4, 2:6] = 255
    save(root / "alley_2" / "frame_0001_mask.png", mask)

    manifest = tmp_path / "sintel_normal_test.yaml"
    main(["data", "normals", "--dataset=sintel", f"--root={root}", f"--out={tmp_path / 'shards'}", f"--manifest={manifest}"])
    samples = read_shards(manifest)
    png, npy = samples["test-000000_img"], samples["alley_2-frame_0001_img"]
    assert png["raw"]["normal.png"] == (root / "test" / "000000_normal.png").read_bytes()
    assert png["decoded"]["intrinsics"].tolist() == [500.0, 510.0, 3.5, 2.5]
    valid = np.ones((5, 7), dtype=bool)
    valid[1, 1] = valid[2, 2] = valid[3, 3] = False
    vectors = normals.transpose(1, 2, 0)[valid]
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    decoded = npy["decoded"]["normal"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(decoded[valid], unit, atol=1e-6)
    assert (decoded[~valid] == 0).all()
    np.testing.assert_array_equal(npy["decoded"]["mask"][0].numpy(), mask != 0)
    assert "mask" not in png["decoded"]

    main(["data", "normals", "--dataset=sintel", f"--root={root}", f"--out={tmp_path / 'flip'}",
          f"--manifest={tmp_path / 'flip.yaml'}", "--sign=[-1,-1,-1]"])
    flipped = read_shards(tmp_path / "flip.yaml")
    for key, original in (("test-000000_img", png), ("alley_2-frame_0001_img", npy)):
        np.testing.assert_allclose(flipped[key]["decoded"]["normal"].numpy(), -original["decoded"]["normal"].numpy(), atol=1e-6)


def test_float_depth_and_normal_fields_decode():
    depth = np.array([[1.25, np.inf], [-2.0, 0.001]], dtype=np.float32)
    normal = np.zeros((2, 2, 3), dtype=np.float32)
    normal[0, 0] = [0.0, 0.0, 2.0]
    raw = {"__key__": "k", "rgb.png": _png(np.zeros((2, 2, 3), np.uint8)), "depth.npy": encode_npy(depth),
           "normal.npy": encode_npy(normal), "json": json.dumps({}).encode()}
    out = decode_sample(raw, required=("rgb", "depth", "normal"))
    assert out["depth"][0].tolist() == [[1.25, 0.0], [0.0, np.float32(0.001)]]  # no depth_scale needed; inf, <0 -> 0
    assert out["normal"][:, 0, 0].tolist() == [0.0, 0.0, 1.0] and out["normal"][:, 1, 1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(SampleError, match="normal.npy"):
        decode_sample(dict(raw, **{"normal.npy": encode_npy(np.zeros((2, 2, 4)))}))
    with pytest.raises(SampleError, match="depth.npy"):
        decode_sample(dict(raw, **{"depth.npy": b"not an npy"}))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# Depth range (exclusive), processing resolution and manifest of each shipped eval config.
EVAL_CONFIGS = {
    "nyuv2": (1e-3, 10.0, 0, "nyuv2_test.yaml"),
    "kitti": (1e-5, 80.0, 0, "kitti_test.yaml"),
    "eth3d": (1e-5, float("inf"), 768, "eth3d_test.yaml"),
    "scannet": (1e-3, 10.0, 0, "scannet_test.yaml"),
    "diode": (0.6, 350.0, 640, "diode_test.yaml"),
    "synthetic": (1e-3, 80.0, 0, "synthetic_val.yaml"),
}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments" / "eval").glob("*.yaml")))
def test_eval_configs_set_range_resolution_manifest_and_results(name):
    config = yaml.safe_load((ROOT / "experiments" / "eval" / f"{name}.yaml").read_text())
    callback = config["trainer"]["callbacks"][0]
    assert callback["class_path"] == "lotus_pl.evaluation.EvaluationResults"
    assert callback["init_args"]["dataset"] == name.removesuffix("_normal")
    if name.endswith("_normal"):
        assert "task" not in config["model"] and config["model"]["processing_resolution"] == 0
        assert config["data"]["test_manifest"] == ("data_manifests/synthetic_val.yaml" if name == "synthetic_normal"
                                                   else f"data_manifests/{name}_test.yaml")
        return
    low, high, resolution, manifest = EVAL_CONFIGS[name]
    assert config["model"]["task"]["init_args"] == {"min_depth": low, "max_depth": high}
    assert config["model"]["processing_resolution"] == resolution
    assert config["data"]["test_manifest"] == f"data_manifests/{manifest}"


def test_eval_config_composes_after_a_model_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(ROOT / "experiments/lotus_d_depth.yaml"),
              "--config", str(ROOT / "experiments/eval/eth3d.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    task = printed["model"]["task"]
    assert task["class_path"] == "lotus_pl.tasks.Depth"  # the model's task, with the eval range
    assert task["init_args"]["encoding"]["class_path"] == "lotus_pl.tasks.NormalizedDisparity"
    assert (task["init_args"]["min_depth"], task["init_args"]["max_depth"]) == (1e-5, float("inf"))
    assert printed["model"]["processing_resolution"] == 768
    assert printed["data"]["test_manifest"] == "data_manifests/eth3d_test.yaml"
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == ["lotus_pl.evaluation.EvaluationResults"]
