"""The DataModule over uneven shards: training passes split disjointly and completely over ranks and
workers, endless with equal steps, deterministic and continued from a saved position on another
topology; evaluation shares; whole-batch mixing, flips and masks, the bad-data policy, ``pipe:``
URLs, and a two-process DDP fit whose ranks see disjoint samples within a pass."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from lightning import Callback
from PIL import Image

from lotus_pl.data.datamodule import DenseDataModule, ShardError, hflip_sample, reader_share
from lotus_pl.data.manifest import Manifest, ShardEntry, sha256_file
from lotus_pl.data.samples import SampleError, decode_sample
from lotus_pl.data.synthetic import SAMPLE_KEYS, render_sample

ROOT = Path(__file__).resolve().parents[1]
UNEVEN = [9, 1, 4, 2, 7, 1]  # 24 samples in six shards of very different sizes


def write_source(folder: Path, name: str, counts: list[int], size: int = 16, mask: bool = False,
                 edit=None) -> Path:
    """Shards of rendered scenes with the given per-shard counts, and their manifest.

    ``edit(sample)`` may change or drop fields of a sample before it is written (bad data).
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries, index = [], 0
    for k, count in enumerate(counts):
        path = folder / f"{name}-{k:06d}.tar"
        with wds.TarWriter(str(path), mtime=0.0, encoder=False) as sink:
            for _ in range(count):
                sample = render_sample(0, name, index, size)
                if mask:
                    buf = io.BytesIO()
                    Image.fromarray(np.tile(np.array([0, 255] * (size // 2), np.uint8), (size, 1))).save(buf, format="PNG")
                    sample["mask.png"] = buf.getvalue()
                sink.write(edit(sample) if edit else sample)
                index += 1
        entries.append(ShardEntry(path.name, count, sha256_file(path)))
    manifest = folder / f"{name}.yaml"
    keys = SAMPLE_KEYS + (["mask.png"] if mask else [])
    Manifest(name, entries, keys, [size, size], 1000.0, "CC0", "tests").save(manifest)
    return manifest


def all_keys(name: str, counts: list[int]) -> set[str]:
    return {f"{name}_{i:07d}" for i in range(sum(counts))}


def keys_of(loader, batches: int | None = None) -> list[str]:
    out = []
    for i, batch in enumerate(loader):
        if batches is not None and i == batches:
            break
        out += batch["key"]
    return out


def module(rank: int = 0, world: int = 1, **kwargs) -> DenseDataModule:
    kwargs = {"batch_size": 2, "num_workers": 0, "required": ["rgb", "depth"], **kwargs}
    dm = DenseDataModule(**kwargs)
    dm._rank_world = lambda: (rank, world)  # what a trainer (or torch.distributed) would report
    return dm


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("uneven"), "uneven", UNEVEN)


# --------------------------------------------------------------------------- #
# Who reads what
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 2), (2, 3), (4, 2), (8, 1), (3, 4)])
def test_shares_are_disjoint_and_complete(world, workers):
    seen = Counter()
    for rank in range(world):
        for worker in range(workers):
            share = reader_share(UNEVEN, rank, world, worker, workers, seed=0)
            index = 0
            for shard in share.shards:
                for j in range(UNEVEN[shard]):
                    if index % share.stride == share.offset:
                        seen[(shard, j)] += 1
                    index += 1
    assert seen == Counter({(s, j): 1 for s, n in enumerate(UNEVEN) for j in range(n)})


def test_uneven_shards_are_balanced_by_sample_count():
    totals = [sum(UNEVEN[s] for s in reader_share(UNEVEN, r, 2, 0, 1, seed=0).shards) for r in range(2)]
    assert totals == [12, 12]  # six shards of 9, 1, 4, 2, 7, 1 samples: 9+2+1 | 7+4+1


def test_training_ranks_and_workers_read_disjoint_samples_endlessly_and_deterministically(uneven):
    per_rank = []
    for rank in range(2):  # a pass over 24 samples is 6 batches of 2 per rank
        dm = module(rank, 2, train_manifest=str(uneven), num_workers=2)
        per_rank.append(keys_of(dm.train_dataloader(), batches=15))  # 2.5 passes
    assert len(per_rank[0]) == len(per_rank[1]) == 30  # the stream never runs dry
    for start in (0, 12):  # each pass: the ranks' samples are disjoint and cover the source once
        passes = [keys[start:start + 12] for keys in per_rank]
        assert sorted(passes[0] + passes[1]) == sorted(all_keys("uneven", UNEVEN))
    assert per_rank[0][:12] != per_rank[0][12:24]  # every pass in a new order
    first = keys_of(module(0, 2, train_manifest=str(uneven), num_workers=2).train_dataloader(), batches=15)
    in_process = keys_of(module(0, 2, train_manifest=str(uneven), num_workers=0).train_dataloader(), batches=15)
    other_seed = keys_of(module(0, 2, train_manifest=str(uneven), num_workers=2, seed=1).train_dataloader(), batches=15)
    assert first == per_rank[0] == in_process and other_seed != first  # the worker count changes nothing


def test_fewer_shards_than_readers_still_read_every_sample_once(tmp_path):
    manifest = write_source(tmp_path, "one", [7])
    train = [keys_of(module(rank, 2, train_manifest=str(manifest), num_workers=2, batch_size=1).train_dataloader(), 7)
             for rank in range(2)]  # 14 batches of 1: two passes over 7 samples
    assert sorted(train[0][:4] + train[1][:3]) == sorted(all_keys("one", [7]))  # slots 0..6: the first pass
    evaluation = [keys_of(module(rank, 2, val_manifest=str(manifest), num_workers=2).val_dataloader()) for rank in range(2)]
    assert not set(evaluation[0]) & set(evaluation[1]) and sorted(evaluation[0] + evaluation[1]) == sorted(all_keys("one", [7]))


def test_training_stream_continues_from_a_saved_position_on_another_topology(uneven):
    """The position saved at a step continues the same order on other ranks, workers and batch sizes."""
    whole = keys_of(module(0, 1, train_manifest=str(uneven), batch_size=2).train_dataloader(), batches=30)  # 60 samples
    dm = module(0, 1, train_manifest=str(uneven), batch_size=2)
    dm.train_dataloader()
    dm.trainer = type("T", (), {"global_step": 5, "accumulate_grad_batches": 1, "world_size": 1})()
    state = dm.state_dict()
    assert state["train_stream"] == {"slot": 5, "positions": [10], "step": 5, "seed": 0, "num_samples": [24]}
    continued = []
    for rank in range(2):  # 2 ranks x 3 workers, batches of 5: slot 5 + i*2 + rank
        resumed = module(rank, 2, train_manifest=str(uneven), batch_size=5, num_workers=3)
        resumed.load_state_dict(state)
        continued.append([keys_of(resumed.train_dataloader(), batches=5)[i * 5:(i + 1) * 5] for i in range(5)])
    interleaved = [k for i in range(5) for rank in range(2) for k in continued[rank][i]]
    assert interleaved == whole[10:60]
    changed = module(0, 1, train_manifest=str(uneven), seed=3)
    changed.load_state_dict(state)
    with pytest.raises(ValueError, match="data.seed was 0, is now 3"):
        changed.train_dataloader()


def test_evaluation_reads_every_sample_once_across_ranks(uneven):
    keys = [keys_of(module(rank, 2, val_manifest=str(uneven)).val_dataloader()) for rank in range(2)]
    assert len(keys[0]) + len(keys[1]) == 24 and set(keys[0]) | set(keys[1]) == all_keys("uneven", UNEVEN)


def test_mixed_sources_come_in_whole_batches(tmp_path):
    small = write_source(tmp_path / "a", "small", [6, 6], size=16)
    large = write_source(tmp_path / "b", "large", [6, 6], size=24)
    dm = module(train_manifest=[str(small), str(large)], train_probabilities=[0.8, 0.2])
    kinds = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == 60:
            break
        prefix = {k.split("_")[0] for k in batch["key"]}
        assert len(prefix) == 1 and batch["image"].shape[-1] == {"small": 16, "large": 24}[prefix.pop()]
        kinds.append(batch["image"].shape[-1])
    assert 0.6 < kinds.count(16) / len(kinds) < 0.95


def test_hflip_negates_normal_x_and_masks_reach_the_batch(tmp_path):
    manifest = write_source(tmp_path, "masked", [4], mask=True)
    raws = {r["__key__"]: r for r in wds.WebDataset(Manifest.load(manifest).urls(), shardshuffle=False)}
    sample = decode_sample(next(iter(raws.values())), required=("rgb", "normal"))
    flipped = hflip_sample(sample)
    torch.testing.assert_close(flipped["image"], sample["image"].flip(-1))
    torch.testing.assert_close(flipped["normal"][0], -sample["normal"][0].flip(-1))
    torch.testing.assert_close(flipped["normal"][1:], sample["normal"][1:].flip(-1))
    assert torch.equal(flipped["mask"], sample["mask"].flip(-1))
    assert flipped["intrinsics"][2] == pytest.approx(16 - sample["intrinsics"][2].item())

    # Training batches: every sample mirrored while stacking, images shipped as uint8 and turned into
    # floats on the device: the same values as decoding and flipping each sample on its own.
    dm = module(train_manifest=str(manifest), hflip=1.0, required=["rgb", "depth", "normal"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["mask"].dtype == torch.bool
    batch = dm.on_after_batch_transfer(batch, 0)
    for i, key in enumerate(batch["key"]):
        expected = hflip_sample(decode_sample(raws[key], required=("rgb", "depth", "normal")))
        for field in ("image", "depth", "normal", "mask", "intrinsics"):
            assert torch.equal(batch[field][i], expected[field]), field
    assert batch["mask"].float().mean() == 0.5


def test_pipe_urls_are_read_like_files(uneven, tmp_path):
    manifest = Manifest.load(uneven)
    for entry in manifest.shards:
        entry.path = f"pipe:cat {manifest.shard_path(entry)}"
    manifest.save(tmp_path / "piped.yaml")
    piped = Manifest.load(tmp_path / "piped.yaml")
    assert piped.verify() == []
    keys = keys_of(module(val_manifest=str(tmp_path / "piped.yaml")).val_dataloader())
    assert sorted(keys) == sorted(all_keys("uneven", UNEVEN))


# --------------------------------------------------------------------------- #
# Bad data
# --------------------------------------------------------------------------- #
BAD_KEY = "bad_0000005"  # third sample of the second shard


def _edit(kind: str):
    def edit(sample: dict) -> dict:
        if sample["__key__"] != BAD_KEY:
            return sample
        if kind == "undecodable":
            sample["rgb.png"] = b"\x89PNG\r\n\x1a\nnot an image"
        elif kind == "missing_key":
            del sample["depth.png"]
        elif kind == "nan_depth":
            sample["json"] = json.dumps(dict(json.loads(sample["json"]), depth_scale=math.nan)).encode()
        elif kind == "inf_intrinsics":
            sample["json"] = json.dumps(dict(json.loads(sample["json"]), fx=math.inf)).encode()
        return sample
    return edit


def _make_bad(tmp_path: Path, kind: str) -> tuple[Path, str, set[str]]:
    """A two-shard source (3 + 4 samples) with one kind of damage in the second shard; returns the
    manifest, the damaged shard's name, and the keys that must not arrive."""
    import tarfile

    manifest = write_source(tmp_path, "bad", [3, 4], edit=_edit(kind))
    shard = tmp_path / "bad-000001.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        member = {m.name: m for m in tar.getmembers()}
    if kind == "truncated_mid_member":  # cut inside a file of sample 5: 5 and 6 are lost
        shard.write_bytes(data[: member["bad_0000005.depth.png"].offset_data + 10])
        lost = {"bad_0000005", "bad_0000006"}
    elif kind == "truncated_at_boundary":  # cut between two files of the last sample: tarfile alone sees no error
        shard.write_bytes(data[: member["bad_0000006.depth.png"].offset])
        lost = {"bad_0000006"}
    elif kind == "checksum":
        flipped = bytearray(data)
        flipped[700] ^= 0xFF  # inside the first member's payload: the tar still parses
        shard.write_bytes(bytes(flipped))
        lost = {f"bad_{i:07d}" for i in range(3, 7)}
    else:
        lost = {BAD_KEY}
    return manifest, "bad-000001.tar", lost


KINDS = ["truncated_mid_member", "truncated_at_boundary", "undecodable", "missing_key", "checksum", "nan_depth",
         "inf_intrinsics"]
MESSAGES = {"truncated_mid_member": "unreadable", "truncated_at_boundary": "end-of-archive", "undecodable": "rgb.png",
            "missing_key": "depth", "checksum": "sha256", "nan_depth": "depth_scale", "inf_intrinsics": "non-finite"}
NAMES_THE_SAMPLE = ("undecodable", "missing_key", "nan_depth", "inf_intrinsics")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_raises_a_clear_error(kind, tmp_path):
    manifest, shard, _ = _make_bad(tmp_path, kind)
    dm = module(val_manifest=str(manifest), verify_shards=kind == "checksum", on_bad_sample="raise")
    with pytest.raises(SampleError) as err:
        keys_of(dm.val_dataloader())
    message = str(err.value)
    assert shard in message and MESSAGES[kind] in message
    if kind in NAMES_THE_SAMPLE:
        assert BAD_KEY in message


@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_is_skipped_counted_and_warned_once(kind, tmp_path, caplog):
    manifest, shard, lost = _make_bad(tmp_path, kind)
    dm = module(val_manifest=str(manifest), verify_shards=kind == "checksum", on_bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="lotus_pl.data.datamodule"):
        first = keys_of(dm.val_dataloader())
        second = keys_of(dm.val_dataloader())  # the same bad data again: counted, not warned again
    assert set(first) == all_keys("bad", [3, 4]) - lost and len(first) == len(set(first)) and second == first
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert shard in warnings[0] and MESSAGES[kind] in warnings[0]
    if kind in NAMES_THE_SAMPLE:
        assert BAD_KEY in warnings[0]
    assert dm.bad_data.skipped == 2


def test_truncated_shard_is_an_error_in_training_too(tmp_path):
    manifest, _, _ = _make_bad(tmp_path, "truncated_at_boundary")
    with pytest.raises(ShardError, match="bad-000001.tar"):
        keys_of(module(train_manifest=str(manifest)).train_dataloader(), batches=20)


# --------------------------------------------------------------------------- #
# DDP
# --------------------------------------------------------------------------- #
class RecordKeys(Callback):
    """Append each training batch's sample keys to ``<folder>/rank<r>.txt`` (one line per batch)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.folder / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(" ".join(batch["key"]) + "\n")


def test_two_process_ddp_over_uneven_shards_has_equal_steps_and_disjoint_samples(uneven, tmp_path):
    config = yaml.safe_load((ROOT / "experiments/quickstart.yaml").read_text())
    config["trainer"].update(max_steps=10, val_check_interval=1000, limit_val_batches=0, enable_progress_bar=False,
                             logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                             callbacks=[{"class_path": "test_datamodule.RecordKeys", "init_args": {"folder": str(tmp_path)}}],
                             strategy="ddp", devices=2)
    config["model"]["denoiser"]["init_args"].update(block_out_channels=[16, 32], cross_attention=[False, True],
                                                    cross_attention_dim=16)
    config["data"] = {"train_manifest": str(uneven), "val_manifest": str(uneven), "batch_size": 2, "num_workers": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "lotus_pl", "fit", "--config", str(tmp_path / "config.yaml")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    batches = [(tmp_path / f"rank{r}.txt").read_text().split("\n")[:-1] for r in range(2)]
    assert len(batches[0]) == len(batches[1]) == 10
    first_pass = [" ".join(b[:6]).split() for b in batches]  # 6 steps of 2 ranks x 2 samples: one pass
    assert not set(first_pass[0]) & set(first_pass[1])
    assert sorted(first_pass[0] + first_pass[1]) == sorted(all_keys("uneven", UNEVEN))
