"""Predictions default to the resolution the model was trained at (recorded in the checkpoint), and
say which resolution they used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lotus_pl.cli import main
from test_model import make_model

ROOT = Path(__file__).resolve().parents[1]


def test_inference_resolution_follows_the_recorded_training_size():
    model = make_model().eval()
    assert model.processing_resolution is None and model.inference_resolution == 0  # nothing recorded: native
    checkpoint = {"state_dict": {}}
    model.training_resolution = 16
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["training_resolution"] == 16
    fresh = make_model().eval()
    fresh.load_state_dict(model.state_dict())
    fresh.on_load_checkpoint({"state_dict": {}, "training_resolution": 16})
    assert fresh.inference_resolution == 16 and "training resolution" in fresh.resolution_reason()
    image = torch.rand(1, 3, 40, 24) * 2 - 1
    default = fresh.predict_image(image)
    assert default.shape[-2:] == (40, 24)
    assert torch.equal(default, fresh._predict_at(image, 16)[0]["depth"])
    assert not torch.equal(default, fresh._predict_at(image, 0)[0]["depth"])  # native size differs
    fresh.processing_resolution = 0  # asked for: native, whatever was recorded
    assert fresh.inference_resolution == 0 and "native" in fresh.resolution_reason()
    assert torch.equal(fresh.predict_image(image), fresh._predict_at(image, 0)[0]["depth"])
    assert make_model().on_load_checkpoint({"state_dict": {}}) is None  # old checkpoints: nothing recorded


def test_fit_records_the_training_size_and_predict_uses_and_reports_it(tiny_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), f"--data.train_manifest={tiny_dataset['train']}",
          f"--data.val_manifest={tiny_dataset['val']}", "--data.synthetic=null", "--data.num_workers=0",
          "--data.batch_size=2", "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}", "--trainer.callbacks=[]",
          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last=true",
          f"--trainer.callbacks.dirpath={run / 'checkpoints'}", "--model.denoiser.block_out_channels=[16,32]",
          "--model.denoiser.cross_attention=[false,true]", "--model.denoiser.cross_attention_dim=16"])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["training_resolution"] == 32  # the tiny shards' size
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photos / "p.png")
    outputs = {}
    for name, extra in (("default", []), ("native", ["--model.processing_resolution=0"])):
        caplog.clear()
        out = tmp_path / name
        with caplog.at_level("INFO"):
            main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), f"--data.predict_input={photos}",
                  "--data.num_workers=0", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                  "--trainer.callbacks=[]", "--trainer.callbacks+=lotus_pl.callbacks.PredictionWriter",
                  f"--trainer.callbacks.output_dir={out}", *extra])
        said = [r.getMessage() for r in caplog.records if "predicting at processing resolution" in r.getMessage()]
        assert said == [{"default": "predicting at processing resolution 32 (the training resolution recorded with the model; "
                                    "--model.processing_resolution=N to change it, 0 for native)",
                         "native": "predicting at processing resolution native (as set (model.processing_resolution): native size)"}[name]]
        outputs[name] = np.load(out / "p_depth.npy")
        assert outputs[name].shape == (60, 80)  # written at the photo's size either way
    assert not np.allclose(outputs["default"], outputs["native"])
