"""Two-process CPU DDP (gloo): training streams never run dry on one rank, validation and the
learning report synchronise, and the run finishes with the same step count everywhere."""

import subprocess
import sys

import torch

from test_cli import checkpoint_every, tiny_overrides


def test_two_process_ddp_fit(tiny_dataset, tiny_sd, tmp_path):
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, tmp_path)
    args += ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
             "--trainer.limit_val_batches=null", *checkpoint_every(2)]
    result = subprocess.run([sys.executable, "-m", "lotus_pl", "fit", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Learning report" in result.stdout + result.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4
