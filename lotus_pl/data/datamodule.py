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
from torch.utils.data import DataLoader, IterableDataset

from lotus_pl.data.images import ImageFiles, collate_images
from lotus_pl.data.manifest import Manifest
from lotus_pl.data.samples import decode_sample
from lotus_pl.tasks.normal import hflip_normals

_TENSOR_FIELDS = ("image", "depth", "normal", "albedo", "mask", "intrinsics")


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
        for field in ("image", "depth", "albedo", "mask"):
            if field in out:
                out[field] = out[field].flip(-1)
        if "normal" in out:
            out["normal"] = hflip_normals(out["normal"])
        if "intrinsics" in out:  # cx' = W - cx with pixel-centre coordinates
            fx, fy, cx, cy = out["intrinsics"].tolist()
            out["intrinsics"] = torch.tensor([fx, fy, out["image"].shape[-1] - cx, cy])
        return out


class MixedBatches(IterableDataset):
    """Draw each batch whole from one source, chosen with the given probabilities.

    Sources of different resolutions cannot share a batch, so Lotus mixes Hypersim and Virtual KITTI
    by batch (p = 0.9 / 0.1). The choice is seeded per rank and worker, like the shard sampling.
    """

    def __init__(self, sources: list, probabilities: list[float], seed: int) -> None:
        if len(sources) != len(probabilities) or any(p < 0 for p in probabilities) or sum(probabilities) <= 0:
            raise ValueError(f"need one non-negative probability per training source, got {probabilities} for {len(sources)} sources")
        self.sources, self.seed = sources, seed
        self.probabilities = [p / sum(probabilities) for p in probabilities]

    def __iter__(self):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"mix-{self.seed}-{rank}-{worker}")
        iterators = [iter(s) for s in self.sources]
        while True:
            yield next(iterators[rng.choices(range(len(iterators)), weights=self.probabilities)[0]])


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
        train_manifest: manifest of the training shards, or several manifests to mix.
        train_probabilities: with several training manifests, the probability of drawing a batch
            from each (whole batches per source, as sources may differ in resolution).
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
        train_manifest: str | list[str] | None = None,
        train_probabilities: list[float] | None = None,
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
        self.train_probabilities = train_probabilities
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.hflip, self.shuffle_buffer, self.seed = hflip, shuffle_buffer, seed
        self.required = list(required or ["rgb"])
        self.synthetic = synthetic
        self.predict_input, self.predict_batch_size = predict_input, predict_batch_size

    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        train = self.train_manifest if isinstance(self.train_manifest, list) else [self.train_manifest]
        for manifest, split in [(m, "train") for m in train] + [(self.val_manifest, "val")]:
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
        """Decode only what is needed: the required fields, the json metadata and any validity mask."""
        fields = self._required_fields()
        wanted = {"json", "mask", "image" if "rgb" in fields else "rgb", *fields}
        raw = {k: v for k, v in raw.items() if k.startswith("__") or k.split(".", 1)[0] in wanted}
        return decode_sample(raw, required=fields)

    @staticmethod
    def _require(manifest: str | None, purpose: str) -> str:
        if manifest is None:
            raise ValueError(f"no {purpose} manifest configured (set data.{purpose}_manifest)")
        return manifest

    @classmethod
    def _urls(cls, manifest: str | None, purpose: str) -> list[str]:
        return Manifest.load(cls._require(manifest, purpose)).urls()

    def _train_source(self, manifest: str, index: int):
        seed = self.seed + 1000 * index
        return (
            wds.WebDataset(self._urls(manifest, "train"), resampled=True, detshuffle=True, seed=seed,
                           nodesplitter=None, shardshuffle=False)
            .shuffle(self.shuffle_buffer, rng=random.Random(seed))
            .map(self._decode)
            .map(RandomHorizontalFlip(self.hflip, seed))
            .batched(self.batch_size, collation_fn=collate_samples, partial=False)
        )

    def train_dataloader(self) -> DataLoader:
        manifests = self.train_manifest if isinstance(self.train_manifest, list) else [self._require(self.train_manifest, "train")]
        sources = [self._train_source(m, i) for i, m in enumerate(manifests)]
        dataset = sources[0]
        if len(sources) > 1:
            dataset = MixedBatches(sources, self.train_probabilities or [1.0] * len(sources), self.seed)
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
