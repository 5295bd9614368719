"""Released Lotus checkpoints in lotus_pl, and `lotus_pl export` round trips.

Tiny folders in the exact layout of the authors' releases (model_index.json, unet/ with an 8- or
4-channel conv_in and the projection class embedding of width 4, vae/, text_encoder/, tokenizer/,
scheduler/) are run through DiffusersUNet and checked against the authors' computation written out
with diffusers components; trained lotus_pl runs are exported and loaded back with identical outputs.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

from lotus_pl.cli import main
from lotus_pl.codecs import SpaceToDepth, StableDiffusionVAE
from lotus_pl.denoisers import TEXT_CONTEXT_FILE, DiffusersUNet
from lotus_pl.export import ALLOWED_SUFFIXES
from lotus_pl.formulations import Deterministic, Generative
from lotus_pl.model import LotusModel
from lotus_pl.tasks import Depth

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
RELEASED = sorted((EXPERIMENTS / "released").glob("*.yaml"))
FORMULATIONS = {8: Generative, 4: Deterministic}


def write_released_folder(folder: Path, tiny_sd: Path, in_channels: int) -> Path:
    """A released-layout folder: the tiny SD VAE and CLIP, a Lotus UNet with ``in_channels`` inputs
    and the task switcher, a DDIM scheduler predicting the sample, and the pipeline index."""
    folder.mkdir(parents=True)
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(tiny_sd / part, folder / part)
    torch.manual_seed(in_channels)
    UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=4,
    ).save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="sample",
                  clip_sample=False, set_alpha_to_one=True).save_pretrained(folder / "scheduler")
    index = {"_class_name": "LotusGPipeline" if in_channels == 8 else "LotusDPipeline", "_diffusers_version": "0.28.0",
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture(scope="session")
def released(tmp_path_factory, tiny_sd) -> dict[int, Path]:
    """Tiny Lotus-G (8-channel conv_in) and Lotus-D (4) folders in the released layout."""
    root = tmp_path_factory.mktemp("released")
    return {c: write_released_folder(root / f"lotus_{'g' if c == 8 else 'd'}", tiny_sd, c) for c in (8, 4)}


def released_model(folder: Path, in_channels: int) -> LotusModel:
    return LotusModel(task=Depth(), denoiser=DiffusersUNet(str(folder)), codec=StableDiffusionVAE(str(folder)),
                      formulation=FORMULATIONS[in_channels](), detail_preserver=True).eval()


@torch.no_grad()
def authors_depth(folder: Path, image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """The released pipeline's depth, step by step with diffusers components: the scaled VAE latent
    (concatenated with noise for Lotus-G), one UNet call at t = 999 with the empty-prompt CLIP context
    and the annotation switch cat(sin([1, 0]), cos([1, 0])), a DDIM step, VAE decode, (mean + 1) / 2."""
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    context = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")(tokenizer("", return_tensors="pt").input_ids)[0]
    switch = torch.tensor([[math.sin(1.0), math.sin(0.0), math.cos(1.0), math.cos(0.0)]])
    latent = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
    unet_input = latent if noise is None else torch.cat([latent, noise], dim=1)
    out = unet(unet_input, 999, encoder_hidden_states=context, class_labels=switch).sample
    if noise is not None:
        scheduler.set_timesteps(1)
        out = scheduler.step(out, 999, noise).prev_sample
    decoded = vae.decode(out / vae.config.scaling_factor).sample
    return ((decoded.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("in_channels", [8, 4], ids=["lotus_g", "lotus_d"])
def test_released_unet_is_loaded_exactly_as_saved(released, in_channels):
    model = released_model(released[in_channels], in_channels)
    saved = load_file(released[in_channels] / "unet" / "diffusion_pytorch_model.safetensors")
    state = model.unet.state_dict()
    assert sorted(state) == sorted(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert model.unet.conv_in.in_channels == in_channels and model.unet.class_embedding.linear_1.in_features == 4


@pytest.mark.parametrize("in_channels", [8, 4], ids=["lotus_g", "lotus_d"])
def test_released_model_predicts_what_the_authors_pipeline_computes(released, in_channels):
    model = released_model(released[in_channels], in_channels)
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = None
    if in_channels == 8:  # Lotus-G starts from the model's seeded noise
        noise = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(model.seed))
    pred = model.predict_image(image)
    expected = authors_depth(released[in_channels], image, noise)
    assert pred.shape == (1, 1, 24, 32) and pred.std() > 1e-4
    torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-6)


def test_released_folder_mismatches_name_the_folder_and_setting(released, tmp_path):
    g, d = released[8], released[4]
    with pytest.raises(ValueError, match=r"conv_in of 8 input channels \(Lotus-G.*asks for 4 input channels \(Lotus-D") as error:
        released_model(g, 4)
    assert str(g / "unet" / "config.json") in str(error.value)
    with pytest.raises(ValueError, match=r"has a task switcher \(projection class embedding of width 4\).*asks for no task switcher"):
        LotusModel(task=Depth(), denoiser=DiffusersUNet(str(d)), codec=StableDiffusionVAE(str(d)), detail_preserver=False)
    with pytest.raises(ValueError, match="predicts 4 latent channels but the codec's latent has 12"):
        LotusModel(task=Depth(), denoiser=DiffusersUNet(str(d)), codec=SpaceToDepth(2), detail_preserver=True)
    with pytest.raises(FileNotFoundError, match=r"missing unet/config.json") as error:
        DiffusersUNet(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(error.value)
    bare = tmp_path / "bare"
    shutil.copytree(d / "unet", bare / "unet")
    with pytest.raises(FileNotFoundError, match=f"{bare} has no text context.*{TEXT_CONTEXT_FILE}"):
        DiffusersUNet(str(bare)).text_context()
    weights = bare / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, weights)
    with pytest.raises(RuntimeError, match=r"bare/unet: the saved weights do not match config.json.*conv_out.weight"):
        DiffusersUNet(str(bare)).build(4, 4, 4)


# ---------------------------------------------------------------------------------- the command line
def write_photos(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)).save(folder / "tall.jpg")
    return {"wide": (30, 44), "tall": (32, 24)}


def predict(configs: list[str], photos: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """``lotus_pl predict`` on ``photos`` into ``out``; the saved float predictions by file name."""
    args = [a for c in configs for a in ("--config", c)]
    main(["predict", *args, f"--data.predict_input={photos}", "--data.num_workers=0", "--data.synthetic=null",
          "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false", f"--trainer.default_root_dir={out}",
          "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
          "--trainer.callbacks+=lotus_pl.callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={out}", *extra])
    return {p.name: np.load(p) for p in sorted(out.glob("*.npy"))}


@pytest.mark.parametrize("config", RELEASED, ids=lambda p: p.stem)
def test_released_configs_predict_with_a_released_layout_folder(config, released, tmp_path):
    raw = yaml.safe_load(config.read_text())["model"]
    expected_folder = raw["denoiser"]["init_args"]["path"]
    assert raw["codec"]["init_args"]["path"] == expected_folder and expected_folder in config.read_text().split("trainer:")[0]
    if raw["task"]["class_path"].endswith("Depth"):  # the release's name says what it predicts
        encoding = raw["task"]["init_args"]["encoding"]["class_path"]
        assert encoding.endswith("NormalizedDisparity" if "disparity" in expected_folder else "NormalizedDepth")
    folder = released[8 if raw["formulation"]["class_path"].endswith("Generative") else 4]
    sizes = write_photos(tmp_path / "photos")
    outputs = predict([str(config)], tmp_path / "photos", tmp_path / "predictions", f"--model.denoiser.init_args.path={folder}",
                      f"--model.codec.init_args.path={folder}", "--model.processing_resolution=32")
    task = "depth" if raw["task"]["class_path"].endswith("Depth") else "normal"
    for stem, size in sizes.items():
        assert outputs[f"{stem}_{task}.npy"].shape[-2:] == size


def test_lotus_pl_test_reports_metrics_for_released_weights(released, tiny_dataset, tmp_path):
    folder = released[8]
    main(["test", "--config", str(EXPERIMENTS / "released" / "lotus_g_depth.yaml"), "--config", str(EXPERIMENTS / "eval" / "synthetic.yaml"),
          f"--model.denoiser.init_args.path={folder}", f"--model.codec.init_args.path={folder}",
          f"--data.test_manifest={tiny_dataset['val']}", "--data.num_workers=0", "--data.eval_batch_size=4",
          "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    results = json.loads((tmp_path / "test_results.json").read_text())
    assert results["task"] == "depth" and results["num_samples"] == 8
    assert 0 < results["metrics"]["abs_rel"] < 10 and 0 <= results["metrics"]["delta1"] <= 1


# ---------------------------------------------------------------------------------- export round trips
def fit_tiny(configs: list[str], extra: list[str], tiny_dataset: dict, run: Path) -> None:
    """Two training steps of the embedded default (``configs`` + ``extra``) at tiny sizes, saving ``last.ckpt``."""
    args = [a for c in configs for a in ("--config", str(EXPERIMENTS / c))]
    args += [f"--data.train_manifest={tiny_dataset['train']}", f"--data.val_manifest={tiny_dataset['val']}",
             "--data.synthetic=null", "--data.num_workers=0", "--data.batch_size=2", "--data.eval_batch_size=4",
             "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={run}", "--trainer.max_steps=2",
             "--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
             "--model.denoiser.cross_attention_dim=16", *extra]
    main(["fit", *args, "--trainer.callbacks=[]", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
          "--trainer.callbacks.save_last=true", f"--trainer.callbacks.dirpath={run / 'checkpoints'}"])


@pytest.mark.parametrize("variant", ["small_unet_space_to_depth_lotus_g", "sd_vae_lotus_d"])
def test_export_round_trip_gives_identical_predictions(variant, tiny_dataset, tiny_sd, tmp_path):
    configs, extra, parts = {
        "small_unet_space_to_depth_lotus_g": (["quickstart.yaml", "variants/quickstart_lotus_g.yaml"], [], {"unet", "scheduler", TEXT_CONTEXT_FILE}),
        "sd_vae_lotus_d": (["quickstart.yaml"], ["--model.codec=lotus_pl.codecs.StableDiffusionVAE", f"--model.codec.path={tiny_sd}",
                                                 "--model.detail_preserver=true"], {"unet", "scheduler", "vae", TEXT_CONTEXT_FILE}),
    }[variant]
    run, out = tmp_path / "run", tmp_path / "exported"
    fit_tiny(configs, extra, tiny_dataset, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["export", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--out", str(out)])  # the run's saved config

    assert {p.name for p in out.iterdir()} == parts | {"model_index.json", "lotus_pl.yaml"}
    assert all(p.name.endswith(ALLOWED_SUFFIXES) for p in out.rglob("*") if p.is_file())
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    exported = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert sorted(f"unet.{k}" for k in exported) == sorted(k for k in trained if k.startswith("unet."))
    assert all(torch.equal(exported[k], trained[f"unet.{k}"]) for k in exported)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LotusPipeline"  # lotus_pl.pipeline, which runs the folder in diffusers
    assert (index["vae"] == ["diffusers", "AutoencoderKL"]) == ("vae" in parts)

    photos = tmp_path / "photos"
    write_photos(photos)
    # the export records the training resolution (32 px) that predictions default to
    assert yaml.safe_load((out / "lotus_pl.yaml").read_text())["model"]["processing_resolution"] == 32
    # native size on both sides. The weights are bit-identical (above); the outputs agree to float
    # rounding (measured up to 2.1e-6 in a fresh environment; a 16-bit PNG step is 1.5e-5)
    # rounding: with peft/accelerate installed (the lora extra) diffusers' from_pretrained model and
    # the config-built one compute ~1e-7 apart
    before = predict([str(run / "config.yaml")], photos, tmp_path / "before", "--ckpt_path", str(ckpt),
                     "--model.processing_resolution=0")
    after = predict([str(out / "lotus_pl.yaml")], photos, tmp_path / "after", "--model.processing_resolution=0")
    assert sorted(before) == sorted(after) and len(before) == 2
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-5, err_msg=name)


def test_export_writes_the_noise_schedule_and_parameterization(tmp_path):
    """ε / v / x0 and zero terminal SNR survive the export: the DDIM config reproduces alpha_bar and
    names the prediction type, and the exported multi-step Lotus-G predicts as the original."""
    from lotus_pl.schedules import NoiseSchedule

    configs = [str(EXPERIMENTS / "quickstart.yaml"), str(EXPERIMENTS / "variants/quickstart_lotus_g.yaml")]
    overrides = ["--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
                 "--model.denoiser.cross_attention_dim=16", "--model.parameterization=lotus_pl.parameterizations.Velocity",
                 "--model.timesteps=lotus_pl.schedules.MultiStep", "--model.timesteps.num_inference_steps=3",
                 "--model.noise_schedule=lotus_pl.schedules.NoiseSchedule", "--model.noise_schedule.zero_terminal_snr=true",
                 "--model.formulation.pure_noise_at_terminal=false", "--model.detail_preserver=true"]
    base = [a for c in configs for a in ("--config", c)] + overrides
    out = tmp_path / "exported"
    main(["export", *base, "--out", str(out)])
    scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.alphas_cumprod, NoiseSchedule(zero_terminal_snr=True).alpha_bar)
    assert scheduler.alphas_cumprod[-1] == 0
    config = yaml.safe_load((out / "lotus_pl.yaml").read_text())["model"]
    assert config["timesteps"]["init_args"]["num_inference_steps"] == 3 and config["detail_preserver"] is True

    photos = tmp_path / "photos"
    write_photos(photos)
    before = predict(configs, photos, tmp_path / "before", *overrides)
    after = predict([str(out / "lotus_pl.yaml")], photos, tmp_path / "after")
    for name in before:  # float rounding apart, as in the round trip above
        np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-5, err_msg=name)


def test_export_of_a_released_folder_and_overwrite_rules(released, tmp_path):
    config = ["--config", str(EXPERIMENTS / "released" / "lotus_d_depth.yaml"), f"--model.denoiser.init_args.path={released[4]}",
              f"--model.codec.init_args.path={released[4]}"]
    out = tmp_path / "exported"
    main(["export", *config, "--out", str(out)])  # no checkpoint: the folder's own weights, re-exported
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        saved, exported = load_file(released[4] / part), load_file(out / part)
        assert sorted(saved) == sorted(exported) and all(torch.equal(saved[k], exported[k]) for k in saved)
    assert (out / "text_encoder").is_dir() and (out / "tokenizer").is_dir() and not (out / TEXT_CONTEXT_FILE).exists()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.equal(released_model(out, 4).predict_image(image), released_model(released[4], 4).predict_image(image))

    with pytest.raises(FileExistsError, match=f"--out {out} is not empty; pass --overwrite"):
        main(["export", *config, "--out", str(out)])
    (out / "stale.txt").write_text("from an earlier export")
    main(["export", *config, "--out", str(out), "--overwrite=true"])
    assert not (out / "stale.txt").exists() and (out / "unet" / "config.json").is_file()
    elsewhere = tmp_path / "notes"
    elsewhere.mkdir()
    (elsewhere / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=f"--out {elsewhere} has files but no model_index.json"):
        main(["export", *config, "--out", str(elsewhere), "--overwrite=true"])
    assert (elsewhere / "todo.txt").read_text() == "keep me"
