"""Converters from the depth benchmarks' distributed evaluation layouts to shards + manifests.

``lotus_pl data nyuv2|kitti|eth3d|scannet|diode --root ...`` runs these. Each accepts the layout the
Marigold / Lotus evaluation archives use (the one described in ``docs/evaluation.md``), either
with the archive's filename list (``--filenames``: one sample per line, whitespace-separated paths
relative to ``--root``, as in Marigold's ``data_split`` files) or by finding the pairs itself.

What each writes (the ground truth decoding, crop and depth range of REFERENCE.md section 3):

========  ==============================  =====================================================
dataset   ground truth                    scoring mask (``mask.png``)
========  ==============================  =====================================================
nyuv2     uint16 mm, verbatim (``/1000``)  Eigen crop
kitti     uint16, verbatim (``/256``)      Eigen crop of the 352 × 1216 benchmark crop
eth3d     float32 raw -> ``depth.npy``     none (inf = invalid)
scannet   uint16 mm, verbatim (``/1000``)  none
diode     float32 npy -> ``depth.npy``     the dataset's ``*_depth_mask.npy``
========  ==============================  =====================================================

The depth range itself is not applied here: it belongs to the metric (``experiments/eval/*.yaml``
sets ``min_depth`` / ``max_depth``), so the shards keep every measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from lotus_pl.evaluation.crops import KITTI_BENCHMARK_SIZE, kitti_benchmark_crop, kitti_eigen_mask, nyu_eigen_mask
from lotus_pl.evaluation.shards import (
    EvalSample,
    read_float32_raw,
    read_rgb,
    read_rgb_array,
    read_uint16_png,
    sample_key,
    write_eval_shards,
)

#: Images in each benchmark's evaluation split (a different count is reported, not refused).
EXPECTED_COUNTS = {"nyuv2": 654, "kitti": 652, "eth3d": 454, "scannet": 800, "diode": 771}


def read_filenames(path: str | Path) -> list[list[str]]:
    """Whitespace-separated fields per non-empty line; ``#`` starts a comment line."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split())
    return rows


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    return path


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _report_count(name: str, count: int) -> None:
    expected = EXPECTED_COUNTS[name]
    if count != expected:
        print(f"{name}: converted {count} samples; the paper's split has {expected}")


def _write(name: str, samples: Iterator[EvalSample], out: str, manifest: str, licence: str, created_by: str,
           samples_per_shard: int) -> str:
    """Stream ``samples`` into shards (one sample in memory at a time: ETH3D's are ~100 MB)."""
    written = write_eval_shards(samples, out, manifest, f"{name}_test", licence, created_by, samples_per_shard)
    _report_count(name, written.num_samples)
    return manifest


# --------------------------------------------------------------------------- NYUv2
def nyuv2_pairs(root: Path, filenames: str | None) -> list[tuple[Path, Path]]:
    """(rgb, depth) paths: from the filename list, else every ``rgb_XXXX.png`` with its
    ``depth_XXXX.png`` under ``root/test`` (or ``root`` when it has no ``test`` folder)."""
    if filenames is not None:
        return [(root / row[0], root / row[1]) for row in read_filenames(filenames)]
    base = root / "test" if (root / "test").is_dir() else root
    return [(rgb, rgb.with_name("depth_" + rgb.name[len("rgb_"):])) for rgb in sorted(base.rglob("rgb_*.png"))]


def convert_nyuv2(root: str, out: str = "data/eval/nyuv2", manifest: str = "data_manifests/nyuv2_test.yaml",
                  filenames: str | None = None, samples_per_shard: int = 32) -> str:
    """NYUv2 test split (Eigen, 654 images of 480 × 640) -> shards with the Eigen crop as mask.

    Args:
        root: folder with ``test/<scene>/rgb_XXXX.png`` and ``depth_XXXX.png`` (uint16 millimetres),
            as in Marigold's ``nyu_labeled_extracted`` archive.
        out: folder for the shards.
        manifest: manifest file to write.
        filenames: optional list file (``test/<scene>/rgb_XXXX.png test/<scene>/depth_XXXX.png ...``).
        samples_per_shard: samples per shard.
    """
    base = Path(root)

    def samples() -> Iterator[EvalSample]:
        for rgb_path, depth_path in nyuv2_pairs(base, filenames):
            data, ext, size = read_rgb(_require(rgb_path))
            depth = read_uint16_png(_require(depth_path))
            if depth.shape != size:
                raise ValueError(f"{depth_path}: depth {depth.shape} and image {size} differ in size")
            yield EvalSample(
                key=sample_key(_relative(rgb_path, base)), size=size, rgb=data, rgb_ext=ext,
                depth_uint16=depth, depth_scale=1000.0, mask=nyu_eigen_mask(size),
                meta={"source": "nyuv2", "rgb": _relative(rgb_path, base), "depth": _relative(depth_path, base)},
            )

    return _write("nyuv2", samples(), out, manifest, "NYU Depth V2 (Silberman et al. 2012): research use, see its terms",
                  f"lotus_pl data nyuv2 --root {root} --filenames {filenames}", samples_per_shard)


# --------------------------------------------------------------------------- KITTI
def kitti_rows(root: Path, depth_root: Path, filenames: str | None) -> list[tuple[Path, Path, float | None]]:
    """(rgb, depth, focal) for every line of the list with ground truth (``None`` lines are skipped),
    else for every ``<drive>/proj_depth/groundtruth/image_0X/<frame>.png`` found under ``depth_root``."""
    if filenames is not None:
        rows = []
        for row in read_filenames(filenames):
            if len(row) < 2 or row[1] == "None":
                continue
            rows.append((root / row[0], depth_root / row[1], float(row[2]) if len(row) > 2 else None))
        return rows
    rows = []
    for gt in sorted(depth_root.rglob("proj_depth/groundtruth/image_0*/*.png")):
        drive_dir, camera = gt.parents[3], gt.parent.name
        candidates = [drive_dir / camera / "data" / gt.name,
                      root / drive_dir.name[:10] / drive_dir.name / camera / "data" / gt.name]
        rgb = next((c for c in candidates if c.is_file()), candidates[-1])
        rows.append((rgb, gt, None))
    return rows


def convert_kitti(root: str, out: str = "data/eval/kitti", manifest: str = "data_manifests/kitti_test.yaml",
                  filenames: str | None = None, depth_root: str | None = None, samples_per_shard: int = 32) -> str:
    """KITTI Eigen test split (652 images with ground truth) -> 352 × 1216 shards, Eigen crop as mask.

    Images and depth are cut to the benchmark crop (bottom 352 rows, centred 1216 columns); the
    Eigen crop of that is the scoring mask.

    Args:
        root: the raw KITTI folder (``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/*.png``).
        out: folder for the shards.
        manifest: manifest file to write.
        filenames: the Eigen test list (``<rgb> <depth or None> <focal>`` per line, e.g.
            ``eigen_test_files_with_gt.txt``); without it every ground truth file found is used.
        depth_root: folder the list's depth paths (``<drive>/proj_depth/groundtruth/image_02/*.png``,
            uint16, metres × 256) are relative to; ``root`` by default.
        samples_per_shard: samples per shard.
    """
    base = Path(root)
    depth_base = Path(depth_root) if depth_root is not None else base

    def samples() -> Iterator[EvalSample]:
        for rgb_path, depth_path, focal in kitti_rows(base, depth_base, filenames):
            rgb = read_rgb_array(_require(rgb_path))
            depth = read_uint16_png(_require(depth_path))
            if depth.shape != rgb.shape[:2]:
                raise ValueError(f"{depth_path}: depth {depth.shape} and image {rgb.shape[:2]} differ in size")
            top, left = kitti_benchmark_crop(depth.shape)
            rows, cols = slice(top, top + KITTI_BENCHMARK_SIZE[0]), slice(left, left + KITTI_BENCHMARK_SIZE[1])
            meta = {"source": "kitti", "rgb": _relative(rgb_path, base), "depth": depth_path.relative_to(depth_base).as_posix(),
                    "benchmark_crop": [top, left]}
            if focal is not None:
                meta["focal"] = focal
            yield EvalSample(
                key=sample_key(_relative(rgb_path, base)), size=KITTI_BENCHMARK_SIZE, rgb=np.ascontiguousarray(rgb[rows, cols]),
                depth_uint16=np.ascontiguousarray(depth[rows, cols]), depth_scale=256.0,
                mask=kitti_eigen_mask(KITTI_BENCHMARK_SIZE), meta=meta,
            )

    return _write("kitti", samples(), out, manifest, "KITTI (Geiger et al. 2012): CC BY-NC-SA 3.0",
                  f"lotus_pl data kitti --root {root} --filenames {filenames} --depth_root {depth_root}", samples_per_shard)


# --------------------------------------------------------------------------- ETH3D
def eth3d_pairs(root: Path, filenames: str | None) -> list[tuple[Path, Path]]:
    """(rgb, depth): from the list, else ``rgb/<scene>/images/dslr_images/<name>`` with
    ``depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/<name>``."""
    if filenames is not None:
        return [(root / row[0], root / row[1]) for row in read_filenames(filenames)]
    pairs = []
    for rgb in sorted((root / "rgb").glob("*/images/dslr_images/*")):
        scene = rgb.parents[2].name
        pairs.append((rgb, root / "depth" / f"{scene}_dslr_depth" / scene / "ground_truth_depth" / "dslr_images" / rgb.name))
    return pairs


def convert_eth3d(root: str, out: str = "data/eval/eth3d", manifest: str = "data_manifests/eth3d_test.yaml",
                  filenames: str | None = None, samples_per_shard: int = 8) -> str:
    """ETH3D high-resolution multi-view DSLR images (454, 6048 × 4032) -> shards with float depth.

    The ground truth is a headerless float32 file of the image's size (despite its ``.JPG`` name),
    ``inf`` where there is no measurement; it is stored as ``depth.npy`` (16 bits would not hold
    0.5 m to 100+ m at float precision). The JPEG is stored as is. About 100 MB per sample: keep
    ``samples_per_shard`` small.

    Args:
        root: folder with ``rgb/<scene>/images/dslr_images/DSC_XXXX.JPG`` and
            ``depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/DSC_XXXX.JPG``
            (the layout of Marigold's ``eth3d`` archive).
        out: folder for the shards.
        manifest: manifest file to write.
        filenames: optional list file (``<rgb> <depth>`` per line, relative to ``root``).
        samples_per_shard: samples per shard.
    """
    base = Path(root)

    def samples() -> Iterator[EvalSample]:
        for rgb_path, depth_path in eth3d_pairs(base, filenames):
            data, ext, size = read_rgb(_require(rgb_path))
            depth = read_float32_raw(_require(depth_path), size)
            yield EvalSample(
                key=sample_key(_relative(rgb_path, base)), size=size, rgb=data, rgb_ext=ext, depth=depth,
                meta={"source": "eth3d", "rgb": _relative(rgb_path, base), "depth": _relative(depth_path, base)},
            )

    return _write("eth3d", samples(), out, manifest, "ETH3D (Schöps et al. 2017): CC BY-NC-SA 4.0",
                  f"lotus_pl data eth3d --root {root} --filenames {filenames}", samples_per_shard)


# --------------------------------------------------------------------------- ScanNet
def scannet_pairs(root: Path, filenames: str | None) -> list[tuple[Path, Path]]:
    """(rgb, depth): from the list, else every ``<scene>/color/<id>.jpg`` with ``<scene>/depth/<id>.png``."""
    if filenames is not None:
        return [(root / row[0], root / row[1]) for row in read_filenames(filenames)]
    pairs = []
    for rgb in sorted(root.glob("*/color/*.jpg")):
        depth = rgb.parents[1] / "depth" / (rgb.stem + ".png")
        if depth.is_file():
            pairs.append((rgb, depth))
    return pairs


def convert_scannet(root: str, out: str = "data/eval/scannet", manifest: str = "data_manifests/scannet_test.yaml",
                    filenames: str | None = None, samples_per_shard: int = 32) -> str:
    """ScanNet validation sample (800 images) -> shards at the depth maps' 640 × 480.

    A colour image of another size (raw ScanNet's 1296 × 968) is resized to its depth map's size,
    bilinearly (antialiased), and stored as PNG; one of the same size is stored as is.

    Args:
        root: folder with ``<scene>/color/<id>.jpg`` and ``<scene>/depth/<id>.png`` (uint16 mm).
        out: folder for the shards.
        manifest: manifest file to write.
        filenames: optional list file, e.g. Marigold's ``scannet_val_sampled_list_800_1.txt``.
        samples_per_shard: samples per shard.
    """
    base = Path(root)

    def samples() -> Iterator[EvalSample]:
        for rgb_path, depth_path in scannet_pairs(base, filenames):
            data, ext, size = read_rgb(_require(rgb_path))
            depth = read_uint16_png(_require(depth_path))
            rgb: bytes | np.ndarray = data
            if size != depth.shape:
                image = Image.fromarray(read_rgb_array(rgb_path))
                rgb, ext = np.asarray(image.resize((depth.shape[1], depth.shape[0]), Image.BILINEAR)), "png"
            yield EvalSample(
                key=sample_key(_relative(rgb_path, base)), size=depth.shape, rgb=rgb, rgb_ext=ext,
                depth_uint16=depth, depth_scale=1000.0,
                meta={"source": "scannet", "rgb": _relative(rgb_path, base), "depth": _relative(depth_path, base)},
            )

    return _write("scannet", samples(), out, manifest, "ScanNet (Dai et al. 2017): ScanNet Terms of Use, non-commercial",
                  f"lotus_pl data scannet --root {root} --filenames {filenames}", samples_per_shard)


# --------------------------------------------------------------------------- DIODE
def diode_rows(root: Path, filenames: str | None) -> list[tuple[Path, Path, Path]]:
    """(rgb, depth, mask): from the list, else every ``<stem>.png`` beside ``<stem>_depth.npy`` and
    ``<stem>_depth_mask.npy`` under ``root``."""
    if filenames is not None:
        return [(root / row[0], root / row[1], root / row[2]) for row in read_filenames(filenames)]
    rows = []
    for mask in sorted(root.rglob("*_depth_mask.npy")):
        stem = mask.name[: -len("_depth_mask.npy")]
        rows.append((mask.with_name(stem + ".png"), mask.with_name(stem + "_depth.npy"), mask))
    return rows


def convert_diode(root: str, out: str = "data/eval/diode", manifest: str = "data_manifests/diode_test.yaml",
                  filenames: str | None = None, samples_per_shard: int = 32) -> str:
    """DIODE validation split (771 images of 768 × 1024, indoors and outdoor) -> shards.

    Depth (``[H, W, 1]`` float32 metres) is stored as ``depth.npy``; the dataset's own validity mask
    becomes ``mask.png``.

    Args:
        root: DIODE's ``val`` folder (``indoors|outdoor/scene_*/scan_*/<stem>.png``,
            ``<stem>_depth.npy``, ``<stem>_depth_mask.npy``).
        out: folder for the shards.
        manifest: manifest file to write.
        filenames: optional list file (``<rgb> <depth> <mask>`` per line), e.g. Marigold's
            ``diode_val_all_filename_list.txt``.
        samples_per_shard: samples per shard.
    """
    base = Path(root)

    def samples() -> Iterator[EvalSample]:
        for rgb_path, depth_path, mask_path in diode_rows(base, filenames):
            data, ext, size = read_rgb(_require(rgb_path))
            depth = np.load(_require(depth_path)).astype(np.float32)
            mask = np.load(_require(mask_path))
            depth, mask = depth.reshape(depth.shape[:2]), mask.reshape(mask.shape[:2])
            if depth.shape != size or mask.shape != size:
                raise ValueError(f"{depth_path}: depth {depth.shape} / mask {mask.shape} and image {size} differ in size")
            yield EvalSample(
                key=sample_key(_relative(rgb_path, base)), size=size, rgb=data, rgb_ext=ext, depth=depth, mask=mask != 0,
                meta={"source": "diode", "rgb": _relative(rgb_path, base), "depth": _relative(depth_path, base)},
            )

    return _write("diode", samples(), out, manifest, "DIODE (Vasiljevic et al. 2019): MIT",
                  f"lotus_pl data diode --root {root} --filenames {filenames}", samples_per_shard)
