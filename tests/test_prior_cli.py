"""``lotus_pl prior fit`` end to end (tiny): pretrain, export, fine-tune Lotus from the export; and
zero-shot scoring on held-out scene domains in the learning report and the sweep table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lotus_pl.cli import main
from lotus_pl.sweep import _run_result, collect
from test_cli import ROOT, last_step, tiny_overrides


def _prior_args(tiny_dataset: dict, run: Path, export: Path) -> list[str]:
    overrides = {
        "trainer": {
            "max_steps": 4, "val_check_interval": 2, "limit_val_batches": 1, "accelerator": "cpu", "devices": 1,
            "enable_progress_bar": False, "max_time": None, "log_every_n_steps": 1, "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run), "name": "", "version": ""}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "every_n_train_steps": 2}},
                {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.5, "use_buffers": False}},
                {"class_path": "lotus_pl.prior.PriorExport", "init_args": {"out": str(export), "samples": 4, "sample_steps": 2}},
            ],
        },
        "model": {
            "denoiser": {"class_path": "lotus_pl.denoisers.SmallUNet",
                         "init_args": {"block_out_channels": [16, 32], "cross_attention": [False, True], "cross_attention_dim": 16}},
            "text_encoder": {"class_path": "lotus_pl.prior.TinyTextEncoder", "init_args": {"hidden": 16}},
            "sample_grid": 4, "sample_steps": 2,
        },
        "data": {"train_manifest": tiny_dataset["train"], "val_manifest": tiny_dataset["val"], "synthetic": None,
                 "num_workers": 0, "batch_size": 2, "eval_batch_size": 4},
    }
    path = run.parent / f"{run.name}_overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return ["--config", str(ROOT / "experiments/prior/embedded.yaml"), "--config", str(path)]


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_cli")
    run, export = root / "run", root / "export"
    main(["prior", "fit", *_prior_args(tiny_dataset, run, export)])
    return run, export


def test_prior_fit_logs_exports_and_saves_samples(pretrained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, export = pretrained
    assert last_step(run) == 4
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "tokenizer/vocab.json",
                 "scheduler/scheduler_config.json", "model_index.json"):
        assert (export / part).is_file(), part
    assert (run / "samples.png").is_file()
    events = EventAccumulator(str(run))
    events.Reload()
    assert "samples" in events.Tags()["images"] and "val/loss" in events.Tags()["scalars"]
    assert "train/loss" in events.Tags()["scalars"]


def test_the_export_holds_the_averaged_weights(pretrained):
    """EMA's average replaces the weights when training ends; the export is taken after that."""
    run, export = pretrained
    exported = load_file(export / "unet/diffusion_pytorch_model.safetensors")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    key = "conv_in.weight"  # Lightning saves the average as state_dict and the raw weights beside it
    assert torch.equal(exported[key], checkpoint["state_dict"][f"unet.{key}"])
    assert not torch.equal(exported[key], checkpoint["current_model_state"][f"unet.{key}"])


def test_prior_export_of_a_checkpoint_equals_the_end_of_fit_export(pretrained, tmp_path, capsys):
    """``lotus_pl prior export`` of the last checkpoint writes the same folder PriorExport wrote at
    the end of fit (the EMA weights, the scheduler, the text encoder); a folder without a run's
    config.yaml and a missing checkpoint are refused by name."""
    run, export = pretrained
    out = tmp_path / "from_ckpt"
    main(["prior", "export", "--run", str(run), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)])
    assert f"exported {out}" in capsys.readouterr().out
    ours, theirs = load_file(out / "unet/diffusion_pytorch_model.safetensors"), load_file(export / "unet/diffusion_pytorch_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for part in ("scheduler/scheduler_config.json", "model_index.json", "text_encoder/config.json"):
        assert json.loads((out / part).read_text()) == json.loads((export / part).read_text()), part
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        main(["prior", "export", "--run", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        main(["prior", "export", "--run", str(run), "--ckpt_path", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "y")])


def test_fine_tuning_from_the_exported_prior(pretrained, tiny_dataset, tiny_sd, tmp_path):
    _, export = pretrained
    configs = ["experiments/quickstart.yaml", "experiments/variants/quickstart_prior.yaml"]
    main(["fit", *tiny_overrides(configs, tiny_dataset, tiny_sd, tmp_path, export),
          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last=true"])
    assert last_step(tmp_path) == 2
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["denoiser"]["init_args"]["path"] == str(export)


def test_prior_resume_picks_the_last_checkpoint(pretrained, tiny_dataset, tmp_path):
    run, export = pretrained
    args = _prior_args(tiny_dataset, run, tmp_path / "export2")
    main(["prior", "fit", *args, "--trainer.max_steps=6", "--ckpt_path", "resume"])
    assert last_step(run) == 6


def test_zero_shot_domains_in_the_learning_report_and_the_sweep_table(tiny_dataset, tiny_sd, tmp_path):
    manifest = tmp_path / "outdoor_val.yaml"
    renderer = ("{class_path: lotus_pl.data.datamodule.SyntheticScenes, init_args: {out: " + str(tmp_path / "outdoor")
                + ", num_val: 4, size: 32, samples_per_shard: 4, workers: 1, domain: {class_path: lotus_pl.data.domains.Outdoor}}}")
    run = tmp_path / "run"
    main(["fit", *tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, run),
          f"--data.zero_shot={{outdoor: {manifest}}}", f"--data.zero_shot_synthetic={{outdoor: {renderer}}}",
          ])
    assert manifest.is_file()
    report = json.loads((run / "learning_report.json").read_text())
    rows = report["zero_shot"]["outdoor"]
    assert set(rows) == {"untrained", "mean_target", "trained"}
    assert 0 < rows["trained"]["abs_rel"] < 10 and "delta1" in rows["trained"]
    assert rows["trained"] != report["trained"]  # scored on other scenes than validation
    # the sweep table reads them
    plan = {"name": "zs", "runs": [{"index": 0, "label": "x=1", "seed": 0, "dir": str(run), "overrides": {"x": 1}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(plan))
    row = _run_result(plan["runs"][0])
    assert row["zero_shot/outdoor/abs_rel"] == rows["trained"]["abs_rel"]
    assert row["zero_shot/outdoor/baseline_mean_target_abs_rel"] == rows["mean_target"]["abs_rel"]
    table = (tmp_path / "results.md")
    collect(tmp_path)
    assert "zero_shot/outdoor/abs_rel" in table.read_text().splitlines()[2]


def test_zero_shot_renderer_without_a_manifest_is_refused():
    from lotus_pl.data.datamodule import DenseDataModule, SyntheticScenes

    with pytest.raises(ValueError, match="zero_shot_synthetic names \\['outdoor'\\]"):
        DenseDataModule(zero_shot_synthetic={"outdoor": SyntheticScenes()})


def test_the_longer_prior_continues_the_same_run_into_another_folder(capsys):
    """experiments/prior/embedded_longer.yaml resumes the shipped prior's run (same directory, model,
    data and EMA) for more steps, and exports beside priors/embedded64 instead of over it."""
    prior = ROOT / "experiments/prior"
    printed = {}
    for configs in (["embedded.yaml"], ["embedded.yaml", "embedded_longer.yaml"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["prior", "fit", *[a for c in configs for a in ("--config", str(prior / c))], "--print_config"])
        assert exit_info.value.code == 0
        printed[len(configs)] = yaml.safe_load(capsys.readouterr().out)
    base, longer = printed[1], printed[2]
    assert longer["trainer"]["max_steps"] > base["trainer"]["max_steps"]
    assert longer["trainer"]["default_root_dir"] == base["trainer"]["default_root_dir"]
    assert longer["model"] == base["model"] and longer["data"] == base["data"] and longer["seed_everything"] == base["seed_everything"]

    def callback(config, name):
        return next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith(name))

    assert callback(longer, "EMAWeightAveraging") == callback(base, "EMAWeightAveraging")
    assert callback(base, "PriorExport")["out"] == "priors/embedded64"
    assert callback(longer, "PriorExport")["out"] == "priors/embedded64_longer"
