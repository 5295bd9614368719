"""``lotus_pl test`` with an eval config and ``lotus_pl eval-suite`` end to end on a miniature NYUv2:
crop masks reach the metric, an image with nothing to score yields no NaN, the results JSON reaches
the paper-style table, and 2-process CPU DDP on uneven shards scores each sample exactly once,
with the single-process numbers."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.manifest import Manifest
from lotus_pl.evaluation.table import markdown_table
from test_cli import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 7  # in shards of 3, 3, 1: with two ranks, one reads 4 samples and the other 3
EMPTY = "test-office_0002-rgb_0002"  # valid depth only outside the Eigen crop: nothing to score


def tiny_model(ckpt: Path) -> list[str]:
    """Arguments for the tiny quickstart model, evaluated at 64 px (resized back to 480 × 640)."""
    return ["--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
            "--model.denoiser.cross_attention_dim=16", "--model.processing_resolution=64", "--data.num_workers=0",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--ckpt_path={ckpt}"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_dataset) -> Path:
    """A working directory with ``data_manifests/nyuv2_test.yaml`` (the eval config's path) and a checkpoint."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    nyu = root / "nyu" / "test"
    y, x = np.mgrid[0:480, 0:640]
    for i in range(NUM_IMAGES):
        folder = nyu / f"office_{i:04d}"
        folder.mkdir(parents=True)
        rgb = np.stack([(x // (i + 2)) % 256, (y // (i + 3)) % 256, rng.integers(0, 255, (480, 640))], -1).astype(np.uint8)
        depth = (1000 + 300 * np.sin(x / (20 + i)) + y * (2 + i)).astype(np.uint16)
        if f"test-office_{i:04d}-rgb_{i:04d}" == EMPTY:
            depth[45:471, 41:601] = 0
        Image.fromarray(rgb).save(folder / f"rgb_{i:04d}.png")
        Image.fromarray(depth).save(folder / f"depth_{i:04d}.png")
    main(["data", "nyuv2", f"--root={root / 'nyu'}", f"--out={root / 'shards'}",
          f"--manifest={root / 'data_manifests' / 'nyuv2_test.yaml'}", "--samples_per_shard=3"])
    assert [s.num_samples for s in Manifest.load(root / "data_manifests" / "nyuv2_test.yaml").shards] == [3, 3, 1]

    run = root / "run"  # one training step, checkpointed; no validation or learning report (seconds, not tens)
    main(["fit", *tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, root, run), "--trainer.max_steps=1",
          "--trainer.limit_val_batches=0", '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
          '"init_args": {"save_last": true}}]'])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return root


@pytest.fixture(scope="module")
def suite(workdir) -> dict:
    """``lotus_pl eval-suite`` (in this process; each dataset still runs its own ``lotus_pl test``) on nyuv2 and
    on kitti, whose eval config is missing from the eval folder given: it must fail alone."""
    eval_dir = workdir / "eval_configs"
    eval_dir.mkdir()
    shutil.copy(ROOT / "experiments" / "eval" / "nyuv2.yaml", eval_dir)
    args = ["eval-suite", "--config", str(ROOT / "experiments/quickstart.yaml"), "--task", "depth", "--datasets", "nyuv2,kitti",
            f"--out={workdir / 'results'}", "--name", "tiny", f"--eval_dir={eval_dir}",
            *tiny_model(workdir / "run" / "checkpoints" / "last.ckpt")]
    stdout, cwd = io.StringIO(), os.getcwd()
    os.chdir(workdir)  # the eval config's manifest path is relative
    try:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            main(args)
    finally:
        os.chdir(cwd)
    return {"exit": exit_info.value.code, "stdout": stdout.getvalue(),
            "nyuv2": json.loads((workdir / "results" / "nyuv2" / "test_results.json").read_text()),
            "table": json.loads((workdir / "results" / "depth_results.json").read_text()),
            "markdown": (workdir / "results" / "depth_results.md").read_text()}


def test_crop_masks_reach_the_metric_and_empty_images_give_no_nan(suite):
    result = suite["nyuv2"]
    assert result["dataset"] == "nyuv2" and result["task"] == "depth"
    assert result["num_samples"] == NUM_IMAGES and result["duplicate_keys"] == 0
    # The image whose only valid depth lies outside the Eigen crop is skipped, not scored: the crop is applied.
    assert result["counts"] == {"num_images": NUM_IMAGES - 1, "num_skipped": 1}
    assert EMPTY in result["keys"]
    assert all(value is not None and math.isfinite(value) for value in result["metrics"].values())
    assert 0 < result["metrics"]["abs_rel"] and 0 <= result["metrics"]["delta1"] <= 1
    assert result["depth_range"] == [1e-3, 10.0] and result["processing_resolution"] == 64


def test_suite_writes_the_paper_table_and_reports_the_failed_dataset(suite):
    assert suite["exit"] == 1  # kitti failed
    table = suite["table"]
    assert table["datasets"] == ["nyuv2", "kitti"]
    assert table["rows"]["Lotus-D"] == {"nyuv2": [5.1, 97.2], "kitti": [8.1, 93.1]}
    metrics = suite["nyuv2"]["metrics"]
    assert table["rows"]["tiny"]["nyuv2"] == [100 * metrics["abs_rel"], 100 * metrics["delta1"]]
    assert table["rows"]["tiny"]["kitti"] is None and "no eval config" in table["measured"]["kitti"]["error"]
    measured_row = f"| **tiny** (measured) | {100 * metrics['abs_rel']:.1f}/{100 * metrics['delta1']:.1f} | failed |"
    assert measured_row in suite["markdown"] and measured_row in suite["stdout"]
    assert "| Lotus-D | 5.1/97.2 | 8.1/93.1 |" in suite["markdown"]


def test_two_process_ddp_scores_each_sample_once_with_single_process_numbers(workdir, suite):
    out = workdir / "ddp"
    args = ["test", "--config", str(ROOT / "experiments/quickstart.yaml"), "--config", str(ROOT / "experiments/eval/nyuv2.yaml"),
            f"--trainer.default_root_dir={out}", "--trainer.strategy=ddp", "--trainer.devices=2",
            *tiny_model(workdir / "run" / "checkpoints" / "last.ckpt")]
    completed = subprocess.run([sys.executable, "-m", "lotus_pl", *args], cwd=workdir, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    ddp, single = json.loads((out / "test_results.json").read_text()), suite["nyuv2"]
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert sorted(ddp["samples_per_rank"]) == [3, 4] and single["samples_per_rank"] == [NUM_IMAGES]  # uneven: 3 + 1 | 3
    assert ddp["keys"] == single["keys"] and ddp["duplicate_keys"] == 0  # every sample once, none padded in
    assert ddp["counts"] == single["counts"]
    for name, value in single["metrics"].items():
        assert ddp["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-15), name  # float64 sums, another order


def test_normal_table_layout():
    measured = {"nyuv2": {"metrics": {"mean": 20.04, "a11_25": 0.5012, "a30": 0.8}}, "sintel": None}
    text = markdown_table("normal", ["nyuv2", "sintel", "oasis"], measured, "mine")
    assert "normal: mean° / % < 11.25° / % < 30°" in text
    assert "| method | NYUv2 | Sintel | OASIS |" in text
    assert "| DSINE | 16.4/59.6/83.5 | 34.9/21.5/52.7 | — |" in text
    assert "| **mine** (measured) | 20.0/50.1/80.0 | failed | failed |" in text
