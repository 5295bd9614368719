"""Dataset manifests: one YAML file describing a set of WebDataset shards.

A manifest is the unit a data config points at. It records where the shards
are (relative to the manifest's own folder, so a data tree can be moved as a
whole), how many samples each holds and their sha256, which sample keys exist,
and how to interpret them (resolution, depth scale, intrinsics), plus licence
and provenance. ``verify()`` lets a run refuse stale or truncated data early.

A shard path may also be any URL WebDataset opens (``pipe:aws s3 cp ... -``,
``https://...``); such paths are used as they are, not resolved against the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest file is malformed; the message names the file and the field."""


@dataclass
class ShardEntry:
    path: str  # relative to the manifest's folder (absolute paths are allowed)
    num_samples: int
    sha256: str


@dataclass
class Manifest:
    name: str
    shards: list[ShardEntry]
    keys: list[str]
    resolution: list[int]  # [H, W]
    depth_scale: float  # uint16 depth value = metres * depth_scale
    licence: str
    created_by: str
    intrinsics: list[float] | None = None  # [fx, fy, cx, cy]; None = per-sample in json
    preprocessing: list[str] | None = None  # what the converter did to the raw data, step by step
    skipped: dict[str, Any] | None = None  # reason -> {count, examples}: raw frames left out, and why
    root: Path | None = field(default=None, compare=False, repr=False)  # folder of the YAML

    _REQUIRED = ("name", "shards", "keys", "resolution", "depth_scale", "licence", "created_by")

    # ------------------------------------------------------------------ #
    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read a manifest YAML; shard paths resolve against its folder."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
        for key in cls._REQUIRED:
            if key not in data:
                raise ManifestError(f"{path}: missing required field {key!r}")

        shards_raw = data["shards"]
        if not isinstance(shards_raw, list):
            raise ManifestError(f"{path}: field 'shards' must be a list")
        shards = []
        for i, entry in enumerate(shards_raw):
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}: shards[{i}] must be a mapping")
            for key in ("path", "num_samples", "sha256"):
                if key not in entry:
                    raise ManifestError(f"{path}: shards[{i}] missing required field {key!r}")
            shards.append(ShardEntry(str(entry["path"]), int(entry["num_samples"]), str(entry["sha256"])))

        resolution = _int_list(data["resolution"], 2, path, "resolution")
        intrinsics = data.get("intrinsics")
        if intrinsics is not None:
            intrinsics = [float(x) for x in _list(intrinsics, 4, path, "intrinsics")]
        keys = data["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ManifestError(f"{path}: field 'keys' must be a list of strings")
        return cls(
            name=str(data["name"]),
            shards=shards,
            keys=list(keys),
            resolution=resolution,
            depth_scale=float(data["depth_scale"]),
            licence=str(data["licence"]),
            created_by=str(data["created_by"]),
            intrinsics=intrinsics,
            preprocessing=data.get("preprocessing"),
            skipped=data.get("skipped"),
            root=path.resolve().parent,
        )

    def to_dict(self) -> dict[str, Any]:
        optional = {k: v for k, v in (("preprocessing", self.preprocessing), ("skipped", self.skipped)) if v is not None}
        return {
            "name": self.name,
            "licence": self.licence,
            "created_by": self.created_by,
            "resolution": [int(x) for x in self.resolution],
            "depth_scale": float(self.depth_scale),
            "intrinsics": None if self.intrinsics is None else [float(x) for x in self.intrinsics],
            "keys": list(self.keys),
            **optional,
            "num_samples": self.num_samples,
            "shards": [
                {"path": s.path, "num_samples": int(s.num_samples), "sha256": s.sha256}
                for s in self.shards
            ],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the YAML (under a temporary name, renamed when whole: a converter killed while
        saving leaves no truncated manifest). Shard paths are stored as given (keep them relative)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(partial, path)
        self.root = path.resolve().parent

    # ------------------------------------------------------------------ #
    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def shard_path(self, entry: ShardEntry) -> Path:
        root = self.root if self.root is not None else Path.cwd()
        return (root / entry.path).resolve()

    def url(self, entry: ShardEntry) -> str:
        """What WebDataset opens for ``entry``: a URL as written, a file path made absolute."""
        return entry.path if is_url(entry.path) else str(self.shard_path(entry))

    def urls(self) -> list[str]:
        """Absolute shard paths (or URLs), in manifest order (what WebDataset consumes)."""
        return [self.url(s) for s in self.shards]

    def check_shard(self, entry: ShardEntry, check_samples: bool = True) -> list[str]:
        """Problems with one shard: missing, sha256 mismatch, unreadable or truncated tar, wrong
        sample count. One pass over the bytes."""
        if not is_url(entry.path) and not self.shard_path(entry).is_file():
            return [f"{self.name}: shard {entry.path} is missing ({self.shard_path(entry)})"]
        problems = []
        try:
            digest, keys, error = scan_shard(self.url(entry), read_members=check_samples)
        except OSError as exc:
            return [f"{self.name}: shard {entry.path} cannot be opened: {exc}"]
        if digest != entry.sha256:
            problems.append(
                f"{self.name}: shard {entry.path} sha256 mismatch "
                f"(manifest {entry.sha256[:12]}..., file {digest[:12]}...)"
            )
        if not check_samples:
            return problems
        if error is not None:
            problems.append(f"{self.name}: shard {entry.path} is not a readable tar after {len(keys)} samples: {error}")
        elif len(keys) != entry.num_samples:
            problems.append(f"{self.name}: shard {entry.path} has {len(keys)} samples, manifest says {entry.num_samples}")
        return problems

    def verify(self, check_samples: bool = True) -> list[str]:
        """Problems found (empty list = clean): missing shards, sha256 or sample-count mismatch,
        unreadable or truncated tars."""
        return [p for entry in self.shards for p in self.check_shard(entry, check_samples)]


def is_url(path: str) -> bool:
    """True for ``scheme:...`` paths WebDataset opens itself (``pipe:``, ``https://``, ``s3://``)."""
    return bool(re.match(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]+://)", path))


class _HashingReader:
    """A read-only stream that hashes every byte read through it."""

    def __init__(self, stream) -> None:
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hash.update(data)
        return data


def scan_shard(url: str, read_members: bool = True) -> tuple[str, dict[str, set[str]], str | None]:
    """sha256 of a shard, its samples' keys (``{key: {"rgb.png", ...}}``) and the tar error, if any.

    Reads the shard once, as a stream, so it works for any URL WebDataset opens.
    """
    import webdataset as wds

    keys: dict[str, set[str]] = {}
    error = None
    with wds.gopen(url, "rb") as stream:
        reader = _HashingReader(stream)
        if read_members:
            try:
                for name, _ in iter_tar(reader, read_data=False):
                    key, suffix = split_member_name(name)
                    keys.setdefault(key, set()).add(suffix)
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        while reader.read(1 << 20):
            pass
    return reader.hash.hexdigest(), keys, error


def iter_tar(stream, read_data: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """``(name, bytes)`` of each file in a tar stream, in order.

    Raises ``tarfile.ReadError`` when the archive is cut off: tarfile itself stops silently when a
    file ends at a member boundary, which would pass a truncated shard off as a shorter one. A
    complete archive has an end-of-archive block after its last member.
    """
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read() if read_data else None
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"archive ends at byte {tar.fileobj.tell()} without an end-of-archive block "
                                    "(truncated)")


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc.rgb.png"`` -> (``"dir/abc"``, ``"rgb.png"``): WebDataset's key / field split."""
    dirname, base = os.path.split(name)
    stem, _, suffix = base.partition(".")
    return os.path.join(dirname, stem), suffix.lower()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large shards don't fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _list(value: Any, length: int, path: Path, field_name: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ManifestError(f"{path}: field {field_name!r} must be a list of {length} numbers")
    return list(value)


def _int_list(value: Any, length: int, path: Path, field_name: str) -> list[int]:
    return [int(x) for x in _list(value, length, path, field_name)]


def verify_main(argv: list[str]) -> int:
    """``lotus_pl data verify <manifest> [...]``: check shards against their manifests.

    Prints each problem (the manifest, the shard and what is wrong) and returns 1 if there was any,
    so scripts and CI can refuse stale, truncated or partial data.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="lotus_pl data verify",
                                     description="Check shards on disk against their manifests.")
    parser.add_argument("manifests", nargs="+", help="manifest YAML files")
    parser.add_argument("--quick", action="store_true", help="sha256 only; do not read the tars' members")
    args = parser.parse_args(argv)
    status = 0
    for path in args.manifests:
        try:
            manifest = Manifest.load(path)
        except (OSError, ManifestError) as exc:
            print(f"FAIL {path}: {exc}")
            status = 1
            continue
        problems = manifest.verify(check_samples=not args.quick)
        for problem in problems:
            print(f"FAIL {problem}")
        if problems:
            status = 1
        else:
            print(f"ok   {path}: {len(manifest.shards)} shards, {manifest.num_samples} samples")
    return status
