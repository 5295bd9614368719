"""The `lotus_pl` command: a CPU smoke test for every shipped config, config errors, reruns,
resuming a killed run, predict on odd images, and the data command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lotus_pl.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in EXPERIMENTS.glob("*.yaml"))
VARIANTS = sorted(p.relative_to(ROOT).as_posix() for p in (EXPERIMENTS / "variants").glob("*.yaml"))


def tiny_overrides(configs: list[str], tiny_dataset: dict, tiny_sd: Path, run_dir: Path, tiny_prior: Path | None = None) -> list[str]:
    """Shrink any shipped config to seconds on a CPU: tiny data, tiny model, two steps (a pretrained
    denoiser over the lossless codec loads the tiny embedded prior, one over the SD VAE the tiny SD folder)."""
    args = []
    for c in configs:
        args += ["--config", str(ROOT / c)]
    args += [
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={run_dir}",
        "--trainer.logger.name=", "--trainer.logger.version=",
        f"--data.train_manifest={tiny_dataset['train']}", f"--data.val_manifest={tiny_dataset['val']}",
        "--data.train_probabilities=null", "--data.synthetic=null", "--data.num_workers=0",
        "--data.batch_size=2", "--data.eval_batch_size=4",
    ]
    denoisers = [(yaml.safe_load((ROOT / c).read_text()).get("model") or {}).get("denoiser") for c in configs]
    denoiser = [d for d in denoisers if d][-1]["class_path"]  # the last config that sets it
    codecs = [(yaml.safe_load((ROOT / c).read_text()).get("model") or {}).get("codec") for c in configs]
    codec = [c for c in codecs if c][-1]["class_path"] if any(codecs) else ""
    if denoiser.endswith("PretrainedStableDiffusion") and codec.endswith("SpaceToDepth"):
        args += [f"--model.denoiser.path={tiny_prior}"]
    elif denoiser.endswith("PretrainedStableDiffusion"):
        args += [f"--model.denoiser.path={tiny_sd}", f"--model.codec.path={tiny_sd}",
                 f"--model.noise_schedule.pretrained_path={tiny_sd}", "--model.processing_resolution=32"]
    elif denoiser.endswith("TimmRegressor"):
        args += ["--model.denoiser.encoder_kwargs={patch_size: 1, dims: [8, 16, 24, 32], depths: [1, 1, 1, 1]}",
                 "--model.denoiser.decoder_channels=16"]
    else:
        args += ["--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
                 "--model.denoiser.cross_attention_dim=16"]
    return args


def checkpoint_every(steps: int) -> list[str]:
    """Add a ModelCheckpoint that keeps ``last.ckpt`` every ``steps`` steps."""
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.every_n_train_steps={steps}", "--trainer.callbacks.save_last=true"]


def last_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("configs", [[c] for c in CONFIGS] + [["experiments/quickstart.yaml", v] for v in VARIANTS], ids=str)
def test_every_shipped_config_trains_a_few_steps(configs, tiny_dataset, tiny_sd, tiny_prior, tmp_path):
    args = tiny_overrides(configs, tiny_dataset, tiny_sd, tmp_path, tiny_prior)
    main(["fit", *args, *checkpoint_every(1)])
    assert last_step(tmp_path) == 2
    assert (tmp_path / "config.yaml").is_file()  # the resolved config is saved with the run


def test_configs_compose_and_dotted_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / "quickstart.yaml"), "--config", str(EXPERIMENTS / "variants/quickstart_lotus_g.yaml"),
              "--model.optimizer.init_args.lr=0.001", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["formulation"]["class_path"] == "lotus_pl.formulations.Generative"
    assert printed["model"]["formulation"]["init_args"]["pure_noise_at_terminal"] is True
    assert printed["model"]["optimizer"]["init_args"]["lr"] == 0.001
    assert printed["model"]["denoiser"]["class_path"] == "lotus_pl.denoisers.SmallUNet"  # kept from the base


@pytest.mark.parametrize("override,message", [
    ("--model.parameterization=lotus_pl.parameterizations.Noise", "Noise"),
    ("--model.detail_presrver=true", "detail_presrver"),
    ("--model.task.init_args.max_depht=3", "max_depht"),
])
def test_bad_config_names_the_culprit(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / "quickstart.yaml"), override, "--print_config"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_rerun_into_the_same_run_directory(tiny_dataset, tiny_sd, tmp_path):
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, tmp_path)
    main(["fit", *args])
    main(["fit", *args, "--trainer.max_steps=3", "--ckpt_path=last"])  # resumes; config overwritten, no crash
    assert "max_steps: 3" in (tmp_path / "config.yaml").read_text()


def test_killed_run_resumes_from_last_checkpoint(tiny_dataset, tiny_sd, tmp_path):
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, tmp_path)
    args += ["--trainer.max_steps=100000", "--trainer.val_check_interval=1000", *checkpoint_every(3)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "lotus_pl", "fit", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and (not last.exists() or last_step(tmp_path) < 6):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = last_step(tmp_path)
    assert killed_at >= 6 and killed_at % 3 == 0
    main(["fit", *args, f"--trainer.max_steps={killed_at + 3}", "--ckpt_path=last"])
    assert last_step(tmp_path) == killed_at + 3


def write_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of every awkward kind, with their upright (H, W)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (25, 40), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 36, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    rotated = Image.fromarray(rng.integers(0, 255, (20, 32, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: upright image is 32 × 20
    rotated.save(folder / "exif.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    return {"rgb": (30, 44), "gray": (25, 40), "rgba": (20, 36), "sixteen": (24, 24), "palette": (16, 20), "exif": (32, 20), "tiny": (5, 7)}


def test_predict_writes_outputs_at_input_size_and_skips_bad_files(tiny_dataset, tiny_sd, tmp_path, caplog):
    run = tmp_path / "run"
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, run)
    main(["fit", *args])
    expected = write_odd_images(tmp_path / "photos")
    out = tmp_path / "predictions"
    main(["predict", *args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), f"--data.predict_input={tmp_path / 'photos'}",
          f"--trainer.callbacks.output_dir={out}", "--model.processing_resolution=32"])
    for stem, size in expected.items():
        png = np.asarray(Image.open(out / f"{stem}_depth.png"))
        assert png.dtype == np.uint16 and png.shape == size, stem
        assert np.load(out / f"{stem}_depth.npy").shape == size
        assert np.asarray(Image.open(out / f"{stem}_depth_color.png")).shape == (*size, 3)
    assert not list(out.glob("broken*"))
    assert "broken.png" in caplog.text


def test_data_command_writes_shards_and_manifests(tmp_path):
    main(["data", "synthetic", f"--out={tmp_path / 'shards'}", f"--manifest_dir={tmp_path}", "--num_train=6", "--num_val=3",
          "--size=16", "--samples_per_shard=4", "--workers=1"])
    from lotus_pl.data.manifest import Manifest

    train = Manifest.load(tmp_path / "synthetic_train.yaml")
    assert train.num_samples == 6 and len(train.shards) == 2 and train.verify() == []
    assert Manifest.load(tmp_path / "synthetic_val.yaml").num_samples == 3
