"""Inputs of ``lotus_pl predict``: every awkward image kind through ``load_image`` and through the
predict path, videos (frames in order, named, strided, rotated, resized, broken), batching of mixed
sizes, the sized progress bar, the written files, temporal consistency, and the command end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

import lotus_pl.data.images as images_module
import lotus_pl.data.predict_inputs as inputs_module
from lotus_pl.callbacks import PredictionWriter
from lotus_pl.cli import main
from lotus_pl.codecs import SpaceToDepth
from lotus_pl.data.datamodule import DenseDataModule
from lotus_pl.data.images import load_image, processing_size, upright_size
from lotus_pl.data.predict_inputs import PredictInputs, VideoFrames, list_inputs, plan_inputs
from lotus_pl.data.videos import VideoError, frame_path, iter_frames, output_stem, probe_video
from lotus_pl.denoisers import SmallUNet
from lotus_pl.model import LotusModel
from lotus_pl.tasks import Depth, Normal
from lotus_pl.temporal import TemporalConsistencyMeter, frame_change, temporal_consistency

from conftest import TINY_UNET
from test_cli import tiny_overrides

RNG = np.random.default_rng(0)
ORIENTATION = 0x0112


def pixels(height: int, width: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (24, 32), codec: str = "ffv1",
                pix_fmt: str = "bgr0", rotation: int | None = None) -> None:
    """Frame i: red = 20 * i everywhere, green = 200 on the top half (an orientation mark)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            rgb = np.zeros((*size, 3), np.uint8)
            rgb[..., 0] = 20 * i
            rgb[: size[0] // 2, :, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_with_orientation(array: np.ndarray, path: Path, orientation: int) -> None:
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    img.save(path, exif=exif)


def truncated_jpeg(path: Path) -> None:
    full = path.with_suffix(".full.jpeg")
    Image.fromarray(pixels(40, 40)).save(full)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])


def write_every_image_kind(folder: Path) -> dict[str, tuple[int, int]]:
    """One image of every awkward kind, with its upright (H, W); plus two unreadable files."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(12, 18, 1)).save(folder / "gray.png")
    Image.fromarray(pixels(10, 14, 2), mode="LA").save(folder / "gray_alpha.png")
    Image.fromarray(pixels(11, 13, 4), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(pixels(9, 16)).quantize(8).save(folder / "palette.png")
    palette = Image.fromarray(pixels(9, 16)).quantize(8)
    palette.save(folder / "palette_transparent.png", transparency=0)
    Image.fromarray(RNG.integers(0, 65536, (14, 10), dtype=np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(RNG.integers(0, 100000, (8, 12)).astype(np.int32)).save(folder / "int32.tif")
    Image.fromarray(RNG.random((13, 9)).astype(np.float32)).save(folder / "float.tif")
    Image.fromarray(pixels(16, 24)).convert("CMYK").save(folder / "cmyk.jpg")
    save_with_orientation(pixels(20, 32), folder / "exif6.jpg", 6)
    save_with_orientation(pixels(20, 32), folder / "exif3.jpg", 3)
    Image.fromarray(pixels(1, 1)).save(folder / "one.png")
    Image.fromarray(pixels(3, 5)).save(folder / "three_by_five.png")
    truncated_jpeg(folder / "truncated.jpg")
    (folder / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    return {"gray": (12, 18), "gray_alpha": (10, 14), "rgba": (11, 13), "palette": (9, 16), "palette_transparent": (9, 16),
            "sixteen": (14, 10), "int32": (8, 12), "float": (13, 9), "cmyk": (16, 24), "exif6": (32, 20),
            "exif3": (20, 32), "one": (1, 1), "three_by_five": (3, 5)}


def as_unit(tensor: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] in [0, 1]."""
    return ((tensor + 1) / 2).permute(1, 2, 0).numpy()


def tiny_model(task=None, **kwargs) -> LotusModel:
    torch.manual_seed(0)
    return LotusModel(task=task or Depth(), denoiser=SmallUNet(**TINY_UNET), codec=SpaceToDepth(2),
                      processing_resolution=kwargs.pop("processing_resolution", 32), **kwargs).eval()


def predict_folder(model: LotusModel, spec: Path, out: Path, **data) -> Trainer:
    data.setdefault("num_workers", 0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[PredictionWriter(str(out))])
    trainer.predict(model, datamodule=DenseDataModule(predict_input=str(spec), **data), return_predictions=False)
    return trainer


# --------------------------------------------------------------------------- #
# load_image: every kind
# --------------------------------------------------------------------------- #
def test_grayscale_and_alpha_modes(tmp_path):
    gray = pixels(6, 7, 1)
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_allclose(as_unit(load_image(tmp_path / "l.png")), np.repeat(gray[..., None], 3, -1) / 255, atol=1e-6)

    la = np.stack([gray, np.where(np.arange(7) < 3, 0, 255).astype(np.uint8)[None].repeat(6, 0)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = as_unit(load_image(tmp_path / "la.png"))
    np.testing.assert_allclose(out[:, :3], 1.0, atol=1e-6)  # transparent: the white background
    np.testing.assert_allclose(out[:, 3:], np.repeat(gray[:, 3:, None], 3, -1) / 255, atol=1e-6)

    rgba = pixels(6, 7, 4)
    rgba[..., 3] = np.where(np.arange(7) < 3, 0, 255)[None]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = as_unit(load_image(tmp_path / "rgba.png"))
    np.testing.assert_allclose(out[:, :3], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 3:], rgba[:, 3:, :3] / 255, atol=1e-6)


def test_palette_modes(tmp_path):
    palette = Image.fromarray(pixels(8, 9)).quantize(6)
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(as_unit(load_image(tmp_path / "p.png")), np.asarray(palette.convert("RGB")) / 255, atol=1e-6)
    palette.save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as img:
        assert img.mode == "P" and img.info["transparency"] == 0
    out = as_unit(load_image(tmp_path / "pt.png"))
    index = np.asarray(palette)
    np.testing.assert_allclose(out[index == 0], 1.0, atol=1e-6)  # the transparent colour becomes white
    np.testing.assert_allclose(out[index != 0], (np.asarray(palette.convert("RGB")) / 255)[index != 0], atol=1e-6)


def test_sixteen_bit_keeps_its_precision(tmp_path):
    values = np.array([[0, 1, 1000, 1001, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "sixteen.png") as img:
        assert img.mode == "I;16"
    out = load_image(tmp_path / "sixteen.png")
    assert out.dtype == torch.float32 and out.shape == (3, 1, 6)
    np.testing.assert_allclose(((out[0, 0] + 1) / 2).numpy(), values[0] / 65535, rtol=0, atol=1e-7)
    assert out[0, 0, 3] > out[0, 0, 2] and out[0, 0, 5] > out[0, 0, 4]  # neighbours one step apart stay apart


def test_int32_and_float_images(tmp_path):
    sixteen_range = np.array([[0, 300, 65535]], dtype=np.int32)
    Image.fromarray(sixteen_range).save(tmp_path / "i16.tif")
    wide = np.array([[-50, 0, 99950]], dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    unit = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    hdr = np.array([[-2.0, 2.0, 6.0, np.nan]], dtype=np.float32)
    Image.fromarray(hdr).save(tmp_path / "hdr.tif")
    for name, mode, expected in [("i16", "I", sixteen_range[0] / 65535), ("wide", "I", [0.0, 0.0005, 1.0]),
                                 ("unit", "F", unit[0]), ("hdr", "F", [0.0, 0.5, 1.0, 0.0])]:
        with Image.open(tmp_path / f"{name}.tif") as img:
            assert img.mode == mode, name
        out = load_image(tmp_path / f"{name}.tif")
        np.testing.assert_allclose(((out[:, 0] + 1) / 2).numpy(), np.broadcast_to(expected, out[:, 0].shape), atol=1e-6, err_msg=name)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = (220, 30, 30)
    rgb[:, 16:] = (30, 30, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
    np.testing.assert_allclose(as_unit(load_image(tmp_path / "cmyk.jpg"))[4:12, [4, 11, 20, 27]], rgb[4:12, [4, 11, 20, 27]] / 255, atol=0.06)


@pytest.mark.parametrize("orientation,turns,upright", [(6, -1, (32, 20)), (3, 2, (20, 32))])
def test_exif_rotated_jpeg_comes_upright(tmp_path, orientation, turns, upright):
    path = tmp_path / f"exif{orientation}.jpg"
    save_with_orientation(pixels(20, 32), path, orientation)
    with Image.open(path) as img:
        stored = np.asarray(img.convert("RGB")) / 255  # the same decoder, without the rotation
    assert upright_size(path) == upright
    out = as_unit(load_image(path))
    assert out.shape[:2] == upright
    np.testing.assert_allclose(out, np.rot90(stored, turns), atol=1e-6)  # 6: 90° clockwise; 3: 180°


@pytest.mark.parametrize("size", [(1, 1), (3, 5)])
def test_tiny_images(tmp_path, size):
    rgb = pixels(*size)
    Image.fromarray(rgb).save(tmp_path / "tiny.png")
    np.testing.assert_allclose(as_unit(load_image(tmp_path / "tiny.png")), rgb / 255, atol=1e-6)


def test_a_batch_of_unreadable_images_is_empty_not_missing(tmp_path, caplog):
    truncated_jpeg(tmp_path / "cut.jpg")
    [job] = plan_inputs([tmp_path / "cut.jpg"])
    with caplog.at_level(logging.WARNING):
        [batch] = list(job.batches())
    assert batch["path"] == [] and batch["image"].shape == (0, 3, 40, 40)
    assert f"skipping {tmp_path / 'cut.jpg'}: cannot read it as an image (image file is truncated" in caplog.text
    assert tiny_model().predict_step(batch, 0)["path"] == []


def test_unreadable_files_raise_with_their_name(tmp_path):
    truncated_jpeg(tmp_path / "cut.jpg")
    assert upright_size(tmp_path / "cut.jpg") == (40, 40)  # the header is intact: it fails only when decoded
    with pytest.raises(OSError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_bytes(b"plain text")
    with pytest.raises(OSError, match="text.png"):
        load_image(tmp_path / "text.png")


def test_huge_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    """A 5000×4000 JPEG read for a processing resolution of 32 is decoded at 1/8 scale (DCT scaling)
    and comes back at the model's processing size; the full-size image is never decoded."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (5000, 4000), (90, 140, 200)).save(path, quality=80)
    decoded = []
    original = ImageOps.exif_transpose

    def spy(img, **kwargs):
        out = original(img, **kwargs)
        decoded.append(out.size)
        return out

    monkeypatch.setattr(images_module.ImageOps, "exif_transpose", spy)
    out = load_image(path, max_size=32)
    assert out.shape == (3, *processing_size((4000, 5000), 32)) == (3, 26, 32)
    assert decoded == [(625, 500)]  # 1/8 of each side: 64 times fewer pixels than the image
    np.testing.assert_allclose(as_unit(out)[5, 5], np.array([90, 140, 200]) / 255, atol=0.02)
    assert load_image(path, max_size=8000).shape == (3, 4000, 5000)  # not larger than max_size: as is


# --------------------------------------------------------------------------- #
# Videos
# --------------------------------------------------------------------------- #
def test_video_frames_in_order_named_and_marked(tmp_path):
    write_video(tmp_path / "clip.mkv")  # ffv1 (lossless), no frame count in the container
    assert probe_video(tmp_path / "clip.mkv").frames == 8 and probe_video(tmp_path / "clip.mkv").size == (24, 32)
    [job] = plan_inputs([tmp_path / "clip.mkv"], batch_size=3)
    batches = list(job.batches())
    assert job.num_batches == len(batches) == 3
    assert [len(b["path"]) for b in batches] == [3, 3, 2]
    frames = [f for b in batches for f in b["frame"]]
    assert frames == list(range(8))
    assert [p for b in batches for p in b["path"]] == [f"{tmp_path / 'clip.mkv'}#{i:06d}" for i in range(8)]
    assert all(s == str(tmp_path / "clip.mkv") for b in batches for s in b["sequence"])
    assert all(size == [24, 32] for b in batches for size in b["size"])
    image = torch.cat([b["image"] for b in batches])
    assert image.shape == (8, 3, 24, 32)
    torch.testing.assert_close(image[:, 0, 0, 0], torch.tensor([20 * i for i in range(8)]) / 255 * 2 - 1)
    assert (image[:, 1, :12] > 0.5).all() and (image[:, 1, 12:] < -0.9).all()  # the mark stays on top


def test_video_stride_and_max_frames(tmp_path):
    write_video(tmp_path / "clip.mkv")
    [job] = plan_inputs([tmp_path / "clip.mkv"], batch_size=2, video_stride=3)
    assert job.frames == 3 and [f for b in job.batches() for f in b["frame"]] == [0, 3, 6]
    [job] = plan_inputs([tmp_path / "clip.mkv"], batch_size=2, video_stride=2, max_frames=3)
    assert job.frames == 3 and job.num_batches == 2 and [f for b in job.batches() for f in b["frame"]] == [0, 2, 4]
    with pytest.raises(ValueError, match="video_stride"):
        plan_inputs([tmp_path / "clip.mkv"], video_stride=0)


def test_mp4_declares_its_frame_count(tmp_path):
    write_video(tmp_path / "clip.mp4", codec="mpeg4", pix_fmt="yuv420p")
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert container.streams.video[0].frames == 8  # declared (the mkv above counts packets instead)
    assert probe_video(tmp_path / "clip.mp4").frames == 8
    frames = list(iter_frames(tmp_path / "clip.mp4"))
    assert [i for i, _ in frames] == list(range(8)) and frames[0][1].shape == (24, 32, 3)
    np.testing.assert_allclose([rgb[16, 16, 0] for _, rgb in frames], [20 * i for i in range(8)], atol=12)  # lossy


def test_video_display_rotation_is_applied(tmp_path):
    write_video(tmp_path / "portrait.mkv", rotation=-90)  # stored landscape, shown turned 90° clockwise
    assert probe_video(tmp_path / "portrait.mkv").size == (32, 24)
    _, rgb = next(iter_frames(tmp_path / "portrait.mkv"))
    assert rgb.shape == (32, 24, 3)
    assert (rgb[:, 12:, 1] == 200).all() and (rgb[:, :12, 1] == 0).all()  # the top mark is now on the right


def test_video_frames_resized_by_the_loader(tmp_path):
    write_video(tmp_path / "clip.mkv", frames=3)
    [job] = plan_inputs([tmp_path / "clip.mkv"], batch_size=4, max_size=16)
    [batch] = list(job.batches())
    assert batch["image"].shape == (3, 3, 12, 16) and batch["size"] == [[24, 32]] * 3


def test_broken_videos_are_reported_and_skipped(tmp_path, caplog):
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01 definitely not a video" * 50)
    (tmp_path / "empty.mkv").write_bytes(b"")
    write_video(tmp_path / "good.mkv", frames=2)
    Image.fromarray(pixels(6, 6)).save(tmp_path / "photo.png")
    with caplog.at_level(logging.WARNING):
        jobs = plan_inputs(list_inputs(str(tmp_path)))
    assert [type(j).__name__ for j in jobs] == ["VideoFrames", "ImageBatch"]
    assert "garbage.mp4: cannot read it as a video" in caplog.text and "empty.mkv" in caplog.text
    with pytest.raises(VideoError, match="garbage.mp4"):
        probe_video(tmp_path / "garbage.mp4")


def test_decoding_failure_keeps_the_frames_before_it(tmp_path, caplog, monkeypatch):
    write_video(tmp_path / "clip.mkv")
    [job] = plan_inputs([tmp_path / "clip.mkv"], batch_size=2)

    def failing(path, stride, max_size):
        for index, rgb in iter_frames(path, stride, max_size):
            if index == 3:
                raise VideoError(f"{path}: decoding failed after frame 2 (corrupt packet)")
            yield index, rgb

    monkeypatch.setattr(inputs_module, "iter_frames", failing)
    with caplog.at_level(logging.WARNING):
        batches = list(job.batches())
    assert [b["frame"] for b in batches] == [[0, 1], [2], [], []]  # as many batches as planned, the last two empty
    assert batches[-1]["image"].shape == (0, 3, 24, 32) and batches[-1]["path"] == []
    assert "skipping the rest of" in caplog.text and "clip.mkv: decoding failed after frame 2" in caplog.text


def test_frames_beyond_the_planned_count_are_cut_with_a_warning(tmp_path, caplog):
    write_video(tmp_path / "clip.mkv")
    size = probe_video(tmp_path / "clip.mkv").size
    with caplog.at_level(logging.WARNING):
        capped = [f for b in VideoFrames(str(tmp_path / "clip.mkv"), size, 5, batch_size=2, capped=True).batches() for f in b["frame"]]
        assert capped == [0, 1, 2, 3, 4] and not caplog.text  # max_frames asked for it
        short = [f for b in VideoFrames(str(tmp_path / "clip.mkv"), size, 5, batch_size=2).batches() for f in b["frame"]]
    assert short == [0, 1, 2, 3, 4] and "more frames than its container declares" in caplog.text


def test_output_stems():
    assert output_stem("dir/photo.jpg") == "photo"
    assert output_stem(frame_path("dir/clip.mp4", 12)) == "clip_000012"
    assert output_stem("dir/clip.MKV#000003") == "clip_000003"
    assert output_stem("dir/odd#12.png") == "odd#12"  # not a video frame


# --------------------------------------------------------------------------- #
# Batching and workers
# --------------------------------------------------------------------------- #
def test_mixed_sizes_are_batched_by_size_in_a_fixed_order(tmp_path):
    sizes = {"a": (10, 12), "b": (20, 8), "c": (10, 12), "d": (20, 8), "e": (10, 12), "f": (6, 6)}
    for name, size in sizes.items():
        Image.fromarray(pixels(*size)).save(tmp_path / f"{name}.png")
    jobs = plan_inputs(list_inputs(str(tmp_path)), batch_size=2)
    assert [[Path(p).stem for p in j.paths] for j in jobs] == [["a", "c"], ["b", "d"], ["e"], ["f"]]
    dataset = PredictInputs(jobs)
    batches = list(dataset)
    assert len(batches) == len(dataset) == 4
    for batch in batches:
        assert all(tuple(batch["image"].shape[-2:]) == sizes[Path(p).stem] for p in batch["path"])
    one = plan_inputs(list_inputs(str(tmp_path)), batch_size=1)
    assert [Path(j.paths[0]).stem for j in one] == list("abcdef")  # batch size 1: path order


def test_workers_keep_each_videos_frames_in_order(tmp_path):
    write_video(tmp_path / "a.mkv", frames=7)
    write_video(tmp_path / "b.mkv", frames=5, size=(16, 20))
    for i in range(3):
        Image.fromarray(pixels(8, 8)).save(tmp_path / f"img{i}.png")
    dataset = PredictInputs(plan_inputs(list_inputs(str(tmp_path)), batch_size=2))
    seen: dict[str, list[int]] = {}
    count = 0
    for batch in DataLoader(dataset, batch_size=None, num_workers=2):
        count += 1
        for sequence, frame in zip(batch.get("sequence", []), batch.get("frame", [])):
            seen.setdefault(Path(sequence).name, []).append(frame)
    assert count == len(dataset) == 4 + 3 + 2
    assert seen == {"a.mkv": list(range(7)), "b.mkv": list(range(5))}


def test_ranks_share_the_inputs_whole_and_disjoint(tmp_path):
    write_video(tmp_path / "clip.mkv", frames=6)
    for i in range(4):
        Image.fromarray(pixels(8, 8)).save(tmp_path / f"img{i}.png")
    data = DenseDataModule(predict_input=str(tmp_path), num_workers=0)
    shares = []
    for rank in range(2):
        data._rank_world = lambda rank=rank: (rank, 2)
        shares.append([p for batch in data.predict_dataloader() for p in batch["path"]])
    assert shares[0] == [frame_path(tmp_path / "clip.mkv", i) for i in range(6)]  # 6 frames against 4 images
    assert shares[1] == [str(tmp_path / f"img{i}.png") for i in range(4)]


def test_inputs_that_would_write_the_same_files_are_pointed_out(tmp_path, caplog):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels(8, 8)).save(tmp_path / folder / "x.png")
    with caplog.at_level(logging.WARNING):
        plan_inputs(list_inputs(str(tmp_path)))
    assert f"{tmp_path / 'a' / 'x.png'} and {tmp_path / 'b' / 'x.png'} share the output name 'x'" in caplog.text


# --------------------------------------------------------------------------- #
# The predict path: outputs of every kind, skips, progress bar
# --------------------------------------------------------------------------- #
def check_depth_outputs(out: Path, stem: str, size: tuple[int, int]) -> None:
    png = np.asarray(Image.open(out / f"{stem}_depth.png"))
    assert png.dtype == np.uint16 and png.shape == size, stem
    values = np.load(out / f"{stem}_depth.npy")
    assert values.dtype == np.float32 and values.shape == size, stem
    meta = json.loads((out / f"{stem}_depth.json").read_text())
    assert meta["png_scale"] == 65535 and meta["space"] == "disparity"
    np.testing.assert_allclose(png / meta["png_scale"], values, atol=0.5 / 65535 + 1e-7)  # the PNG is the npy, scaled
    color = np.asarray(Image.open(out / f"{stem}_depth_color.png"))
    assert color.dtype == np.uint8 and color.shape == (*size, 3), stem


def test_every_odd_image_is_predicted_at_its_size_and_broken_ones_skipped(tmp_path, caplog):
    expected = write_every_image_kind(tmp_path / "photos")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        trainer = predict_folder(tiny_model(), tmp_path / "photos", out, predict_batch_size=2)
    for stem, size in expected.items():
        check_depth_outputs(out, stem, size)
    assert not list(out.glob("truncated*")) and not list(out.glob("not_an_image*"))
    assert f"skipping {tmp_path / 'photos' / 'truncated.jpg'}: cannot read it as an image" in caplog.text
    assert f"skipping {tmp_path / 'photos' / 'not_an_image.png'}: cannot read it as an image" in caplog.text
    # sized: 13 sizes (the two palette images share one, and the truncated JPEG's header is readable)
    assert trainer.num_predict_batches == [13]


def test_large_image_is_resized_by_the_loader_and_written_at_its_size(tmp_path):
    Image.fromarray(np.kron(pixels(12, 16), np.ones((75, 75, 1), np.uint8))).save(tmp_path / "large.png")  # 900 × 1200
    model = tiny_model()
    reference = model.predict_image(load_image(tmp_path / "large.png")[None])[0, 0].numpy()  # the whole tensor
    [job] = plan_inputs([tmp_path / "large.png"], max_size=32)
    assert next(job.batches())["image"].shape == (1, 3, 24, 32)
    predict_folder(model, tmp_path / "large.png", tmp_path / "out")
    check_depth_outputs(tmp_path / "out", "large", (900, 1200))
    written = np.load(tmp_path / "out" / "large_depth.npy")
    assert np.abs(written - reference).mean() < 0.005  # as resizing inside the model, up to uint8 rounding (0.0006 seen; misaligned: 0.06)


@pytest.mark.slow
def test_huge_image_is_written_at_its_size(tmp_path):
    Image.new("RGB", (5000, 4000), (90, 140, 200)).save(tmp_path / "huge.jpg")
    predict_folder(tiny_model(), tmp_path / "huge.jpg", tmp_path / "out")
    check_depth_outputs(tmp_path / "out", "huge", (4000, 5000))


def test_normal_model_writes_png_and_npy_for_images_and_frames(tmp_path):
    Image.fromarray(pixels(10, 14)).save(tmp_path / "photo.png")
    write_video(tmp_path / "clip.mkv", frames=3)
    predict_folder(tiny_model(Normal()), tmp_path, tmp_path / "out", predict_batch_size=2)
    for stem, size in [("photo", (10, 14)), *((f"clip_{i:06d}", (24, 32)) for i in range(3))]:
        rgb = np.asarray(Image.open(tmp_path / "out" / f"{stem}_normal.png"))
        assert rgb.dtype == np.uint8 and rgb.shape == (*size, 3)
        normal = np.load(tmp_path / "out" / f"{stem}_normal.npy")
        assert normal.dtype == np.float32 and normal.shape == (3, *size)
        np.testing.assert_allclose(np.linalg.norm(normal, axis=0), 1.0, atol=1e-4)
    assert not list((tmp_path / "out").glob("*_temporal.json"))  # a depth figure


def test_progress_bar_total_is_the_number_of_batches(tmp_path):
    for i in range(3):
        Image.fromarray(pixels(8, 8 + i)).save(tmp_path / f"img{i}.png")
    write_video(tmp_path / "clip.mkv", frames=4)
    totals = []

    class ReadTotal(Callback):
        def on_predict_batch_end(self, trainer, *args):
            totals.append(trainer.progress_bar_callback.total_predict_batches_current_dataloader)

    trainer = Trainer(accelerator="cpu", logger=False, enable_model_summary=False, callbacks=[ReadTotal()])
    data = DenseDataModule(predict_input=str(tmp_path), num_workers=0)
    trainer.predict(tiny_model(processing_resolution=16), datamodule=data, return_predictions=False)
    assert trainer.num_predict_batches == [7]  # 3 images and 4 frames, one per batch
    assert totals == [7] * 7


# --------------------------------------------------------------------------- #
# Temporal consistency
# --------------------------------------------------------------------------- #
def ramp_and_checkerboard(height: int = 6, width: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """f: 0..1 along x; g: ±1 checkerboard, orthogonal to 1 and to f (even height)."""
    f = torch.linspace(0, 1, width, dtype=torch.float64).expand(height, width)
    g = (-1.0) ** (torch.arange(height)[:, None] + torch.arange(width)[None]).double()
    return f, g


def test_constant_sequence_changes_by_zero():
    frame = torch.rand(8, 12)
    assert temporal_consistency([frame] * 5) == 0.0


def test_scale_and_shift_alone_are_aligned_away():
    f, _ = ramp_and_checkerboard()
    frames = [f, 2 * f + 3, 0.5 * f - 1, 10 * f]
    assert temporal_consistency(frames, "depth") == pytest.approx(0.0, abs=1e-12)


def test_known_perturbation_gives_its_value():
    """Pair 1: f aligns onto f + δg with scale 1, shift 0 (g ⟂ 1, f), leaving |δg| = δ over a range
    of 1 + 2δ; pair 2: 2f + 3 aligns exactly onto f. Mean: δ / (1 + 2δ) / 2."""
    f, g = ramp_and_checkerboard()
    delta = 0.1
    assert frame_change(f + delta * g, f) == pytest.approx(delta / (1 + 2 * delta), rel=1e-9)
    assert temporal_consistency([f + delta * g, f, 2 * f + 3]) == pytest.approx(delta / (1 + 2 * delta) / 2, rel=1e-9)


def test_meter_needs_order_and_bounds_its_frames():
    meter = TemporalConsistencyMeter("disparity", max_size=16)
    meter.update(torch.rand(1, 60, 80), frame=4)
    assert tuple(meter._previous.shape) == (12, 16)  # kept small: one frame per sequence
    with pytest.raises(ValueError, match="frame 2 after frame 4"):
        meter.update(torch.rand(60, 80), frame=2)
    assert meter.compute()["mean_change"] is None and meter.compute()["frames"] == 1
    with pytest.raises(ValueError, match="space"):
        TemporalConsistencyMeter("metres")


# --------------------------------------------------------------------------- #
# The command end to end
# --------------------------------------------------------------------------- #
def test_cli_predict_on_odd_images_a_video_and_broken_files(tiny_dataset, tiny_sd, tmp_path, caplog, capsys, monkeypatch):
    folder = tmp_path / "inputs"
    expected = write_every_image_kind(folder)
    write_video(folder / "clip.mkv", frames=8)
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "predictions"
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, tmp_path / "run")
    kept = []
    original_end = PredictionWriter.on_predict_end

    def recording_end(self, trainer, pl_module):
        kept.append(trainer.predict_loop.return_predictions)
        original_end(self, trainer, pl_module)

    monkeypatch.setattr(PredictionWriter, "on_predict_end", recording_end)
    with caplog.at_level(logging.WARNING):
        main(["predict", *args, f"--data.predict_input={folder}", f"--trainer.callbacks.output_dir={out}",
              "--model.processing_resolution=32", "--data.predict_batch_size=3", "--data.num_workers=2"])
    for stem, size in {**expected, **{f"clip_{i:06d}": (24, 32) for i in range(8)}}.items():
        check_depth_outputs(out, stem, size)
    for name in ("truncated.jpg", "not_an_image.png", "broken.mp4"):
        assert not list(out.glob(f"{Path(name).stem}*"))
    # reported while planning, in this process (the truncated JPEG is reported by the loader worker that reads it)
    assert f"skipping {folder / 'not_an_image.png'}: cannot read it as an image" in caplog.text
    assert f"skipping {folder / 'broken.mp4'}: cannot read it as a video" in caplog.text
    temporal = json.loads((out / "clip_temporal.json").read_text())
    assert temporal["sequence"] == str(folder / "clip.mkv") and temporal["frames"] == 8
    assert len(temporal["per_pair"]) == 7 and temporal["mean_change"] == pytest.approx(np.mean(temporal["per_pair"]))
    assert temporal["space"] == "disparity" and 0 <= temporal["mean_change"] < 1
    assert f"temporal consistency of {folder / 'clip.mkv'} (8 frames)" in capsys.readouterr().out
    assert kept == [False]  # predictions go to disk; Lightning's default would also keep them all in memory
