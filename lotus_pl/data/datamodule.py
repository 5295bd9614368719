"""The DataModule: WebDataset shards (from manifests) for fit/validate/test, images and videos for predict.

Training reads each source in an endless global order (pass p: a seeded permutation of all its
samples) and deals its batches out to ranks and loader workers by a global batch counter, the
*slot* (:mod:`lotus_pl.data.resumable`): within a pass no sample is repeated or skipped, every
rank runs the same number of steps (``max_steps``) and DDP never waits on a rank whose data ended.
Which samples a batch holds, its flips and its source are pure functions of the seed and the slot,
so the checkpoint stores the stream position (:meth:`DenseDataModule.state_dict`) and a run resumed
with ``--ckpt_path last`` sees exactly the batches an uninterrupted run sees, also on another
number of ranks or workers. Evaluation splits each source's shards disjointly over ranks and then
workers (balanced by sample count; with fewer shards than readers, readers keep every k-th sample
of shared shards) and reads each sample once. Sources are stored at their training size (the
converters resize Hypersim and crop VKITTI), so nothing is resized here.

Training batches carry ``image`` as uint8 until they reach the device, where
:meth:`DenseDataModule.on_after_batch_transfer` turns it into the float [-1, 1] the model uses (bit
for bit what the float decode gives): workers ship a quarter of the image bytes. Batches are
mirrored while they are stacked (one copy, not two). Iterating ``train_dataloader()`` yourself,
pass each batch through ``on_after_batch_transfer``; evaluation batches are floats already.

Shards are opened as WebDataset opens them (local paths, ``pipe:`` commands, URLs). Bad data follows
``on_bad_sample``: ``raise`` stops with an error naming the shard and sample; ``skip`` drops the
sample (or the rest of a broken shard), counts it, and logs one warning per shard and key. Covered:
truncated or unreadable shards, sample counts that differ from the manifest, undecodable images,
missing required fields, non-finite numbers, and (``verify_shards``) shards whose sha256 differs.

Everything random in training (sample order, flips, source choice) is seeded from ``seed`` and the
slot alone. Training shards must be local tar files (samples are read by position); evaluation
also reads ``pipe:`` commands and URLs.
"""

from __future__ import annotations

import logging
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lotus_pl.data.domains import SceneDomain
from lotus_pl.data.manifest import Manifest, iter_tar, split_member_name
from lotus_pl.data.predict_inputs import PredictInputs, list_inputs, plan_inputs
from lotus_pl.data.resumable import ResumableBatches, ShardError, SourceOrder, StreamPosition
from lotus_pl.data.samples import SampleError, decode_sample, image_to_float
from lotus_pl.tasks.normal import hflip_normals

log = logging.getLogger(__name__)


def collate_samples(samples: list[dict[str, Any]], flips: list[bool] | None = None) -> dict[str, Any]:
    """Stack the tensor fields every sample has, mirroring the samples marked in ``flips`` on the way;
    keep sample keys for error messages and outputs.

    Mirroring while stacking costs one copy per field instead of two (flip, then stack), and inside
    a loader worker the batch is built in shared memory, so handing it to the main process costs
    no further copy. At 576×768 these copies are a sizeable part of the loader's work.
    """
    flips = flips or [False] * len(samples)
    batch: dict[str, Any] = {"key": [s["meta"].get("__key__") for s in samples]}
    fields = [f for f, v in samples[0].items() if isinstance(v, torch.Tensor)]  # a new task's fields too
    for field in fields:
        if not all(field in s for s in samples):
            continue
        values = [s[field] for s in samples]
        if len({v.shape for v in values}) > 1:
            raise ValueError(f"{field!r} differs in shape within a batch: {[tuple(v.shape) for v in values]}")
        out = _batch_tensor(values[0], len(values))
        for i, (value, flip) in enumerate(zip(values, flips)):
            if not flip:
                np.copyto(out[i].numpy(), value.numpy())  # numpy: one thread, as fast as it gets per worker
            elif field == "intrinsics":  # pixel u has its centre at u + 0.5, so the mirror of cx is W - cx
                fx, fy, cx, cy = value.tolist()
                out[i] = torch.tensor([fx, fy, samples[i]["image"].shape[-1] - cx, cy])
            else:
                _copy_mirrored(out[i], value, negate_x=field == "normal")
        batch[field] = out
    return batch


def _batch_tensor(like: torch.Tensor, size: int) -> torch.Tensor:
    """An uninitialised ``[size, *like.shape]`` tensor; in shared memory inside a loader worker
    (as torch's default collate does), so that sending it to the main process copies nothing."""
    if get_worker_info() is not None:
        try:
            storage = like._typed_storage()._new_shared(size * like.numel(), device=like.device)
            return like.new(storage).resize_(size, *like.shape)
        except (AttributeError, RuntimeError):  # a torch without this private path: an ordinary tensor
            pass
    return torch.empty((size, *like.shape), dtype=like.dtype)


def _copy_mirrored(out: torch.Tensor, value: torch.Tensor, negate_x: bool) -> None:
    """Copy ``value`` [C, H, W] mirrored along W into ``out`` in one pass (numpy reads the reversed view)."""
    dst, src = out.numpy(), value.numpy()[..., ::-1]
    if negate_x:  # normals: a mirrored surface's normal has its x negated
        np.negative(src[:1], out=dst[:1])
        np.copyto(dst[1:], src[1:])
    else:
        np.copyto(dst, src)


def hflip_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror one sample: pixels flip, normals also get their x negated, and cx becomes W - cx.
    (Training batches mirror while stacking, in :func:`collate_samples`, to the same effect.)"""
    out = dict(sample)
    for field in ("image", "depth", "albedo", "mask"):
        if field in out:
            out[field] = out[field].flip(-1)
    if "normal" in out:
        out["normal"] = hflip_normals(out["normal"])
    if "intrinsics" in out:
        fx, fy, cx, cy = out["intrinsics"].tolist()
        out["intrinsics"] = torch.tensor([fx, fy, out["image"].shape[-1] - cx, cy])
    return out


# --------------------------------------------------------------------------- #
# Bad data
# --------------------------------------------------------------------------- #
class BadData:
    """The ``on_bad_sample`` policy: raise the error, or skip, count and warn once per shard and key."""

    def __init__(self, mode: str) -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {mode!r}")
        self.mode, self.skipped, self._warned = mode, 0, set()

    def __call__(self, error: Exception, shard: str, key: str) -> None:
        if self.mode == "raise":
            raise error
        self.skipped += 1
        if (shard, key) not in self._warned:
            self._warned.add((shard, key))
            log.warning("skipping bad data in shard %s, key %s (%d skipped so far by this reader): %s",
                        shard, key, self.skipped, error)


@dataclass
class SampleDecoder:
    """Raw sample -> tensors: only the fields needed, anything broken raised as a SampleError.

    Pixels decoded from PNG/JPEG are finite by construction, a depth_scale that is not a positive
    finite number is refused by :func:`decode_sample`, and non-finite pixels of float (``.npy``)
    ground truth mean "invalid" in the shard format; what remains to check is the json's numbers.
    """

    required: list[str]
    uint8_image: bool = False  # training: the device turns it into floats (DenseDataModule.on_after_batch_transfer)
    optional: tuple[str, ...] = ()  # decoded when present (a joint model's ground truths in evaluation)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        wanted = {"json", "mask", "rgb", *self.optional, *("rgb" if f == "image" else f for f in self.required)}
        raw = {k: v for k, v in raw.items() if k.startswith("__") or k.split(".", 1)[0] in wanted}
        sample = decode_sample(raw, required=self.required, uint8_image=self.uint8_image, extra=self.optional)
        if "intrinsics" in sample and not torch.isfinite(sample["intrinsics"]).all():
            raise SampleError(f"sample {raw.get('__key__')!r} in shard {raw.get('__url__')!r}: "
                              f"non-finite values in 'intrinsics' {sample['intrinsics'].tolist()}")
        return sample


# --------------------------------------------------------------------------- #
# Who reads what
# --------------------------------------------------------------------------- #
def assign_shards(counts: list[int], parts: int, seed: int) -> list[list[int]]:
    """Split shard indices into ``parts`` disjoint groups with sample totals as even as a greedy
    largest-first assignment makes them (ties broken by a seeded order, the same on every rank)."""
    order = list(range(len(counts)))
    random.Random(f"assign-{seed}").shuffle(order)
    order.sort(key=lambda i: -counts[i])  # stable: equal counts keep the seeded order
    groups: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for i in order:
        part = min(range(parts), key=lambda p: (totals[p], len(groups[p]), p))
        groups[part].append(i)
        totals[part] += counts[i]
    return [sorted(g) for g in groups]


@dataclass(frozen=True)
class ReaderShare:
    """A reader's part of a source: these shards, and of their samples every ``stride``-th from ``offset``."""

    shards: tuple[int, ...]
    stride: int = 1
    offset: int = 0


def reader_share(counts: list[int], rank: int, world_size: int, worker: int, workers: int, seed: int) -> ReaderShare:
    """Shards to ranks, then a rank's shards to its workers. A level with fewer shards than readers
    shares them and strides over their samples instead, so shares stay disjoint and complete."""
    shards, stride, offset = tuple(range(len(counts))), 1, 0
    for index, parts in ((rank, world_size), (worker, workers)):
        if len(shards) >= parts:
            groups = assign_shards([counts[i] for i in shards], parts, seed)
            shards = tuple(shards[j] for j in groups[index])
        else:
            offset += stride * index
            stride *= parts
    return ReaderShare(shards, stride, offset)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard as dicts of bytes (``__key__``, ``__url__``, one entry per file)."""
    sample: dict[str, Any] | None = None
    with wds.gopen(url, "rb") as stream:
        for name, data in iter_tar(stream):
            key, suffix = split_member_name(name)
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            sample[suffix] = data
    if sample is not None:
        yield sample


class ShardStream(IterableDataset):
    """Raw samples of this reader's share of a source's shards, once, in manifest order (evaluation).
    Broken shards go to the bad-data policy."""

    def __init__(self, urls: list[str], counts: list[int], rank: int, world_size: int, seed: int,
                 bad_data: BadData) -> None:
        self.urls, self.counts, self.rank, self.world_size = urls, counts, rank, world_size
        self.seed, self.bad_data = seed, bad_data

    def share(self) -> ReaderShare:
        worker, workers = _worker()
        return reader_share(self.counts, self.rank, self.world_size, worker, workers, self.seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        share = self.share()
        index = 0
        for shard in share.shards:
            for raw in self._read(shard):
                if index % share.stride == share.offset:
                    yield raw
                index += 1

    def _read(self, shard: int) -> Iterator[dict[str, Any]]:
        url, expected, read, last = self.urls[shard], self.counts[shard], 0, None
        try:
            for raw in iter_shard(url):
                read, last = read + 1, raw["__key__"]
                yield raw
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
            self.bad_data(ShardError(f"shard {url!r} unreadable after sample {last!r} ({read} of {expected} samples): "
                                     f"{type(exc).__name__}: {exc}"), url, f"after {last}")
            return
        if read != expected:
            self.bad_data(ShardError(f"shard {url!r} holds {read} samples, its manifest says {expected}"),
                          url, "sample count")


class SourceBatches(IterableDataset):
    """Evaluation batches of one source: this reader's raw samples decoded and batched, in order
    (the last batch may be short)."""

    def __init__(self, stream: ShardStream, decode: Callable[[dict[str, Any]], dict[str, Any]], batch_size: int,
                 bad_data: BadData) -> None:
        self.stream, self.decode, self.batch_size, self.bad_data = stream, decode, batch_size, bad_data

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batch = []
        for raw in self.stream:
            try:
                batch.append(self.decode(raw))
            except SampleError as exc:
                self.bad_data(exc, raw.get("__url__", "?"), raw.get("__key__", "?"))
                continue
            if len(batch) == self.batch_size:
                yield collate_samples(batch)
                batch = []
        if batch:
            yield collate_samples(batch)


class TrainingBatch:
    """Raw samples -> one training batch (decoded, flipped while stacked, tagged with its slot); a
    sample that fails to decode follows the bad-data policy, so a skipped one makes the batch shorter."""

    def __init__(self, decode: SampleDecoder, bad_data: BadData) -> None:
        self.decode, self.bad_data = decode, bad_data

    def __call__(self, raws: list[dict[str, Any]], flips: list[bool], slot: int) -> dict[str, Any]:
        samples, kept = [], []
        for raw, flip in zip(raws, flips):
            try:
                samples.append(self.decode(raw))
                kept.append(flip)
            except SampleError as exc:
                self.bad_data(exc, raw.get("__url__", "?"), raw.get("__key__", "?"))
        if not samples:
            raise SampleError(f"every sample of training batch {slot} is unreadable or missing "
                              f"({[r.get('__key__') for r in raws]}); see the warnings above")
        return {**collate_samples(samples, kept), "slot": slot}


# --------------------------------------------------------------------------- #
# The DataModule
# --------------------------------------------------------------------------- #
class SyntheticScenes:
    """Render the procedural scenes into shards when a manifest they should fill is missing.

    Args:
        out: folder for the shards.
        num_train, num_val: samples per split.
        size: image side in pixels.
        seed: scene seed (train and val never share scenes).
        samples_per_shard: shard size.
        workers: rendering processes.
        domain: which scenes (:mod:`lotus_pl.data.domains`; the quickstart's ``Rooms`` by default).
    """

    def __init__(self, out: str = "data/synthetic", num_train: int = 1500, num_val: int = 100, size: int = 128,
                 seed: int = 0, samples_per_shard: int = 250, workers: int = 2, domain: SceneDomain | None = None) -> None:
        self.out, self.num_train, self.num_val, self.size = out, num_train, num_val, size
        self.seed, self.samples_per_shard, self.workers = seed, samples_per_shard, workers
        self.domain = domain

    def ensure(self, manifest: str, split: str) -> None:
        if Path(manifest).is_file():
            return
        from lotus_pl.data.synthetic import write_synthetic_split

        num = self.num_train if split == "train" else self.num_val
        write_synthetic_split(self.out, manifest, split, num, size=self.size, seed=self.seed,
                              samples_per_shard=self.samples_per_shard, workers=self.workers, domain=self.domain)


class DenseDataModule(LightningDataModule):
    """Shards for training and evaluation, image files and videos for prediction.

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
        seed: seed of the sample order, the flips and the source choice (and of evaluation's shard assignment).
        required: sample fields every sample must have (the tasks' ground truths are added).
        on_bad_sample: ``raise`` (stop with an error naming shard and sample) or ``skip`` (drop it,
            count it, warn once per shard and key).
        verify_shards: check every shard's sha256 and sample count against its manifest before
            reading (one extra pass over the data); a mismatching shard follows ``on_bad_sample``.
        synthetic: render the procedural scenes into missing manifests (the embedded default).
        zero_shot: held-out evaluation sets, name -> manifest (for example scene domains that
            training never sees); ``LearningReport`` scores the model on each.
        zero_shot_synthetic: name -> the renderer of a missing ``zero_shot`` manifest (its
            validation split).
        predict_input: a file, folder or glob of images and videos for ``lotus_pl predict``
            (:mod:`lotus_pl.data.predict_inputs`).
        predict_batch_size: images (or consecutive video frames) per predict batch; images are
            grouped by size, so a batch always holds one size.
        video_stride: predict every k-th frame of videos.
        max_frames: at most this many frames per video (0: all).
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
        seed: int = 0,
        required: list[str] | None = None,
        on_bad_sample: Literal["raise", "skip"] = "raise",
        verify_shards: bool = False,
        synthetic: SyntheticScenes | None = None,
        zero_shot: dict[str, str] | None = None,
        zero_shot_synthetic: dict[str, SyntheticScenes] | None = None,
        predict_input: str | None = None,
        predict_batch_size: int = 1,
        video_stride: int = 1,
        max_frames: int = 0,
    ) -> None:
        super().__init__()
        self.train_manifest, self.val_manifest, self.test_manifest = train_manifest, val_manifest, test_manifest
        self.train_probabilities = train_probabilities
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.hflip, self.seed = hflip, seed
        self._stream: ResumableBatches | None = None
        self._restored: dict[str, Any] | None = None  # the checkpoint's stream position
        self._origin_step = 0
        self.required = list(required or ["rgb"])
        self.bad_data = BadData(on_bad_sample)
        self.verify_shards = verify_shards
        self.synthetic = synthetic
        self.zero_shot = dict(zero_shot or {})
        self.zero_shot_synthetic = dict(zero_shot_synthetic or {})
        unknown = sorted(set(self.zero_shot_synthetic) - set(self.zero_shot))
        if unknown:
            raise ValueError(f"data.zero_shot_synthetic names {unknown}, which data.zero_shot does not list")
        self.predict_input, self.predict_batch_size = predict_input, predict_batch_size
        self.video_stride, self.max_frames = video_stride, max_frames

    def prepare_data(self) -> None:
        for name, renderer in self.zero_shot_synthetic.items():
            renderer.ensure(self.zero_shot[name], "val")
        if self.synthetic is None:
            return
        train = self.train_manifest if isinstance(self.train_manifest, list) else [self.train_manifest]
        for manifest, split in [(m, "train") for m in train] + [(self.val_manifest, "val")]:
            if manifest is not None:
                self.synthetic.ensure(manifest, split)

    def _task_fields(self) -> list[str]:
        """The ground-truth keys of the model's tasks (none without a trainer)."""
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        return [task.gt_key for task in getattr(module, "tasks", [])]

    def _decoder(self, training: bool) -> SampleDecoder:
        """Training needs every task's ground truth in every sample; evaluation of a joint model
        scores each task on the samples that have its ground truth (a benchmark may hold only one)."""
        tasks = self._task_fields()
        if training or len(tasks) == 1:
            required = list(dict.fromkeys([*self.required, *tasks]))
            return SampleDecoder(required, uint8_image=training)
        return SampleDecoder(list(self.required), optional=tuple(tasks))

    def training_resolution(self) -> int:
        """Longest edge of the main training source's samples (the most probable one, the first on a
        tie), from its manifest; 0 without one. The model records it, and predicts at it by default."""
        manifests = self.train_manifest if isinstance(self.train_manifest, list) else [self.train_manifest]
        weights = self.train_probabilities or [1.0] * len(manifests)
        main = manifests[max(range(len(manifests)), key=lambda i: (weights[i], -i))] if manifests else None
        if main is None or not Path(main).is_file():
            return 0
        return max(Manifest.load(main).resolution)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _shards(self, manifest_path: str | None, purpose: str) -> tuple[list[str], list[int]]:
        """URLs and sample counts of a manifest's shards (those that verify, with ``verify_shards``)."""
        if manifest_path is None:
            raise ValueError(f"no {purpose} manifest configured (set data.{purpose}_manifest)")
        manifest = Manifest.load(manifest_path)
        entries = manifest.shards
        if self.verify_shards:
            good = []
            for entry in entries:
                problems = manifest.check_shard(entry)
                if problems:
                    self.bad_data(ShardError("; ".join(problems)), manifest.url(entry), "whole shard")
                else:
                    good.append(entry)
            entries = good
        if not entries:
            raise ValueError(f"{manifest_path}: no usable shards for {purpose}")
        return [manifest.url(e) for e in entries], [e.num_samples for e in entries]

    def _train_stream(self) -> ResumableBatches:
        """This rank's training stream, from the restored position (a fresh run: the start)."""
        manifests = self.train_manifest if isinstance(self.train_manifest, list) else [self.train_manifest]
        rank, world = self._rank_world()
        sources = []
        for index, manifest in enumerate(manifests):
            urls, counts = self._shards(manifest, "train")
            sources.append(SourceOrder(str(manifest), urls, counts, self.seed + 1000 * index, self.bad_data))
        origin, self._origin_step = StreamPosition(0, [0] * len(sources)), 0
        if self._restored is not None:
            origin, self._origin_step = self._check_restored(self._restored, sources), int(self._restored["step"])
        return ResumableBatches(sources, self.train_probabilities or [1.0] * len(sources),
                                TrainingBatch(self._decoder(training=True), self.bad_data),
                                self.batch_size, self.hflip, self.seed, rank, world, origin)

    def _check_restored(self, state: dict[str, Any], sources: list[SourceOrder]) -> StreamPosition:
        """The saved position, if it can continue these sources: the same seed and sample counts
        (another order would repeat and skip samples); ranks, workers and batch size may differ."""
        now = {"seed": self.seed, "num_samples": [s.total for s in sources]}
        changed = [f"{k} was {state.get(k)}, is now {v}" for k, v in now.items() if state.get(k) != v]
        if changed:
            raise ValueError("cannot continue the checkpoint's training stream: data." + "; ".join(changed) +
                             f" (sources {[s.name for s in sources]}); restore the data and seed it was trained "
                             "with, or start a new run")
        return StreamPosition.from_dict(state)

    def train_dataloader(self) -> DataLoader:
        self._stream = self._train_stream()
        return DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position after the batches trained on so far, derived from
        ``global_step`` (the same on every rank, so Lightning keeping rank 0's copy loses nothing)."""
        trainer = getattr(self, "trainer", None)
        if self._stream is None or trainer is None:
            return {}
        consumed = (trainer.global_step - self._origin_step) * trainer.accumulate_grad_batches * trainer.world_size
        position = self._stream.position_after(consumed)
        return {"train_stream": {**position.to_dict(), "step": trainer.global_step, "seed": self.seed,
                                 "num_samples": [s.total for s in self._stream.sources]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from the saved position (checked against the data when the loader is built)."""
        self._restored = state_dict.get("train_stream")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training images travel as uint8 and become floats in [-1, 1] here, on the device."""
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) and batch["image"].dtype == torch.uint8:
            batch = dict(batch, image=image_to_float(batch["image"]))
        return batch

    def _eval_loader(self, manifest: str | None, purpose: str) -> DataLoader:
        rank, world = self._rank_world()
        urls, counts = self._shards(manifest, purpose)
        stream = ShardStream(urls, counts, rank, world, self.seed, bad_data=self.bad_data)
        dataset = SourceBatches(stream, self._decoder(training=False), self.eval_batch_size, bad_data=self.bad_data)
        workers = min(self.num_workers, max(1, len(urls) // world))  # no worker without a shard of its own
        return DataLoader(dataset, batch_size=None, num_workers=workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_manifest, "val")

    def zero_shot_dataloader(self, name: str) -> DataLoader:
        """The evaluation loader of the held-out set ``name`` of ``zero_shot``."""
        return self._eval_loader(self.zero_shot[name], f"zero-shot {name}")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_manifest or self.val_manifest, "test")

    def predict_dataloader(self) -> DataLoader:
        """Images and video frames in batches of one size, this rank's share of the inputs (whole
        files, balanced by item count). When the model resizes whole images to its processing
        resolution (no tiling), the loader does it instead, so that huge inputs never become huge tensors."""
        if self.predict_input is None:
            raise ValueError("no images to predict on: set data.predict_input to a file, folder or glob")
        model = getattr(getattr(self, "trainer", None), "lightning_module", None)
        max_size = 0 if model is None or getattr(model, "tile_size", 0) else getattr(model, "inference_resolution", 0)
        paths = list_inputs(self.predict_input)
        jobs = plan_inputs(paths, self.predict_batch_size, max_size, self.video_stride, self.max_frames)
        if not jobs:
            raise ValueError(f"none of the {len(paths)} inputs at {self.predict_input!r} can be read (see the warnings above)")
        rank, world = self._rank_world()
        mine = [jobs[i] for i in assign_shards([job.num_items for job in jobs], world, self.seed)[rank]]
        return DataLoader(PredictInputs(mine), batch_size=None, num_workers=min(self.num_workers, 2, len(mine)))
