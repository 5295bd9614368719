"""Adding a task touches nothing in the package: ``tests/plugins/illumination_task.py`` defines a
task, its metric and its data source outside ``lotus_pl``, with a shard field the project has never
heard of, and trains, evaluates and predicts through the public ``lotus_pl`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
TASK = "illumination"


def test_the_package_does_not_know_the_task():
    """Nothing under lotus_pl/ or experiments/ names it: the plugin module is all there is."""
    for folder in ("lotus_pl", "experiments"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml"):
                assert TASK not in path.read_text().lower(), path


@pytest.fixture(scope="module")
def plugin_data(tmp_path_factory) -> dict[str, str]:
    sys.path.insert(0, str(PLUGINS))
    try:
        from illumination_task import write_illumination
    finally:
        sys.path.remove(str(PLUGINS))
    root = tmp_path_factory.mktemp("illumination")
    return write_illumination(str(root / "shards"), str(root), num_train=16, num_val=8, size=32)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "lotus_pl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_new_task_trains_evaluates_and_predicts_through_the_cli(plugin_data, tmp_path):
    run = tmp_path / "run"
    config = {  # the task's one YAML, composed after the quickstart
        "trainer": {
            "max_steps": 4, "val_check_interval": 2, "limit_val_batches": 1, "enable_progress_bar": False,
            "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run), "name": "", "version": ""}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": "val/mae", "mode": "min", "save_last": True, "every_n_train_steps": 2}},
                {"class_path": "lotus_pl.callbacks.LearningReport", "init_args": {"mean_target_batches": 2}},
                {"class_path": "lotus_pl.callbacks.PredictionWriter", "init_args": {"output_dir": str(tmp_path / "out")}},
            ],
        },
        "model": {
            "task": {"class_path": "illumination_task.Illumination", "init_args": {"max_shading": 1.5}},
            "denoiser": {"class_path": "lotus_pl.denoisers.SmallUNet",
                         "init_args": {"block_out_channels": [16, 32], "cross_attention": [False, True], "cross_attention_dim": 16}},
            "codec": {"class_path": "lotus_pl.codecs.SpaceToDepth", "init_args": {"factor": 2}},
        },
        "data": {"train_manifest": plugin_data["train"], "val_manifest": plugin_data["val"], "synthetic": None,
                 "num_workers": 0, "batch_size": 4, "eval_batch_size": 4},
    }
    config_path = tmp_path / "illumination.yaml"
    config_path.write_text(yaml.safe_dump(config))
    base = ["--config", str(ROOT / "experiments" / "quickstart.yaml"), "--config", str(config_path)]
    run_cli(["fit", *base], cwd=tmp_path)

    report = json.loads((run / "learning_report.json").read_text())
    for row in ("untrained", "mean_target", "trained"):
        assert np.isfinite(report[row]["mae"]) and report[row]["mae"] > 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4

    val = run_cli(["validate", *base, "--ckpt_path", str(ckpt)], cwd=tmp_path)
    assert "val/mae" in val.stdout

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (21, 30, 3), dtype=np.uint8)).save(photos / "p.png")
    run_cli(["predict", *base, "--ckpt_path", str(ckpt), f"--data.predict_input={photos}"], cwd=tmp_path)
    pred = np.load(tmp_path / "out" / "p_illumination.npy")
    assert pred.shape == (21, 30) and pred.dtype == np.float32 and 0 <= pred.min() and pred.max() <= 1.5
    assert (tmp_path / "out" / "p_illumination.png").is_file()


def test_new_field_decodes_from_shards(plugin_data):
    """The unknown ``illumination.npy`` comes out of the data pipeline as ``[1, H, W]`` float, NaN kept."""
    from lotus_pl.data.datamodule import SampleDecoder, iter_shard
    from lotus_pl.data.manifest import Manifest

    manifest = Manifest.load(plugin_data["val"])
    raw = next(iter_shard(manifest.url(manifest.shards[0])))
    sample = SampleDecoder(["rgb", TASK])(raw)
    assert sample[TASK].shape == (1, 32, 32) and sample[TASK].dtype == torch.float32
    assert torch.isfinite(sample[TASK]).float().mean() > 0.5
    missing = dict(raw)
    del missing[f"{TASK}.npy"]
    from lotus_pl.data.samples import SampleError

    with pytest.raises(SampleError, match=f"{raw['__key__']}.*missing required field '{TASK}'"):
        SampleDecoder(["rgb", TASK])(missing)
