"""LoRA fine-tuning (``lotus_pl.lora.LoRA``, peft): loss falls, only the adapters and the layers
kept trainable change, and checkpoints and exports (merged or separate) predict like the tuned model."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from lotus_pl.export import build_model, export_model
from lotus_pl.lora import LORA_SUBFOLDER
from lotus_pl.pipeline import LotusPipeline
from test_model import fake_batch


CONFIG = {
    "task": {"class_path": "lotus_pl.tasks.Depth"},
    "denoiser": {"class_path": "lotus_pl.lora.LoRA", "init_args": {
        "denoiser": {"class_path": "lotus_pl.denoisers.SmallUNet", "init_args": {
            "block_out_channels": [16, 32], "cross_attention": [False, True], "attention_head_dim": 8, "cross_attention_dim": 16}},
        "rank": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"], "trainable": ["conv_in", "class_embedding"]}},
    "codec": {"class_path": "lotus_pl.codecs.SpaceToDepth", "init_args": {"factor": 2}},
    "formulation": {"class_path": "lotus_pl.formulations.Generative"},
    "detail_preserver": True,
    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}},
}


def train(model, steps: int) -> list[float]:
    optimizer = model.configure_optimizers()
    batch = fake_batch(4, 16)
    losses = []
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = model.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.fixture(scope="module")
def tuned():
    """The LoRA model before and after 25 AdamW steps on one batch."""
    model, denoiser = build_model(copy.deepcopy(CONFIG))
    model.log = lambda *args, **kwargs: None  # no Trainer attached
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    losses = train(model, 25)
    return model.eval(), denoiser, before, losses


def test_lora_trains_only_the_adapters_and_the_layers_kept_trainable(tuned):
    model, _, before, losses = tuned
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5]), losses
    trainable = {n for n, p in model.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("conv_in.", "class_embedding.")) for n in trainable)
    assert {"conv_in.weight", "conv_in.bias", "class_embedding.linear_1.weight"} <= trainable
    assert any(".to_q.lora_A." in n for n in trainable) and any(".to_out.0.lora_B." in n for n in trainable)
    changed = {n for n, v in model.unet.state_dict().items() if not torch.equal(v, before[n])}
    assert changed == trainable  # every trained tensor moved (AdamW), nothing else did
    frozen = [n for n in before if n not in trainable]
    assert any(".to_q.base_layer.weight" in n for n in frozen)
    assert all(torch.equal(model.unet.state_dict()[n], before[n]) for n in frozen)
    optimizer = model.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.unet.parameters() if p.requires_grad)


def test_lora_checkpoint_and_exports_predict_like_the_tuned_model(tuned, tmp_path):
    model, denoiser, _, _ = tuned
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    expected = model.predict_image(image)

    reloaded, _ = build_model(copy.deepcopy(CONFIG))  # a checkpoint: adapters kept separate in the state dict
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded.eval().predict_image(image), expected)

    for way in ("merged", "separate"):
        folder = export_model(model, copy.deepcopy(CONFIG), denoiser, tmp_path / way, lora=way)
        assert (folder / LORA_SUBFOLDER).is_dir() == (way == "separate")
        saved = yaml.safe_load((folder / "lotus_pl.yaml").read_text())["model"]
        assert saved["denoiser"]["init_args"].get("lora_subfolder") == (LORA_SUBFOLDER if way == "separate" else None)
        exported, _ = build_model(saved)
        assert any("lora_A" in n for n, _ in exported.unet.named_parameters()) == (way == "separate")
        torch.testing.assert_close(exported.eval().predict_image(image), expected, rtol=0, atol=2e-6)
    pipe = LotusPipeline.from_pretrained(tmp_path / "merged", default_processing_resolution=0)
    torch.testing.assert_close(pipe((image + 1) / 2, output_type="pt").prediction, expected, rtol=0, atol=2e-6)


def test_lora_config_errors_name_the_setting():
    bad = copy.deepcopy(CONFIG)
    bad["denoiser"]["init_args"]["trainable"] = ["conv_in", "conv_inn"]
    with pytest.raises(ValueError, match="LoRA trainable prefix 'conv_inn' matches no UNet parameter"):
        build_model(bad)
    bad["denoiser"]["init_args"]["trainable"] = ["conv_in"]
    bad["denoiser"]["init_args"]["target_modules"] = ["to_nothing"]
    with pytest.raises(ValueError, match=r"LoRA target_modules \['to_nothing'\] match no module"):
        build_model(bad)
