"""``lotus_pl data folder``: a user's own files in every supported layout -> shards a model trains on."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.convert import nearest_indices
from lotus_pl.data.folder import make_folder
from lotus_pl.data.folder.readers import AnnotationError, read_depth, read_exr, read_normals, read_pfm, write_pfm
from lotus_pl.data.manifest import Manifest
from lotus_pl.data.samples import decode_sample

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 32


def scene(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8, depth metres (a tilted plane plus a step) and project-frame unit normals."""
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    v, u = np.mgrid[0:H, 0:W]
    depth = 1.0 + 0.05 * u + 0.02 * v + 0.5 * (u > W // 2) + 0.1 * i
    normals = np.stack([np.full((H, W), 0.3), np.full((H, W), -0.4), np.ones((H, W))], -1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return rgb, depth, normals


def samples(manifest_path: Path) -> dict[str, dict]:
    manifest = Manifest.load(manifest_path)
    out = {}
    for entry in manifest.shards:
        with tarfile.open(manifest.root / entry.path) as tar:
            raw: dict[str, dict] = {}
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                raw.setdefault(key, {"__key__": key})[field] = tar.extractfile(member).read()
        for key, fields in raw.items():
            out[key] = decode_sample(fields, required=("rgb",))
    return out


def png16(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint16)).save(path)


def test_pfm_round_trip_and_header_errors(tmp_path):
    gray = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_pfm(tmp_path / "a.pfm", gray)
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), gray)  # top row first
    colour = np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32)
    write_pfm(tmp_path / "b.pfm", colour)
    np.testing.assert_array_equal(read_pfm(tmp_path / "b.pfm"), colour)
    big_endian = b"Pf\n2 1\n1.0\n" + np.array([1.5, 2.5], dtype=">f4").tobytes()
    (tmp_path / "c.pfm").write_bytes(big_endian)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), [[1.5, 2.5]])
    (tmp_path / "d.pfm").write_bytes(b"P6\n2 1\n255\n")
    with pytest.raises(AnnotationError, match="d.pfm: not a PFM"):
        read_pfm(tmp_path / "d.pfm")
    (tmp_path / "e.pfm").write_bytes(b"Pf\n4 4\n-1.0\n" + b"\0" * 8)
    with pytest.raises(AnnotationError, match="truncated"):
        read_pfm(tmp_path / "e.pfm")


def test_depth_and_normal_readers_name_the_file_and_convert_conventions(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d8.png")
    with pytest.raises(AnnotationError, match="d8.png: an 8-bit depth image"):
        read_depth(tmp_path / "d8.png", 1000)
    png16(tmp_path / "d16.png", np.full((4, 4), 1500))
    with pytest.raises(AnnotationError, match="needs --depth_scale"):
        read_depth(tmp_path / "d16.png", None)
    assert read_depth(tmp_path / "d16.png", 1000)[0, 0] == 1.5
    n = np.array([[[0.6, 0.0, 0.8]]])  # in the file's convention
    np.save(tmp_path / "n.npy", n)
    np.testing.assert_allclose(read_normals(tmp_path / "n.npy", "lotus"), n)
    np.testing.assert_allclose(read_normals(tmp_path / "n.npy", "opengl"), [[[-0.6, 0.0, 0.8]]])
    np.testing.assert_allclose(read_normals(tmp_path / "n.npy", "opencv"), [[[-0.6, -0.0, -0.8]]])
    with pytest.raises(AnnotationError, match="unknown normal convention 'xyz'"):
        read_normals(tmp_path / "n.npy", "xyz")


def exr_available() -> bool:
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        return False
    return True


def write_exr(path: Path, depth: np.ndarray) -> None:
    import OpenEXR

    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                      {"Z": depth.astype(np.float32)}) as exr:
        exr.write(str(path))


@pytest.mark.skipif(not exr_available(), reason="OpenEXR (the exr extra) is not installed")
def test_exr_depth_reads_back(tmp_path):
    depth = np.linspace(0.5, 9.5, H * W, dtype=np.float32).reshape(H, W)
    write_exr(tmp_path / "z.exr", depth)
    np.testing.assert_array_equal(read_exr(tmp_path / "z.exr"), depth)


def test_stem_pairing_png_depth_masks_crop_and_missing_partners(tmp_path, capsys):
    """Layout 1: separate folders paired by stem; 16-bit PNG depth in mm; masks; crop to a training size."""
    for kind in ("rgb", "depth", "mask"):
        (tmp_path / kind / "room").mkdir(parents=True)
    truth = {}
    for i in range(6):
        rgb, depth, _ = scene(i)
        Image.fromarray(rgb).save(tmp_path / "rgb" / "room" / f"{i:04d}.png")
        png16(tmp_path / "depth" / "room" / f"{i:04d}.png", np.round(depth * 1000))
        mask = np.ones((H, W), bool)
        mask[:4] = False
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask" / "room" / f"{i:04d}.png")
        truth[f"room/{i:04d}"] = (rgb, np.round(depth * 1000) / 1000, mask)
    Image.fromarray(scene(9)[0]).save(tmp_path / "rgb" / "room" / "lonely.png")  # no depth, no mask
    png16(tmp_path / "depth" / "room" / "stray.png", np.ones((H, W)))  # no RGB claims it
    paths = make_folder(out=str(tmp_path / "shards"), name="mine", rgb=str(tmp_path / "rgb"), depth=str(tmp_path / "depth"),
                        mask=str(tmp_path / "mask"), depth_scale=1000, size=[12, 12], fit="crop",
                        intrinsics=[30.0, 30.0, 15.5, 11.5], val_ratio=0.0, rgb_format="png",
                        manifest_dir=str(tmp_path / "manifests"), workers=1, samples_per_shard=4)
    out = capsys.readouterr().out
    assert "1 depth files match no RGB image" in out and "stray.png" in out
    assert paths == [str(tmp_path / "manifests" / "mine_train.yaml")]
    manifest = Manifest.load(paths[0])
    assert manifest.num_samples == 6 and manifest.resolution == [12, 12]
    assert manifest.skipped == {"missing depth": {"count": 1, "examples": ["room/lonely"]},
                                "missing mask": {"count": 1, "examples": ["room/lonely"]}}
    assert manifest.keys == ["rgb.png", "depth.npy", "mask.png", "json"]
    got = samples(Path(paths[0]))
    assert sorted(got) == sorted(truth)
    # crop: scale 12/24 = 0.5 covers 12 x 16, centre cut of 12 columns from left = 2
    rows, cols = nearest_indices(H, 12), nearest_indices(W, 16)[2:14]
    for key, (rgb, depth, mask) in truth.items():
        sample = got[key]
        np.testing.assert_allclose(sample["depth"][0].numpy(), depth[rows][:, cols], rtol=1e-6)
        np.testing.assert_array_equal(sample["mask"][0].numpy(), mask[rows][:, cols])
        assert sample["image"].shape == (3, 12, 12)
        # intrinsics: (c + 0.5) * 0.5 - offset, in the project convention
        np.testing.assert_allclose(sample["intrinsics"].numpy(), [15.0, 15.0, 16 * 0.5 - 2, 12 * 0.5], rtol=1e-6)
    assert manifest.intrinsics == pytest.approx([15.0, 15.0, 6.0, 6.0])


def test_one_folder_npy_depth_opencv_normals_and_the_depth_rule(tmp_path):
    """Layout 2: one folder, partners by suffix; NPY depth; OpenCV normals; NaN masked, negative rejected."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(5):
        rgb, depth, normals = scene(i)
        if i == 1:
            depth[2:5, 3:9] = np.nan  # holes: masked
            depth[0, 0] = np.inf
        if i == 2:
            depth[7, 7] = -0.5  # a wrong file: rejected
        if i == 3:
            depth[:] = 0.0  # nothing valid: rejected
        Image.fromarray(rgb).save(folder / f"f{i}.jpg", quality=98)
        np.save(folder / f"f{i}_depth.npy", depth)
        opencv = -normals  # the project frame is the negated OpenCV frame
        np.save(folder / f"f{i}_normal.npy", opencv.astype(np.float32))
    np.save(folder / "f9_normal.npy", np.zeros((H, W, 3)))  # a normal whose image is missing: an orphan
    with pytest.raises(ValueError, match="--normal_convention"):
        make_folder(out=str(tmp_path / "x"), rgb=str(folder), depth=str(folder), normal=str(folder),
                    depth_suffix="_depth", normal_suffix="_normal", manifest_dir=str(tmp_path / "m"))
    paths = make_folder(out=str(tmp_path / "shards"), name="one", rgb=str(folder), depth=str(folder), normal=str(folder),
                        depth_suffix="_depth", normal_suffix="_normal", normal_convention="opencv",
                        val_ratio=0.0, manifest_dir=str(tmp_path / "manifests"), workers=1)
    manifest = Manifest.load(paths[0])
    assert manifest.num_samples == 3 and manifest.resolution == [H, W] and manifest.intrinsics is None
    assert manifest.skipped["negative depth"]["examples"] == ["f2"]
    assert manifest.skipped["too little valid depth"]["examples"] == ["f3"]
    got = samples(Path(paths[0]))
    assert sorted(got) == ["f0", "f1", "f4"]
    _, depth, normals = scene(1)
    holes = got["f1"]["depth"][0].numpy() == 0
    expected = np.zeros((H, W), bool)
    expected[2:5, 3:9] = True
    expected[0, 0] = True
    np.testing.assert_array_equal(holes, expected)
    np.testing.assert_allclose(got["f1"]["depth"][0].numpy()[~holes], depth[~holes], rtol=1e-6)
    # normals come back in the project frame (8-bit PNG: within a degree)
    cos = (got["f0"]["normal"].numpy().transpose(1, 2, 0) * normals).sum(-1)
    assert cos.min() > np.cos(np.radians(1.0))
    # masking negatives instead keeps f2 with the pixel invalid
    paths = make_folder(out=str(tmp_path / "shards2"), name="one", rgb=str(folder), depth=str(folder),
                        depth_suffix="_depth", negative_depth="mask", val_ratio=0.0,
                        manifest_dir=str(tmp_path / "manifests2"), workers=1)
    got = samples(Path(paths[0]))
    assert "f2" in got and got["f2"]["depth"][0, 7, 7] == 0 and got["f2"]["depth"][0, 7, 8] > 0


def test_csv_pairing_pfm_exr_opengl_normals_intrinsics_and_splits(tmp_path):
    """Layout 3: a CSV with per-image intrinsics and a split column; PFM (and EXR) depth; OpenGL normals."""
    rows = []
    for i in range(6):
        rgb, depth, normals = scene(i)
        Image.fromarray(rgb).save(tmp_path / f"im{i}.png")
        if i % 2 == 0 or not exr_available():
            write_pfm(tmp_path / f"d{i}.pfm", depth)
            depth_file = f"d{i}.pfm"
        else:
            write_exr(tmp_path / f"d{i}.exr", depth)
            depth_file = f"d{i}.exr"
        opengl = normals * np.array([-1, 1, 1])  # x right instead of left
        Image.fromarray(np.round((opengl + 1) / 2 * 255).astype(np.uint8)).save(tmp_path / f"n{i}.png")
        rows.append({"rgb": f"im{i}.png", "depth": depth_file, "normal": f"n{i}.png", "fx": 40, "fy": 41,
                     "cx": 15.5 + i, "cy": 11.5, "split": "val" if i == 5 else "train"})
    rows.append({"rgb": "im6.png", "depth": "d6.pfm", "normal": "n6.png", "fx": 40, "fy": 41, "cx": 15, "cy": 11, "split": "train"})
    with open(tmp_path / "pairs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths = make_folder(out=str(tmp_path / "shards"), name="csv", pairs=str(tmp_path / "pairs.csv"),
                        normal_convention="opengl", size=[12, 16], fit="resize",
                        manifest_dir=str(tmp_path / "manifests"), workers=1)
    train, val = (Manifest.load(p) for p in paths)
    assert (train.num_samples, val.num_samples) == (5, 1)
    assert train.skipped == {kind: {"count": 1, "examples": ["im6"]} for kind in ("missing rgb", "missing depth", "missing normal")}
    got = {**samples(Path(paths[0])), **samples(Path(paths[1]))}
    for i in range(6):
        sample = got[f"im{i}"]
        np.testing.assert_allclose(sample["intrinsics"].numpy(), [20, 20.5, (16 + i) / 2, 6], rtol=1e-6)
        _, depth, normals = scene(i)
        np.testing.assert_allclose(sample["depth"][0].numpy(), depth[nearest_indices(H, 12)][:, nearest_indices(W, 16)], rtol=1e-6)
        cos = (sample["normal"].numpy().transpose(1, 2, 0) * normals[:12, :16]).sum(-1)
        assert cos.min() > np.cos(np.radians(1.5))
    assert train.intrinsics is None  # cx differs per image: left to each sample's json


def test_split_lists_and_ratio_splits_are_stable(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(20):
        rgb, depth, _ = scene(i)
        Image.fromarray(rgb).save(folder / f"{i:02d}.png")
        write_pfm(folder / f"{i:02d}.pfm", depth)
    (tmp_path / "val.txt").write_text("03\n07.png  # a comment\n")
    (tmp_path / "train.txt").write_text("\n".join(f"{i:02d}" for i in range(10, 20)))
    paths = make_folder(out=str(tmp_path / "s"), name="l", rgb=str(folder), depth=str(folder),
                        train_list=str(tmp_path / "train.txt"), val_list=str(tmp_path / "val.txt"),
                        manifest_dir=str(tmp_path / "m"), workers=1)
    train, val = (Manifest.load(p) for p in paths)
    assert (train.num_samples, val.num_samples) == (10, 2)
    assert train.skipped["in no split list"]["count"] == 8
    assert sorted(samples(Path(paths[1]))) == ["03", "07"]
    paths = make_folder(out=str(tmp_path / "r"), name="r", rgb=str(folder), depth=str(folder), val_ratio=0.3,
                        manifest_dir=str(tmp_path / "m2"), workers=1)
    before = sorted(samples(Path(paths[1])))
    assert 0 < len(before) < 20
    (folder / "00.png").unlink()  # removing a frame moves no other frame between splits
    paths = make_folder(out=str(tmp_path / "r2"), name="r", rgb=str(folder), depth=str(folder), val_ratio=0.3,
                        manifest_dir=str(tmp_path / "m3"), workers=1)
    assert sorted(samples(Path(paths[1]))) == [k for k in before if k != "00"]


def test_conversion_resumes_and_bad_input_is_named(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(4):
        rgb, depth, _ = scene(i)
        Image.fromarray(rgb).save(folder / f"{i}.png")
        png16(folder / f"{i}_z.png", depth * 1000)
    (folder / "1.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="depth PNGs need --depth_scale"):
        make_folder(out=str(tmp_path / "s"), rgb=str(folder), depth=str(folder), depth_suffix="_z",
                    manifest_dir=str(tmp_path / "m"))
    kwargs = dict(out=str(tmp_path / "s"), rgb=str(folder), depth=str(folder), depth_suffix="_z", depth_scale=1000,
                  val_ratio=0.0, manifest_dir=str(tmp_path / "m"), workers=1, samples_per_shard=2)
    make_folder(**kwargs)
    manifest = Manifest.load(tmp_path / "m" / "own_train.yaml")
    assert manifest.num_samples == 3 and manifest.skipped["unreadable rgb"]["examples"] == ["1"]
    capsys.readouterr()
    make_folder(**kwargs)  # a rerun reuses every finished shard
    assert "2 already complete, converting 0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="either --rgb"):
        make_folder(out=str(tmp_path / "s"), manifest_dir=str(tmp_path / "m"))


def test_cli_converts_a_folder_and_a_model_trains_on_it(tmp_path):
    for kind in ("rgb", "depth"):
        (tmp_path / kind).mkdir()
    for i in range(12):
        rgb, depth, _ = scene(i)
        Image.fromarray(rgb).save(tmp_path / "rgb" / f"{i:02d}.jpg")
        np.save(tmp_path / "depth" / f"{i:02d}.npy", depth.astype(np.float32))
    main(["data", "folder", f"--rgb={tmp_path / 'rgb'}", f"--depth={tmp_path / 'depth'}", "--size=[16,16]",
          f"--out={tmp_path / 'shards'}", f"--manifest_dir={tmp_path / 'manifests'}", "--val_ratio=0.25",
          "--workers=1"])
    train, val = tmp_path / "manifests" / "own_train.yaml", tmp_path / "manifests" / "own_val.yaml"
    assert Manifest.load(train).num_samples + Manifest.load(val).num_samples == 12
    assert Manifest.load(val).num_samples > 0
    run = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), "--config", str(ROOT / "experiments/variants/own_data.yaml"),
          f"--data.train_manifest={train}", f"--data.val_manifest={val}", "--data.num_workers=0", "--data.batch_size=2",
          "--data.eval_batch_size=4", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
          f"--trainer.logger.init_args.save_dir={run}", "--trainer.callbacks=[]",
          "--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
          "--model.denoiser.cross_attention_dim=16"])
    import torch

    checkpoints = sorted(run.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {run}"
    assert torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["global_step"] == 3
