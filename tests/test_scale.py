"""Training and inference at scale, on CPU: checkpointing, channels-last, SDPA, mixed precision,
gradient accumulation, EMA, tiled inference, FSDP; torch.compile in the slow set."""

import subprocess
import sys

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from lotus_pl.cli import main
from lotus_pl.tasks import Depth, Normal

from test_cli import checkpoint_every, last_step, tiny_overrides
from test_model import fake_batch, make_model


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = make_model(), make_model(gradient_checkpointing=True)
    assert checkpointed.unet.is_gradient_checkpointing and not plain.unet.is_gradient_checkpointing
    batch = fake_batch()
    for model in (plain, checkpointed):
        torch.manual_seed(0)
        model.training_step(batch, 0).backward()
    for a, b in zip(plain.unet.parameters(), checkpointed.unet.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_channels_last_matches_default_and_attention_is_sdpa():
    default, channels_last = make_model().eval(), make_model(channels_last=True).eval()
    assert default.unet.conv_in.weight.is_contiguous() and channels_last.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    torch.testing.assert_close(channels_last.predict_image(image), default.predict_image(image), rtol=1e-4, atol=1e-5)
    processors = default.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)  # torch SDPA


@pytest.mark.parametrize("task", [Depth(), Normal()], ids=["depth", "normal"])
def test_tiled_inference_aligns_and_blends_tiles(task):
    """Tiles predicted up to a different scale and shift each are put back exactly onto the global prediction."""
    model = make_model(task=task, processing_resolution=16, tile_size=16, tile_overlap=6).eval()
    channels = 1 if isinstance(task, Depth) else 3
    field = torch.rand(1, channels, 40, 56)
    if isinstance(task, Normal):
        field = torch.nn.functional.normalize(field - 0.5, dim=1)
    calls = []

    def fake_predict_at(image, resolution):  # -> ({task: prediction}, latents)
        calls.append((tuple(image.shape[-2:]), resolution))
        if resolution:  # the whole image: the reference
            return {task.name: field}, []
        top, left = int(image[0, 0, 0, 0]), int(image[0, 1, 0, 0])  # the window's position, encoded below
        tile = field[..., top:top + image.shape[-2], left:left + image.shape[-1]]
        return {task.name: tile * 2.5 + 0.3 if isinstance(task, Depth) else tile}, []

    model._predict_at = fake_predict_at
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(56.0), indexing="ij")
    image = torch.stack([rows, cols, torch.zeros_like(rows)])[None]
    out = model.predict_image(image)
    torch.testing.assert_close(out, field, rtol=1e-4, atol=1e-5)
    tiles = [c for c in calls if c[1] == 0]
    # stride 10, last tile flush with the border: rows 0, 10, 20, 24; columns 0, 10, 20, 30, 40
    assert len(tiles) == 4 * 5 and all(shape == (16, 16) for shape, _ in tiles)


def test_tiled_inference_runs_the_real_model():
    model = make_model(processing_resolution=16, tile_size=16, tile_overlap=4).eval()
    out = model.predict_image(torch.rand(1, 3, 30, 44) * 2 - 1)
    assert out.shape == (1, 1, 30, 44) and torch.isfinite(out).all()


@pytest.mark.parametrize("extra", [
    ["--trainer.precision=bf16-mixed"],
    ["--trainer.accumulate_grad_batches=2", "--trainer.max_steps=2"],
    ["--model.gradient_checkpointing=true", "--model.channels_last=true"],
], ids=["bf16", "accumulate", "checkpointing+channels_last"])
def test_training_switches_through_the_cli(extra, tiny_dataset, tiny_sd, tmp_path):
    args = tiny_overrides(["experiments/quickstart.yaml"], tiny_dataset, tiny_sd, tmp_path)
    main(["fit", *args, *checkpoint_every(1), *extra])
    assert last_step(tmp_path) == 2


def test_bf16_predict_is_close_to_fp32(tiny_dataset, tiny_sd, tmp_path):
    model = make_model().eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    reference = model.predict_image(image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.predict_image(image)
    assert low.dtype == torch.float32 and (low - reference).abs().max() < 0.05


def test_ema_weights_differ_and_are_reported(tiny_dataset, tiny_sd, tmp_path):
    import json

    args = tiny_overrides(["experiments/quickstart.yaml", "experiments/variants/quickstart_ema.yaml"], tiny_dataset, tiny_sd, tmp_path)
    main(["fit", *args, "--trainer.max_steps=4"])
    report = json.loads((tmp_path / "learning_report.json").read_text())
    assert report["trained_raw_weights"] != report["trained"]  # the average is not the last weights


def test_fsdp_variant_configures_sharding(capsys):
    """Lightning's FSDP needs CUDA; on CPU we check the variant resolves (the GPU test below trains with it)."""
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", "--config", "experiments/lotus_d_depth.yaml", "--config", "experiments/variants/gpu/fsdp.yaml", "--print_config"])
    strategy = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    assert strategy["init_args"]["sharding_strategy"] == "FULL_SHARD"
    assert "diffusers.models.unets.unet_2d_blocks.CrossAttnDownBlock2D" in strategy["init_args"]["auto_wrap_policy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP strategy needs CUDA")
def test_fsdp_fit_on_gpu(tiny_dataset, tiny_sd, tmp_path):
    args = tiny_overrides(["experiments/quickstart.yaml", "experiments/variants/gpu/fsdp.yaml"], tiny_dataset, tiny_sd, tmp_path)
    main(["fit", *args, "--trainer.accelerator=gpu", "--trainer.devices=1", *checkpoint_every(1)])
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_compiled_unet_matches_eager():
    eager, compiled = make_model().eval(), make_model(compile_unet=True).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(compiled.predict_image(image), eager.predict_image(image), rtol=1e-3, atol=1e-4)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # in-place compile keeps checkpoint keys
