"""The DataModule: WebDataset shards (from manifests) for fit/validate/test, image files for predict.

Training streams shards with replacement (``resampled``), so the stream is endless and every rank
and worker draws its own deterministic shard sequence: all ranks run the same number of steps and
DDP never waits on a rank whose data ran out. Evaluation reads each shard once, split across ranks
and workers. Samples are decoded by :func:`lotus_pl.data.samples.decode_sample`, which names the
shard and key of anything missing or corrupt.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from lotus_pl.data.images import ImageFiles, collate_images
from lotus_pl.data.manifest import Manifest
from lotus_pl.data.samples import decode_sample
from lotus_pl.tasks.normal import hflip_normals

_TENSOR_FIELDS = ("image", "depth", "normal", "albedo", "intrinsics")


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensor fields every sample has; keep sample keys for error messages and outputs."""
    batch: dict[str, Any] = {"key": [s["meta"].get("__key__") for s in samples]}
    for field in _TENSOR_FIELDS:
        if all(field in s for s in samples):
            batch[field] = torch.stack([s[field] for s in samples])
    return batch


class RandomHorizontalFlip:
    """Mirror a sample with probability ``p``; normals also get their x negated."""

    def __init__(self, p: float, seed: int) -> None:
        self.p, self.seed, self.rng = p, seed, None

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.rng is None:  # seeded per rank and worker, on first use inside the worker
            rank, _, worker, _ = wds.utils.pytorch_worker_info()
            self.rng = random.Random(f"{self.seed}-{rank}-{worker}")
        if self.rng.random() >= self.p:
            return sample
        out = dict(sample)
        for field in ("image", "depth", "albedo"):
            if field in out:
                out[field] = out[field].flip(-1)
        if "normal" in out:
            out["normal"] = hflip_normals(out["normal"])
        if "intrinsics" in out:  # cx' = W - cx with pixel-centre coordinates
            fx, fy, cx, cy = out["intrinsics"].tolist()
            out["intrinsics"] = torch.tensor([fx, fy, out["image"].shape[-1] - cx, cy])
        return out


class SyntheticScenes:
    """Render the procedural scenes into shards when a manifest they should fill is missing.

    Args:
        out: folder for the shards.
        num_train, num_val: samples per split.
        size: image side in pixels.
        seed: scene seed (train and val never share scenes).
        samples_per_shard: shard size.
        workers: rendering processes.
    """

    def __init__(self, out: str = "data/synthetic", num_train: int = 1500, num_val: int = 100, size: int = 128,
                 seed: int = 0, samples_per_shard: int = 250, workers: int = 2) -> None:
        self.out, self.num_train, self.num_val, self.size = out, num_train, num_val, size
        self.seed, self.samples_per_shard, self.workers = seed, samples_per_shard, workers

    def ensure(self, manifest: str, split: str) -> None:
        if Path(manifest).is_file():
            return
        from lotus_pl.data.synthetic import write_synthetic_split

        num = self.num_train if split == "train" else self.num_val
        write_synthetic_split(self.out, manifest, split, num, size=self.size, seed=self.seed,
                              samples_per_shard=self.samples_per_shard, workers=self.workers)


class DenseDataModule(LightningDataModule):
    """Shards for training and evaluation, image files for prediction.

    Args:
        train_manifest: manifest of the training shards.
        val_manifest: manifest of the validation shards (also used by ``test`` unless ``test_manifest``).
        test_manifest: manifest for ``lotus_pl test``.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device.
        num_workers: loader processes per device.
        hflip: probability of a random horizontal flip in training.
        shuffle_buffer: samples held for shuffling the training stream.
        seed: seed of the shard sampling and augmentation.
        required: sample fields every sample must have (the task's ground truth is added).
        synthetic: render the procedural scenes into missing manifests (the embedded default).
        predict_input: a file, folder or glob of images for ``lotus_pl predict``.
        predict_batch_size: images per predict batch (same-sized images only when > 1).
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        hflip: float = 0.5,
        shuffle_buffer: int = 256,
        seed: int = 0,
        required: list[str] | None = None,
        synthetic: SyntheticScenes | None = None,
        predict_input: str | None = None,
        predict_batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.train_manifest, self.val_manifest, self.test_manifest = train_manifest, val_manifest, test_manifest
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.hflip, self.shuffle_buffer, self.seed = hflip, shuffle_buffer, seed
        self.required = list(required or ["rgb"])
        self.synthetic = synthetic
        self.predict_input, self.predict_batch_size = predict_input, predict_batch_size

    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        for manifest, split in ((self.train_manifest, "train"), (self.val_manifest, "val")):
            if manifest is not None:
                self.synthetic.ensure(manifest, split)

    def _required_fields(self) -> list[str]:
        fields = list(self.required)
        task = getattr(getattr(self, "trainer", None), "lightning_module", None)
        task = getattr(task, "task", None)
        if task is not None and task.gt_key not in fields:
            fields.append(task.gt_key)
        return fields

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        return decode_sample(raw, required=self._required_fields())

    @staticmethod
    def _urls(manifest: str | None, purpose: str) -> list[str]:
        if manifest is None:
            raise ValueError(f"no {purpose} manifest configured (set data.{purpose}_manifest)")
        return Manifest.load(manifest).urls()

    def train_dataloader(self) -> DataLoader:
        urls = self._urls(self.train_manifest, "train")
        dataset = (
            wds.WebDataset(urls, resampled=True, detshuffle=True, seed=self.seed, nodesplitter=None, shardshuffle=False)
            .shuffle(self.shuffle_buffer, rng=random.Random(self.seed))
            .map(self._decode)
            .map(RandomHorizontalFlip(self.hflip, self.seed))
            .batched(self.batch_size, collation_fn=collate_samples, partial=False)
        )
        return wds.WebLoader(dataset, batch_size=None, num_workers=self.num_workers,
                             persistent_workers=self.num_workers > 0)

    def _eval_loader(self, manifest: str | None, purpose: str) -> DataLoader:
        urls = self._urls(manifest, purpose)
        dataset = (
            wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
            .map(self._decode)
            .batched(self.eval_batch_size, collation_fn=collate_samples, partial=True)
        )
        workers = min(self.num_workers, len(urls))
        return wds.WebLoader(dataset, batch_size=None, num_workers=workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_manifest, "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_manifest or self.val_manifest, "test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_input is None:
            raise ValueError("no images to predict on: set data.predict_input to a file, folder or glob")
        return DataLoader(ImageFiles(self.predict_input), batch_size=self.predict_batch_size,
                          num_workers=min(self.num_workers, 2), collate_fn=collate_images)
