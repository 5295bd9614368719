"""``lotus_pl export --format onnx``: the single-step graph (encode -> UNet -> decode) in onnxruntime
predicts what lotus_pl does, at two image sizes through the same dynamic-size graph."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort  # the onnx extra
import pytest
import torch

from lotus_pl.cli import main
from lotus_pl.export import ExportCLI, build_model
from lotus_pl.onnx_export import ONNX_FILE, ONNX_META
from test_export import EXPERIMENTS


def test_onnx_export_matches_eager_lotus_pl_on_two_sizes(tiny_sd, tmp_path):
    args = ["--config", str(EXPERIMENTS / "quickstart.yaml"), "--config", str(EXPERIMENTS / "variants/quickstart_lotus_g.yaml"),
            "--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
            "--model.denoiser.cross_attention_dim=16", "--model.codec=lotus_pl.codecs.StableDiffusionVAE",
            f"--model.codec.path={tiny_sd}", "--model.detail_preserver=true", "--model.seed=4"]
    out = tmp_path / "onnx"
    main(["export", *args, "--format", "onnx", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted([ONNX_FILE, ONNX_META])
    meta = json.loads((out / ONNX_META).read_text())
    assert meta["size_multiple"] == 4 and meta["latent_factor"] == 2 and meta["timesteps"] == [999] and "noise" in meta["inputs"]

    model, _ = build_model(ExportCLI([*args, "--out", str(out)]).model_config)
    model.eval()
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "noise"]
    for height, width in ((32, 48), (44, 28)):  # one graph, two sizes on the latent grid
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height)) * 2 - 1
        noise = torch.randn(1, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(model.seed))  # lotus_pl's noise
        expected = model.predict_image(image)
        got = session.run(None, {"image": image.numpy(), "noise": noise.numpy()})[0]
        assert got.shape == (1, 1, height, width) and expected.std() > 1e-4
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4)
        assert np.abs(got - expected.numpy()).max() < 1e-5  # in practice ~2e-6

    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        main(["export", *args, "--format", "onnx", "--out", str(out)])
