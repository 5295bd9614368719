"""``LotusPipeline`` in diffusers: the authors' computation on released-layout folders, lotus_pl
predict's output on lotus_pl exports, and the ``from_pretrained`` / ``save_pretrained`` round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.denoisers import TEXT_CONTEXT_FILE
from lotus_pl.pipeline import LotusPipeline, LotusPipelineOutput
from test_export import EXPERIMENTS, authors_depth, predict, released, write_photos  # noqa: F401 (fixture)

TINY = ["--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
        "--model.denoiser.cross_attention_dim=16", "--model.processing_resolution=48"]


@pytest.mark.parametrize("in_channels", [8, 4], ids=["lotus_g", "lotus_d"])
def test_pipeline_on_a_released_folder_computes_what_the_authors_pipeline_does(released, in_channels):
    pipe = LotusPipeline.from_pretrained(released[in_channels])
    assert pipe.config.task == "lotus_pl.tasks.Depth" and pipe.config.default_denoising_steps == 1  # the defaults
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(5)) if in_channels == 8 else None
    out = pipe(image, processing_resolution=0, latents=noise, output_type="pt", output_latent=True)
    expected = authors_depth(released[in_channels], image * 2 - 1, noise)
    assert isinstance(out, LotusPipelineOutput) and out.uncertainty is None and out.latent.shape == (1, 4, 12, 16)
    assert out.prediction.shape == (1, 1, 24, 32) and out.prediction.std() > 1e-4
    torch.testing.assert_close(out.prediction, expected, rtol=1e-5, atol=1e-6)


def export(tmp_path: Path, name: str, configs: list[str], extra: list[str]) -> Path:
    out = tmp_path / name
    main(["export", *[a for c in configs for a in ("--config", str(EXPERIMENTS / c))], *TINY, *extra, "--out", str(out)])
    return out


@pytest.mark.parametrize("variant", ["sd_vae_lotus_d", "space_to_depth_lotus_g"])
def test_pipeline_on_an_export_gives_lotus_pl_predict_output(variant, tiny_sd, tmp_path):
    configs, extra = {
        "sd_vae_lotus_d": (["quickstart.yaml"], ["--model.codec=lotus_pl.codecs.StableDiffusionVAE", f"--model.codec.path={tiny_sd}",
                                                 "--model.detail_preserver=true"]),
        "space_to_depth_lotus_g": (["quickstart.yaml", "variants/quickstart_lotus_g.yaml"], ["--model.seed=3"]),
    }[variant]
    folder = export(tmp_path, "exported", configs, extra)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "LotusPipeline" and index["default_processing_resolution"] == 48
    assert index["task"] == "lotus_pl.tasks.depth.Depth" and index["seed"] == (3 if "lotus_g" in variant else 0)
    assert index["space_to_depth"] == (4 if "space_to_depth" in variant else 0)  # the quickstart codec's factor
    photos = tmp_path / "photos"
    sizes = write_photos(photos)
    expected = predict([str(folder / "lotus_pl.yaml")], photos, tmp_path / "predictions")

    pipe = LotusPipeline.from_pretrained(folder)
    assert (pipe.vae is None) == ("space_to_depth" in variant)
    for stem, size in sizes.items():
        path = next(photos.glob(f"{stem}.*"))
        out = pipe(Image.open(path))
        assert out.prediction.shape == (1, *size, 1) and isinstance(out.prediction, np.ndarray)
        np.testing.assert_allclose(out.prediction[0, ..., 0], expected[f"{stem}_depth.npy"].squeeze(), rtol=0, atol=1e-6)

    resaved = tmp_path / "resaved"
    pipe.save_pretrained(resaved)
    again = LotusPipeline.from_pretrained(resaved)
    assert again.config.task == pipe.config.task and again.config.seed == pipe.config.seed
    assert (resaved / TEXT_CONTEXT_FILE).is_file() == (folder / TEXT_CONTEXT_FILE).is_file()
    image = np.asarray(Image.open(photos / "wide.png"))
    assert np.array_equal(again(image).prediction, pipe(image).prediction)


def test_pipeline_outputs_ensembles_and_errors(released):
    pipe = LotusPipeline.from_pretrained(released[8], default_processing_resolution=32)  # config entries as kwargs
    assert pipe.config.default_processing_resolution == 32
    images = [torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = pipe(images, ensemble_size=3, processing_resolution=32, output_latent=True)
    assert out.prediction.shape == out.uncertainty.shape == (2, 20, 28, 1)
    assert out.latent.shape == (6, 4, 12, 16) and (out.uncertainty > 0).any()
    members = pipe(images[0], ensemble_size=3, output_type="pt").prediction
    assert members.shape == (1, 1, 20, 28)
    visual = pipe.image_processor.visualize_depth(out.prediction)  # diffusers' Marigold visualisation
    assert len(visual) == 2 and visual[0].size == (28, 20)
    same_seed = pipe(images[0], output_type="pt").prediction
    assert torch.equal(same_seed, pipe(images[0], output_type="pt").prediction)  # seeded by the config
    with pytest.raises(ValueError, match="ensemble_size > 1 needs Lotus-G"):
        LotusPipeline.from_pretrained(released[4], default_processing_resolution=32)(images[0], ensemble_size=2)
    with pytest.raises(ValueError, match=r"latents have shape \(1, 4, 2, 2\)"):
        pipe(images[0], latents=torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"image\[1\] is \(20, 24\), image\[0\] \(20, 28\)"):
        pipe([images[0], images[1][..., :24]])
    with pytest.raises(ValueError, match="partially outside of the \\[0,1\\] range"):
        pipe(images[0] * 2)
    with pytest.raises(ValueError, match="'lotus_pl.tasks.Nope' is not an importable class"):
        LotusPipeline.from_pretrained(released[4], task="lotus_pl.tasks.Nope")


def test_plain_diffusion_pipeline_loading_says_why_it_needs_the_class(released):
    """diffusers resolves a string _class_name only among its own pipelines: the README's way is the class."""
    with pytest.raises(AttributeError, match="LotusGPipeline"):
        DiffusionPipeline.from_pretrained(released[8])
