"""Which files belong together, and which split each frame goes to.

Two ways to pair a user's files:

* **by file stem**: an RGB image ``<rgb>/a/0001.jpg`` pairs with ``<depth>/a/0001<depth_suffix>.<ext>``
  (any supported extension; folders searched recursively, relative sub-folders kept). The folders may
  be one and the same (``0001.jpg`` beside ``0001_depth.png``): files whose stem ends in a partner's
  suffix are then not taken for RGB images; without a suffix, only non-image files (NPY, PFM, EXR)
  there are partners.
* **by a CSV** with a header row: ``rgb`` (required), ``depth``, ``normal``, ``mask`` (paths
  relative to the CSV's folder, or absolute), optionally ``fx, fy, cx, cy`` (per-image intrinsics)
  and ``split``.

When a kind of annotation is asked for (its folder given, or its CSV column present), every frame
needs it: a frame without it is left out and reported by name (``missing depth: 0001``), and
annotation files no RGB image claims are reported too (a typo in a suffix shows up at once).

Splits: a ``split`` CSV column, or lists of keys (``--train_list`` / ``--val_list`` / ``--test_list``,
one key or RGB path per line), or ratios. Ratio splits hash each frame's key with the seed, so a
frame keeps its split when files are added or removed.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from lotus_pl.data.folder.readers import DEPTH_SUFFIXES, MASK_SUFFIXES, NORMAL_SUFFIXES, AnnotationError, intrinsics_from_values
from lotus_pl.data.images import IMAGE_SUFFIXES

PARTNERS = ("depth", "normal", "mask")
_SUFFIXES = {"depth": DEPTH_SUFFIXES, "normal": NORMAL_SUFFIXES, "mask": MASK_SUFFIXES}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FolderFrame:
    """One RGB image and its annotation files (paths as strings: frames travel to worker processes)."""

    key: str
    rgb: str
    depth: str | None = None
    normal: str | None = None
    mask: str | None = None
    intrinsics: tuple[float, float, float, float] | None = None  # OpenCV convention, per image


@dataclass
class Pairing:
    """The frames found, what was left out (reason -> keys), annotation files nothing claimed, and
    each frame's split where the input says it (a CSV column)."""

    frames: list[FolderFrame]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    orphans: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)


def frame_key(relative: Path) -> str:
    """A WebDataset key from a path relative to its root, without suffix: no dots, readable."""
    return re.sub(r"[^A-Za-z0-9_\-/]", "_", relative.with_suffix("").as_posix())


def _listing(root: Path, suffixes: tuple[str, ...] | set[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def pair_by_stem(rgb_dir: Path, partner_dirs: dict[str, Path], partner_suffixes: dict[str, str]) -> Pairing:
    """Frames from folders; see the module docstring. ``partner_dirs``: kind -> folder (kinds asked for)."""
    if not rgb_dir.is_dir():
        raise FileNotFoundError(f"RGB folder not found: {rgb_dir}")
    claimed_suffixes = [s for kind, s in partner_suffixes.items()  # partners living among the images
                        if kind in partner_dirs and s and partner_dirs[kind].resolve() == rgb_dir.resolve()]
    found: dict[str, dict[str, Path]] = {}  # kind -> relative stem (with the suffix removed) -> file
    for kind, folder in partner_dirs.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"{kind} folder not found: {folder}")
        suffix = partner_suffixes.get(kind, "")
        table: dict[str, Path] = {}
        for path in _listing(folder, _SUFFIXES[kind]):
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            elif folder.resolve() == rgb_dir.resolve() and path.suffix.lower() in IMAGE_SUFFIXES:
                continue  # one folder, no suffix: image files are the RGB (a PNG partner there needs a suffix)
            if stem in table:
                raise AnnotationError(f"two {kind} files for {stem!r}: {table[stem]} and {path}; keep one")
            table[stem] = path
        found[kind] = table

    pairing = Pairing([])
    keys: dict[str, Path] = {}
    used: dict[str, set[str]] = {kind: set() for kind in partner_dirs}
    for path in _listing(rgb_dir, IMAGE_SUFFIXES):
        stem = path.relative_to(rgb_dir).with_suffix("").as_posix()
        if any(stem.endswith(s) for s in claimed_suffixes):
            continue  # an annotation beside the images, not an image
        if any(stem in found[kind] and found[kind][stem] == path for kind in found):
            continue  # the same file taken as an annotation (one folder, no suffix)
        key = frame_key(path.relative_to(rgb_dir))
        if key in keys:
            raise AnnotationError(f"two RGB images map to the key {key!r}: {keys[key]} and {path}; rename one")
        keys[key] = path
        partners, missing = {}, [kind for kind in partner_dirs if stem not in found[kind]]
        for kind in partner_dirs:
            if stem in found[kind]:
                partners[kind] = str(found[kind][stem])
                used[kind].add(stem)
        if missing:
            for kind in missing:
                pairing.skipped.setdefault(f"missing {kind}", []).append(key)
            continue
        pairing.frames.append(FolderFrame(key, str(path), **partners))
    for kind, table in found.items():
        orphans = sorted(str(table[s]) for s in set(table) - used[kind])
        if orphans:
            pairing.orphans[kind] = orphans
    return pairing


def pair_by_csv(csv_path: Path) -> Pairing:
    """Frames from a CSV (see the module docstring); paths resolve against the CSV's folder."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"pairs CSV not found: {csv_path}")
    with open(csv_path, newline="") as stream:
        reader = csv.DictReader(stream)
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if "rgb" not in columns:
        raise AnnotationError(f"{csv_path}: needs a header row with an 'rgb' column, got {columns}")
    camera = [c for c in ("fx", "fy", "cx", "cy") if c in columns]
    if camera and len(camera) != 4:
        raise AnnotationError(f"{csv_path}: per-image intrinsics need all of fx, fy, cx, cy; it has {camera}")
    kinds = [kind for kind in PARTNERS if kind in columns]
    base = csv_path.resolve().parent
    pairing, keys = Pairing([]), {}
    for line, row in enumerate(rows, start=2):
        if not row.get("rgb"):
            raise AnnotationError(f"{csv_path}:{line}: empty 'rgb'")
        rgb = Path(row["rgb"]) if Path(row["rgb"]).is_absolute() else base / row["rgb"]
        key = frame_key(Path(row["rgb"]) if not Path(row["rgb"]).is_absolute() else Path(rgb.name))
        if key in keys:
            raise AnnotationError(f"{csv_path}:{line}: {row['rgb']!r} maps to the key {key!r} of line {keys[key]}")
        keys[key] = line
        paths, missing = {}, []
        if not rgb.is_file():
            missing.append("rgb")
        for kind in kinds:
            value = row.get(kind, "")
            path = Path(value) if Path(value).is_absolute() else base / value
            if not value or not path.is_file():
                missing.append(kind)
            paths[kind] = str(path)
        if missing:
            for kind in missing:
                pairing.skipped.setdefault(f"missing {kind}", []).append(key)
            continue
        intrinsics = None
        if camera:
            try:
                values = [float(row[c]) for c in ("fx", "fy", "cx", "cy")]
            except ValueError as exc:
                raise AnnotationError(f"{csv_path}:{line}: intrinsics must be numbers: {exc}") from exc
            intrinsics = tuple(intrinsics_from_values(values, f"{csv_path}:{line}"))
        if row.get("split"):
            if row["split"] not in SPLITS:
                raise AnnotationError(f"{csv_path}:{line}: split must be one of {SPLITS}, got {row['split']!r}")
            pairing.splits[key] = row["split"]
        pairing.frames.append(FolderFrame(key, str(rgb), intrinsics=intrinsics, **paths))
    return pairing


def read_key_list(path: Path) -> set[str]:
    """Keys (or RGB paths, made into keys) one per line; blank lines and ``#`` comments ignored."""
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {frame_key(Path(line)) if Path(line).suffix.lower() in IMAGE_SUFFIXES else frame_key(Path(line + ".x"))
            for line in lines if line}


def ratio_split(key: str, val_ratio: float, test_ratio: float, seed: int) -> str:
    """``train`` / ``val`` / ``test`` from a seeded hash of the key, stable as files come and go."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_ratio else "val" if u < test_ratio + val_ratio else "train"


def assign_splits(pairing: Pairing, lists: dict[str, Path], val_ratio: float, test_ratio: float,
                  seed: int) -> dict[str, list[FolderFrame]]:
    """Each frame's split: CSV column first, else the lists (a frame in none of them is left out and
    reported), else the ratios."""
    if not (0 <= val_ratio and 0 <= test_ratio and val_ratio + test_ratio < 1):
        raise ValueError(f"val_ratio + test_ratio must be in [0, 1), got {val_ratio} + {test_ratio}")
    members = {split: read_key_list(path) for split, path in lists.items()}
    for a in members:
        for b in members:
            if a < b and members[a] & members[b]:
                raise ValueError(f"{a} and {b} lists share keys: {sorted(members[a] & members[b])[:5]}")
    out: dict[str, list[FolderFrame]] = {split: [] for split in SPLITS}
    for frame in pairing.frames:
        if frame.key in pairing.splits:
            split = pairing.splits[frame.key]
        elif members:
            split = next((s for s, keys in members.items() if frame.key in keys), None)
            if split is None:
                pairing.skipped.setdefault("in no split list", []).append(frame.key)
                continue
        else:
            split = ratio_split(frame.key, val_ratio, test_ratio, seed)
        out[split].append(frame)
    return out
