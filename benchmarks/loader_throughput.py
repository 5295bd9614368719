#!/usr/bin/env python
"""Training loader throughput against the floor of decoding the same samples in a bare loop.

Writes Hypersim-format shards at 576×768 (``rgb.jpg`` at quality 95, 16-bit ``depth.png``,
``normal.png``, ``mask.png``, ``json``: what ``lotus_pl data hypersim`` stores), then measures

* the floor: reading the tars and calling ``decode_sample`` on the fields a depth task decodes
  (rgb, depth, mask, json) into the tensors the model trains on, nothing else, in one process;
* the loader: batches out of ``DenseDataModule.train_dataloader()`` for a depth task — shard
  assignment, shuffle buffer, decode with the bad-data checks, random horizontal flip, batching,
  and for ``workers`` > 0 the worker processes and the hand-over of batches. Its images are uint8;
  ``on_after_batch_transfer`` turns them into the floats the model uses on the GPU, after the
  transfer, so that step is not timed here (it is applied once, untimed, as a check).

Floors and loaders are timed in turn, ``--repeats`` rounds, so that a busy machine slows all alike;
printed are medians and ``ratio = loader / (floor × workers)`` per round, median over rounds
(``workers = 0`` runs in the main process and counts as one). The target is a ratio of at least 0.8.
Loader timings start after two warm-up batches: worker start-up and filling the shuffle buffer are
not counted. A second floor decodes to uint8 images, as the workers do; the ratio to it is the
loader machinery's own cost (mostly writing each batch once into fresh shared memory). The CPU time
the worker process spent per sample is printed too, as wall-clock on a shared machine is noisy.
Worker counts above the number of free cores measure the machine, not the loader.

    python benchmarks/loader_throughput.py                   # ~1 minute on 2 cores
    python benchmarks/loader_throughput.py --workers 0 1 2 --repeats 7
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lotus_pl.data.datamodule import DenseDataModule  # noqa: E402
from lotus_pl.data.manifest import Manifest, ShardEntry, sha256_file  # noqa: E402
from lotus_pl.data.renderer import render_random  # noqa: E402
from lotus_pl.data.samples import decode_sample, encode_depth_png, encode_normal_png  # noqa: E402

FIELDS = ("rgb", "depth", "mask", "json")  # what a depth task's training batch decodes


def make_sample(index: int, height: int, width: int) -> dict[str, bytes | str]:
    """A rendered room, upscaled to the training size with a little sensor noise (JPEG-realistic)."""
    view = render_random(index, height // 4, width // 4)
    rows = np.arange(height) * (height // 4) // height
    cols = np.arange(width) * (width // 4) // width
    rgb = np.asarray(Image.fromarray(view.rgb).resize((width, height), Image.BILINEAR)).astype(np.int16)
    rgb = np.clip(rgb + np.random.default_rng(index).integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
    depth, normal = view.depth[rows][:, cols], view.normal[rows][:, cols]
    mask = (depth > 0).astype(np.uint8) * 255
    out = {"__key__": f"bench_{index:06d}"}
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
    out["rgb.jpg"] = buf.getvalue()
    out["depth.png"] = encode_depth_png(depth, 1000.0)
    out["normal.png"] = encode_normal_png(normal)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    out["mask.png"] = buf.getvalue()
    meta = {"fx": view.fx * 4, "fy": view.fy * 4, "cx": width / 2, "cy": height / 2, "depth_scale": 1000.0}
    out["json"] = json.dumps(meta).encode()
    return out


def write_shards(folder: Path, samples: int, per_shard: int, height: int, width: int) -> Path:
    entries = []
    for k, start in enumerate(range(0, samples, per_shard)):
        path = folder / f"bench-{k:06d}.tar"
        with wds.TarWriter(str(path), mtime=0.0, encoder=False) as sink:
            for i in range(start, min(start + per_shard, samples)):
                sink.write(make_sample(i, height, width))
        entries.append(ShardEntry(path.name, min(per_shard, samples - start), sha256_file(path)))
    manifest = folder / "bench.yaml"
    Manifest("bench", entries, ["rgb.jpg", "depth.png", "normal.png", "mask.png", "json"], [height, width], 1000.0,
             "CC0", "benchmarks/loader_throughput.py").save(manifest)
    return manifest


def floor_rate(manifest: Path, uint8_image: bool = False) -> float:
    """Samples per second of the bare loop: read every tar, decode the fields, nothing else."""
    count, start = 0, time.perf_counter()
    for url in Manifest.load(manifest).urls():
        sample: dict = {}
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                if sample and sample["__key__"] != key:
                    decode_sample(sample, required=("rgb", "depth"), uint8_image=uint8_image)
                    count += 1
                    sample = {}
                sample["__key__"] = key
                if suffix.split(".")[0] in FIELDS:
                    sample[suffix] = tar.extractfile(member).read()
        decode_sample(sample, required=("rgb", "depth"), uint8_image=uint8_image)
        count += 1
    return count / (time.perf_counter() - start)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def loader_rate(manifest: Path, workers: int, batch_size: int, batches: int) -> tuple[float, float]:
    """Samples per second of the training loader after two warm-up batches, and the CPU milliseconds
    per sample spent by its worker processes (by this process for ``workers = 0``)."""
    dm = DenseDataModule(train_manifest=str(manifest), batch_size=batch_size, num_workers=workers, hflip=0.5,
                         required=["rgb", "depth"])
    iterator = iter(dm.train_dataloader())
    for _ in range(2):
        next(iterator)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    cpu = (lambda: sum(_cpu_seconds(p) for p in pids)) if pids else time.process_time
    start, cpu_start = time.perf_counter(), cpu()
    for _ in range(batches):
        batch = next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    cpu_ms = (cpu() - cpu_start) / (batches * batch_size) * 1000
    del iterator  # stops the workers
    batch = dm.on_after_batch_transfer(batch, 0)  # what the GPU does after the transfer
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[-2:] == batch["depth"].shape[-2:]
    return rate, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="samples written (8 per shard)")
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per loader repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)  # idle OpenMP threads of this process would spin on the workers' cores

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        manifest = write_shards(Path(folder), args.samples, 8, args.height, args.width)
        print(f"{args.samples} samples at {args.height}x{args.width} in {len(Manifest.load(manifest).shards)} shards "
              f"({time.perf_counter() - start:.1f} s to write), batches of {args.batch_size}")
        floors: dict[str, list[tuple[float, float]]] = {"float": [], "uint8": []}
        loaders: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for name in floors:
                cpu_start = time.process_time()
                rate = floor_rate(manifest, uint8_image=name == "uint8")
                floors[name].append((rate, (time.process_time() - cpu_start) / args.samples * 1000))
            for workers in args.workers:
                loaders[workers].append(loader_rate(manifest, workers, args.batch_size, args.batches))

        def summary(runs: list[tuple[float, float]]) -> str:
            rates = [r for r, _ in runs]
            return (f"{statistics.median(rates):6.1f} samples/s [{min(rates):5.1f} .. {max(rates):5.1f}]  "
                    f"{statistics.median(c for _, c in runs):5.1f} ms CPU/sample")

        for name, runs in floors.items():
            print(f"floor, bare loop, {name} images : {summary(runs)}")
        worst = float("inf")
        for workers, runs in loaders.items():
            ratios = {name: statistics.median(r / (f[0] * max(workers, 1)) for (r, _), f in zip(runs, floor))
                      for name, floor in floors.items()}
            worst = min(worst, ratios["float"])
            label = f"loader, {workers} worker(s)" + (" (in process)" if workers == 0 else "")
            print(f"{label:<32}: {summary(runs)}  ratio per worker {ratios['float']:.2f} "
                  f"(to the uint8 floor {ratios['uint8']:.2f})")
    print(f"medians of {args.repeats} rounds; lowest ratio {worst:.2f} "
          f"({'meets' if worst >= 0.8 else 'BELOW'} the 0.8 target)")


if __name__ == "__main__":
    main()
