"""Synthetic shards, manifests and sample decoding, end to end."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from lotus_pl.data.manifest import Manifest, ManifestError, sha256_file
from lotus_pl.data.renderer import render_random
from lotus_pl.data.samples import (
    SampleError,
    decode_sample,
    encode_depth_png,
    encode_normal_png,
    encode_rgb_png,
    quantize_depth,
)
from lotus_pl.data.synthetic import DEPTH_SCALE, sample_seed, write_synthetic_split


# --------------------------------------------------------------------------- #
# Encoders
# --------------------------------------------------------------------------- #
def test_depth_png_round_trip_exact():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.0, 60.0, size=(17, 23)).astype(np.float32)
    depth[0, 0] = 0.0
    depth[0, 1] = np.nan
    depth[0, 2] = np.inf
    depth[0, 3] = 100.0  # beyond 65.535 m: clipped
    png = encode_depth_png(depth, 1000.0)
    stored = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(stored, quantize_depth(depth, 1000.0))
    assert stored[0, 3] == 65535 and stored[0, 0] == stored[0, 1] == stored[0, 2] == 0

    out = decode_sample(
        {"__key__": "k", "__url__": "u", "rgb.png": encode_rgb_png(np.zeros((17, 23, 3), np.uint8)),
         "depth.png": png, "json": json.dumps({"depth_scale": 1000.0}).encode()}
    )
    d = out["depth"]
    assert d.shape == (1, 17, 23) and d.dtype == torch.float32
    np.testing.assert_allclose(d[0].numpy(), stored / 1000.0, rtol=1e-6)
    finite = np.isfinite(depth) & (depth < 65.0)
    assert np.abs(d[0].numpy()[finite] - depth[finite]).max() <= 0.5 / 1000.0 + 1e-5
    assert (d[0, 0, :3] == 0).all()


def test_normal_png_round_trip_within_quantisation():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(16, 16, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[:3] = 0.0  # invalid rows
    out = decode_sample(
        {"__key__": "k", "rgb.png": encode_rgb_png(np.zeros((16, 16, 3), np.uint8)),
         "normal.png": encode_normal_png(n)},
        required=("rgb", "normal"),
    )
    dec = out["normal"].permute(1, 2, 0).numpy()
    assert (dec[:3] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(dec[3:], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dec[3:], n[3:], atol=0.01)


def test_rgb_png_round_trip():
    rgb = np.random.default_rng(2).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_rgb_png(rgb)))), rgb)
    img = decode_sample({"__key__": "k", "rgb.png": encode_rgb_png(rgb)}, required=("rgb",))["image"]
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), rgb / 255.0 * 2 - 1, atol=1e-6)


# --------------------------------------------------------------------------- #
# Image modes
# --------------------------------------------------------------------------- #
def _png_rgb16(rgb: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["gray", "rgba", "rgb16", "gray16", "palette", "jpeg"])
def test_image_modes_decode_to_rgb(kind):
    rng = np.random.default_rng(3)
    h, w = 10, 12
    if kind == "gray":
        data, expect = _encode(Image.fromarray(np.full((h, w), 255, np.uint8))), 1.0
    elif kind == "rgba":
        arr = np.zeros((h, w, 4), np.uint8)
        arr[..., 0], arr[..., 3] = 255, 7
        data, expect = _encode(Image.fromarray(arr)), None
    elif kind == "rgb16":
        data, expect = _png_rgb16(rng.integers(0, 65536, size=(h, w, 3), dtype=np.uint16)), None
    elif kind == "gray16":
        data, expect = _encode(Image.fromarray(np.full((h, w), 65535, np.uint16))), 1.0
    elif kind == "palette":
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        data, expect = _encode(rgb.convert("P")), None
    else:
        data, expect = _encode(Image.fromarray(np.zeros((h, w, 3), np.uint8)), "JPEG"), -1.0
    key = "rgb.jpg" if kind == "jpeg" else "rgb.png"
    img = decode_sample({"__key__": "s", "__url__": "x.tar", key: data}, required=("image",))["image"]
    assert img.shape == (3, h, w) and img.dtype == torch.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    if expect is not None:
        torch.testing.assert_close(img, torch.full_like(img, expect), atol=0.02, rtol=0)
    if kind == "rgba":  # alpha dropped, colour kept
        torch.testing.assert_close(img[0], torch.ones(h, w))
        torch.testing.assert_close(img[1], -torch.ones(h, w))


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
def _sample(**overrides) -> dict:
    view = render_random(0, 16, 16)
    raw = {
        "__key__": "train_0000042",
        "__url__": "/data/train-000003.tar",
        "rgb.png": encode_rgb_png(view.rgb),
        "depth.png": encode_depth_png(view.depth, 1000.0),
        "json": json.dumps({"depth_scale": 1000.0}).encode(),
    }
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


def test_missing_required_field_names_key_and_shard():
    with pytest.raises(SampleError) as err:
        decode_sample(_sample(**{"depth.png": None}))
    msg = str(err.value)
    assert "train_0000042" in msg and "train-000003.tar" in msg and "depth" in msg
    assert isinstance(err.value, ValueError)
    # Not required -> fine.
    assert "depth" not in decode_sample(_sample(**{"depth.png": None}), required=("rgb",))


def test_corrupt_png_raises_sample_error():
    with pytest.raises(SampleError, match=r"train_0000042.*train-000003\.tar.*depth\.png"):
        decode_sample(_sample(**{"depth.png": b"\x89PNG\r\n\x1a\nnot really a png"}))
    with pytest.raises(SampleError, match="rgb.png"):
        decode_sample(_sample(**{"rgb.png": encode_rgb_png(np.zeros((4, 4, 3), np.uint8))[:40]}))
    with pytest.raises(SampleError, match="json"):
        decode_sample(_sample(json=b"{not json"))


# --------------------------------------------------------------------------- #
# Shards + manifests
# --------------------------------------------------------------------------- #
N, PER_SHARD, SIZE, SEED = 12, 5, 32, 3


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Manifest, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    manifest_path = root / "manifests" / "synthetic_train.yaml"
    manifest = write_synthetic_split(
        root / "shards", manifest_path, "train", N, size=SIZE, seed=SEED, samples_per_shard=PER_SHARD, workers=2
    )
    return manifest, manifest_path


def test_split_layout_and_manifest(split):
    manifest, manifest_path = split
    assert [Path(u).name for u in manifest.urls()] == [f"train-{k:06d}.tar" for k in range(3)]
    assert [s.num_samples for s in manifest.shards] == [5, 5, 2] and manifest.num_samples == N
    assert all(not Path(s.path).is_absolute() for s in manifest.shards)
    loaded = Manifest.load(manifest_path)
    assert loaded == manifest and loaded.urls() == manifest.urls()
    assert loaded.resolution == [SIZE, SIZE] and loaded.depth_scale == DEPTH_SCALE
    assert loaded.intrinsics is None and "json" in loaded.keys
    assert loaded.verify() == []


def test_shards_read_back_match_direct_renders(split):
    manifest, _ = split
    dataset = wds.WebDataset(manifest.urls(), shardshuffle=False)
    seen = []
    for raw in dataset:
        sample = decode_sample(raw, required=("rgb", "depth", "normal", "albedo", "json"))
        meta = sample["meta"]
        i = meta["index"]
        seen.append(i)
        view = render_random(sample_seed(SEED, "train", i), SIZE, SIZE)
        assert meta["source"] == "synthetic" and meta["__url__"].endswith(f"train-{i // PER_SHARD:06d}.tar")
        np.testing.assert_allclose(sample["intrinsics"].numpy(), view.intrinsics, rtol=1e-6)
        image = sample["image"].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(image, view.rgb / 255.0 * 2 - 1, atol=1e-6)
        depth = sample["depth"][0].numpy()
        assert np.abs(depth - view.depth).max() <= 0.5 / DEPTH_SCALE + 1e-5
        np.testing.assert_array_equal(depth > 0, view.depth > 0)
        normal = sample["normal"].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(normal, view.normal, atol=0.01)
        albedo = (sample["albedo"].permute(1, 2, 0).numpy() + 1) / 2
        np.testing.assert_allclose(albedo, view.albedo, atol=0.5 / 255 + 1e-6)
    assert seen == list(range(N))


def test_split_is_deterministic_and_splits_differ(split, tmp_path):
    manifest, _ = split
    again = write_synthetic_split(
        tmp_path / "s", tmp_path / "m.yaml", "train", N, size=SIZE, seed=SEED, samples_per_shard=PER_SHARD, workers=1
    )
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
    val = render_random(sample_seed(SEED, "val", 0), SIZE, SIZE)
    train = render_random(sample_seed(SEED, "train", 0), SIZE, SIZE)
    assert not np.array_equal(val.depth, train.depth)


def test_verify_detects_modified_and_deleted_shards(split, tmp_path):
    manifest, manifest_path = split
    # Work on a copy so the module fixture stays clean.
    copy_root = tmp_path / "copy"
    shutil.copytree(manifest_path.parent.parent, copy_root)
    m = Manifest.load(copy_root / "manifests" / manifest_path.name)
    assert m.verify() == []
    first, second = (Path(u) for u in m.urls()[:2])
    data = bytearray(first.read_bytes())
    data[600] ^= 0xFF  # inside the first member's payload: tar still parses
    first.write_bytes(bytes(data))
    second.unlink()
    problems = m.verify()
    assert len(problems) == 2
    assert "train-000000.tar" in problems[0] and "sha256" in problems[0]
    assert "train-000001.tar" in problems[1] and "missing" in problems[1]
    assert sha256_file(first) != m.shards[0].sha256


def test_manifest_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Manifest.load(tmp_path / "nope.yaml")
    good = {
        "name": "x", "shards": [{"path": "a.tar", "num_samples": 1, "sha256": "0"}], "keys": ["rgb.png"],
        "resolution": [4, 4], "depth_scale": 1000, "licence": "CC0", "created_by": "test",
    }
    path = tmp_path / "bad.yaml"
    for field in ("name", "shards", "depth_scale", "licence"):
        broken = {k: v for k, v in good.items() if k != field}
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ManifestError, match=rf"bad\.yaml.*{field}"):
            Manifest.load(path)
    broken = dict(good, shards=[{"path": "a.tar", "num_samples": 1}])
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ManifestError, match=r"bad\.yaml.*sha256"):
        Manifest.load(path)
    path.write_text("just a string")
    with pytest.raises(ManifestError, match=r"bad\.yaml"):
        Manifest.load(path)
    path.write_text(yaml.safe_dump(good))
    m = Manifest.load(path)
    assert m.urls() == [str((tmp_path / "a.tar").resolve())]
    assert any("missing" in p for p in m.verify())


def test_mask_png_decodes_to_a_boolean_mask():
    import io

    import numpy as np
    from PIL import Image

    from lotus_pl.data.samples import decode_sample, encode_rgb_png

    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1:3, 2:] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    raw = {"__key__": "k", "__url__": "u", "rgb.png": encode_rgb_png(np.zeros((4, 5, 3), np.uint8)), "mask.png": buf.getvalue()}
    out = decode_sample(raw, required=("rgb",))
    assert out["mask"].dtype == torch.bool and out["mask"].shape == (1, 4, 5)
    assert out["mask"][0].numpy().tolist() == (mask != 0).tolist()


def test_conversion_killed_midway_and_rerun_is_byte_identical(tmp_path):
    """SIGKILL the converter once its first shard is written; the rerun's shards and manifest are
    byte for byte those of an uninterrupted conversion, with no partial file left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = dict(split="train", num_samples=40, size=48, seed=3, samples_per_shard=8, workers=1)
    write_synthetic_split(str(tmp_path / "whole"), str(tmp_path / "whole" / "train.yaml"), **args)
    out = tmp_path / "killed"
    code = (f"from lotus_pl.data.synthetic import write_synthetic_split as w; "
            f"w({str(out)!r}, {str(out / 'train.yaml')!r}, **{args!r})")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 240
    while not (out / "train-000000.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in out.iterdir())
    assert "train-000000.tar" in written and "train.yaml" not in written, written  # killed mid-way
    write_synthetic_split(str(out), str(out / "train.yaml"), **args)

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    assert files(out) == files(tmp_path / "whole")
