"""The training stream as a pure function of a global batch counter, so that a resumed run sees
exactly the batches an uninterrupted one sees, on any number of ranks and loader workers.

Every training batch occupies a *slot*: slot ``j`` is the j-th batch of the whole job, counted over
all ranks (the micro-batches of optimizer step ``g`` on ``W`` ranks with accumulation ``A`` are slots
``g·A·W`` ... ``(g+1)·A·W - 1``; rank ``r``'s local batch ``i`` is slot ``i·W + r``). Given the
slot, everything about its batch follows from the seed alone:

* the source it is drawn from (``mix-<seed>-<slot>``, with the configured probabilities);
* which samples: each source has an endless global order, pass ``p`` being a seeded permutation of
  all its samples (``order-<seed>-<p>``); a source's ``c``-th batch takes the next ``batch_size``
  positions of that order, so within a pass no sample is repeated or skipped, whichever reader
  takes which batch;
* each sample's flip (``flip-<seed>-<position>``), and the training noise (the model seeds it
  from the slot, :meth:`lotus_pl.model.LotusModel.training_step`).

A reader (rank ``r``, worker ``w`` of ``n``) replays the cheap source choices of all slots and
builds the batches of the slots it owns (``i ≡ w mod n``: the order a DataLoader hands them out).
Nothing depends on what a reader produced before, so neither Lightning's one-batch prefetch nor the
loader state it keeps from rank 0 only matters: the checkpoint holds a :class:`StreamPosition` (the
next slot and each source's next position, derived from ``global_step``), and a run resumed from it
on another number of ranks, workers or even batch size continues the same order.

Samples are read by position, so shards must be seekable local tar files: each reader indexes a
shard's members (headers only) the first time it needs one.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from lotus_pl.data.manifest import is_url, split_member_name
from lotus_pl.data.samples import SampleError

#: (key, {field suffix: (offset of the data, size)}) for each sample of a shard, in order.
ShardIndex = list[tuple[str, dict[str, tuple[int, int]]]]


class ShardError(SampleError):
    """A shard that cannot be read to its end, or that holds a different number of samples."""


@dataclass
class StreamPosition:
    """Where the training stream continues: the next slot, and each source's next global position."""

    slot: int
    positions: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> StreamPosition:
        return cls(int(state["slot"]), [int(p) for p in state["positions"]])


def index_shard(path: str) -> ShardIndex:
    """The members of a plain tar shard, grouped into samples, from its headers alone.

    Raises ``tarfile.ReadError`` when the archive is cut off, also at a member boundary (where
    tarfile itself stops silently), like :func:`lotus_pl.data.manifest.iter_tar`.
    """
    samples: ShardIndex = []
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, suffix = split_member_name(member.name)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][suffix] = (member.offset_data, member.size)
        end = tar.offset
        f.seek(0, 2)
        if f.tell() < end + tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"archive ends at byte {f.tell()} without an end-of-archive block "
                                    f"after its last member (at byte {end}): the shard is truncated")
    return samples


class SourceOrder:
    """One source's endless global order: pass ``p`` is a seeded permutation of all its samples;
    samples are read from their shards by position. Problems go to the bad-data policy."""

    def __init__(self, name: str, urls: list[str], counts: list[int], seed: int,
                 bad_data: Callable[[Exception, str, str], None]) -> None:
        for url in urls:
            if is_url(url) or not Path(url).is_file():
                raise ValueError(f"{name}: training reads samples by position (exact resume), so its shards must be "
                                 f"local tar files; {url!r} is not one (copy the shards to a local or mounted disk)")
        self.name, self.urls, self.counts, self.seed, self.bad_data = name, urls, counts, seed, bad_data
        self.total = sum(counts)
        if self.total == 0:
            raise ValueError(f"{name}: no samples to train on")
        self._ends = np.cumsum(counts)
        self._indices: dict[int, ShardIndex] = {}
        self._pass: tuple[int, list[int]] | None = None

    def permutation(self, pass_index: int) -> list[int]:
        """Pass ``pass_index``'s order of the source's samples (numbered in manifest order)."""
        if self._pass is None or self._pass[0] != pass_index:
            order = list(range(self.total))
            random.Random(f"order-{self.seed}-{pass_index}").shuffle(order)
            self._pass = (pass_index, order)
        return self._pass[1]

    def locate(self, position: int) -> tuple[int, int]:
        """(shard, index in the shard) of the sample at a global position of the endless order."""
        pass_index, offset = divmod(position, self.total)
        number = self.permutation(pass_index)[offset]
        shard = int(np.searchsorted(self._ends, number, side="right"))
        return shard, number - int(self._ends[shard - 1] if shard else 0)

    def key(self, position: int) -> str | None:
        shard, index = self.locate(position)
        samples = self._index(shard)
        return samples[index][0] if index < len(samples) else None

    def _index(self, shard: int) -> ShardIndex:
        if shard not in self._indices:
            url, expected = self.urls[shard], self.counts[shard]
            try:
                samples = index_shard(url)
            except (tarfile.TarError, OSError, EOFError) as exc:
                samples = []
                self._indices[shard] = samples
                self.bad_data(ShardError(f"shard {url!r} unreadable: {type(exc).__name__}: {exc}"), url, "index")
                return samples
            self._indices[shard] = samples
            if len(samples) != expected:
                self.bad_data(ShardError(f"shard {url!r} holds {len(samples)} samples, its manifest says {expected}"),
                              url, "sample count")
        return self._indices[shard]

    def read(self, position: int) -> dict[str, Any] | None:
        """The raw sample (``__key__``, ``__url__``, one bytes entry per field) at a global position;
        None where the shard lacks it (already reported when the shard was indexed)."""
        shard, index = self.locate(position)
        samples, url = self._index(shard), self.urls[shard]
        if index >= len(samples):
            return None
        key, members = samples[index]
        raw: dict[str, Any] = {"__key__": key, "__url__": url}
        try:
            with open(url, "rb") as f:
                for suffix, (offset, size) in members.items():
                    f.seek(offset)
                    raw[suffix] = f.read(size)
                    if len(raw[suffix]) != size:
                        raise EOFError(f"{suffix} ends after {len(raw[suffix])} of {size} bytes")
        except (OSError, EOFError) as exc:
            self.bad_data(ShardError(f"shard {url!r}, sample {key!r}: {type(exc).__name__}: {exc}"), url, key)
            return None
        return raw


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ResumableBatches(IterableDataset):
    """This reader's training batches, from ``origin`` on (see the module docstring).

    Args:
        sources: the sources' global orders.
        probabilities: the chance of drawing a slot's batch from each source (normalised).
        make_batch: ``(raw samples, flips, slot) -> batch``, decoding and stacking them.
        batch_size, hflip, seed, rank, world_size: as configured; ``seed`` seeds the source choice.
        origin: the slot and source positions to start from (a fresh run: slot 0, positions 0).
    """

    def __init__(self, sources: list[SourceOrder], probabilities: list[float],
                 make_batch: Callable[[list[dict[str, Any]], list[bool], int], dict[str, Any]],
                 batch_size: int, hflip: float, seed: int, rank: int, world_size: int,
                 origin: StreamPosition) -> None:
        if len(sources) != len(probabilities) or any(p < 0 for p in probabilities) or sum(probabilities) <= 0:
            raise ValueError(f"need one non-negative probability per training source, got {probabilities} "
                             f"for {len(sources)} sources")
        if len(origin.positions) != len(sources):
            raise ValueError(f"a stream position for {len(origin.positions)} sources cannot continue {len(sources)}")
        self.sources, self.make_batch, self.batch_size, self.hflip = sources, make_batch, batch_size, hflip
        self.probabilities = [p / sum(probabilities) for p in probabilities]
        self.seed, self.rank, self.world_size, self.origin = seed, rank, world_size, origin
        self._known: StreamPosition | None = None  # the last position_after

    def source_of(self, slot: int) -> int:
        if len(self.sources) == 1:
            return 0
        return random.Random(f"mix-{self.seed}-{slot}").choices(range(len(self.sources)), weights=self.probabilities)[0]

    def slots(self) -> Iterator[tuple[int, int, int]]:
        """``(slot, source, first position)`` of every slot from the origin on, over all ranks."""
        positions = list(self.origin.positions)
        for slot in count(self.origin.slot):
            source = self.source_of(slot)
            yield slot, source, positions[source]
            positions[source] += self.batch_size

    def position_after(self, consumed: int) -> StreamPosition:
        """The stream position once ``consumed`` slots past the origin have been trained on
        (replayed from the last position asked for, so that checkpoints every few steps stay cheap)."""
        target = self.origin.slot + consumed
        known = self._known
        if known is None or known.slot > target:
            known = self.origin
        positions = list(known.positions)
        for slot in range(known.slot, target):
            positions[self.source_of(slot)] += self.batch_size
        self._known = StreamPosition(target, positions)
        return StreamPosition(target, list(positions))

    def flip(self, source: int, position: int) -> bool:
        return bool(self.hflip) and random.Random(f"flip-{self.sources[source].seed}-{position}").random() < self.hflip

    def batch_at(self, slot: int, source: int, first: int) -> dict[str, Any]:
        order = self.sources[source]
        raws, flips = [], []
        for position in range(first, first + self.batch_size):
            raw = order.read(position)
            if raw is not None:
                raws.append(raw)
                flips.append(self.flip(source, position))
        return self.make_batch(raws, flips, slot)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        for slot, source, first in self.slots():
            local, rank = divmod(slot - self.origin.slot, self.world_size)
            if rank == self.rank and local % workers == worker:
                yield self.batch_at(slot, source, first)
