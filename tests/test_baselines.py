"""The timm baseline: built from config offline, called like the UNet, conditioned by the task switch,
checkpointed, loaded from a local weights file, trained inside LotusModel, and shipped in a variant
config and the denoiser ablation spec."""

from pathlib import Path

import pytest
import torch
import yaml

from lotus_pl.baselines import TimmDenseRegressor, TimmRegressor
from lotus_pl.codecs import SpaceToDepth
from lotus_pl.model import LotusModel, task_switch
from lotus_pl.sweep import SweepSpec, expand
from lotus_pl.tasks import Depth

ROOT = Path(__file__).resolve().parents[1]
# A ConvNeXt of the real layout, shrunk to milliseconds: stages at strides 1, 2, 4, 8 of the latent.
TINY_CONVNEXT = dict(encoder="convnext_atto", encoder_kwargs=dict(patch_size=1, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)),
                     decoder_channels=16)


def test_builds_offline_and_declares_its_stride():
    unet = TimmRegressor(**TINY_CONVNEXT).build(12, 4, 0)
    assert isinstance(unet, TimmDenseRegressor)
    assert unet.size_multiple == 8
    assert unet.encoder.feature_info.channels() == [8, 16, 24, 32]
    stock = TimmRegressor("convnext_atto", decoder_channels=16).build(12, 4, 0)  # stem patchifies by 4
    assert stock.size_multiple == 32
    # Same config, same initial weights (seeded), whatever the global RNG did in between.
    torch.manual_seed(123)
    again = TimmRegressor(**TINY_CONVNEXT).build(12, 4, 0)
    for a, b in zip(unet.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("in_channels,out_channels,size", [(48, 48, 16), (96, 48, 24), (12, 3, 8), (4, 4, 32)])
def test_output_has_the_latent_shape(in_channels, out_channels, size):
    unet = TimmRegressor(**TINY_CONVNEXT).build(in_channels, out_channels, 0)
    x = torch.randn(2, in_channels, size, size + 8)
    out = unet(x, 999, encoder_hidden_states=torch.zeros(2, 1, 1)).sample
    assert out.shape == (2, out_channels, size, size + 8) and torch.isfinite(out).all()


def test_vit_encoder_through_forward_intermediates():
    factory = TimmRegressor("vit_tiny_patch16_224", encoder_kwargs=dict(patch_size=2, img_size=16, dynamic_img_size=True,
                                                                        depth=2, embed_dim=32, num_heads=2, out_indices=(0, 1)),
                             decoder_channels=16)
    unet = factory.build(48, 48, 0)
    assert unet.size_multiple == 2
    assert unet(torch.randn(1, 48, 16, 20), 999).sample.shape == (1, 48, 16, 20)


def test_task_switch_changes_the_output_and_is_required():
    unet = TimmRegressor(**TINY_CONVNEXT).build(12, 12, 4)
    x = torch.randn(1, 12, 16, 16)
    depth = unet(x, 999, class_labels=task_switch(0, 2, 1, "cpu")).sample
    rgb = unet(x, 999, class_labels=task_switch(1, 2, 1, "cpu")).sample
    assert (depth - rgb).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="class_labels are required"):
        unet(x, 999)
    with pytest.raises(ValueError, match="without a task switch"):
        TimmRegressor(**TINY_CONVNEXT).build(12, 12, 0)(x, 999, class_labels=task_switch(0, 2, 1, "cpu"))


def test_bad_config_and_input_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'convnext_atoo' is not a timm model"):
        TimmRegressor("convnext_atoo")
    with pytest.raises(FileNotFoundError, match="pretrained_file .*missing.pth"):
        TimmRegressor(pretrained_file=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        TimmRegressor(decoder_channels=20, norm_groups=8)
    unet = TimmRegressor(**TINY_CONVNEXT).build(12, 12, 0)
    with pytest.raises(ValueError, match="12×16 is not a multiple of the encoder's stride 8"):
        unet(torch.randn(1, 12, 12, 16), 999)


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    x = torch.randn(2, 12, 16, 16)
    grads, calls = [], []
    for checkpointing in (False, True):
        unet = TimmRegressor(**TINY_CONVNEXT).build(12, 12, 4)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        count = [0]
        unet.encoder.stages_1.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        unet(x, 999, class_labels=task_switch(0, 2, 2, "cpu")).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters()})
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed stage ran again in the backward pass
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_local_weights_file_loads_with_other_input_channels(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("convnext_atto", in_chans=3, **TINY_CONVNEXT["encoder_kwargs"])
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()  # unlike any fresh initialisation
    path = tmp_path / f"weights.{suffix}"
    (save_file if suffix == "safetensors" else torch.save)(source.state_dict(), str(path))
    unet = TimmRegressor(**TINY_CONVNEXT, pretrained_file=str(path)).build(48, 48, 0)
    torch.testing.assert_close(unet.encoder.stages_2.blocks[0].conv_dw.weight, source.stages[2].blocks[0].conv_dw.weight)
    stem = unet.encoder.stem_0.weight
    assert stem.shape == (8, 48, 1, 1)  # timm adapted the 3-channel stem to the latent's 48 channels
    torch.testing.assert_close(stem[:, :3], source.stem[0].weight * 3 / 48)
    fresh = TimmRegressor(**TINY_CONVNEXT).build(48, 48, 0)
    assert not torch.equal(fresh.encoder.stages_2.blocks[0].conv_dw.weight, source.stages[2].blocks[0].conv_dw.weight)
    other = TimmRegressor("convnext_atto", encoder_kwargs=dict(TINY_CONVNEXT["encoder_kwargs"], patch_size=4), pretrained_file=str(path))
    with pytest.raises(RuntimeError, match="does not fit convnext_atto"):
        other.build(48, 48, 0)


@pytest.mark.parametrize("detail_preserver", [False, True])
def test_lotus_model_trains_and_predicts_odd_sizes(detail_preserver):
    model = LotusModel(task=Depth(), denoiser=TimmRegressor(**TINY_CONVNEXT), codec=SpaceToDepth(2),
                       detail_preserver=detail_preserver, gradient_checkpointing=True, channels_last=True)
    assert model.size_multiple == 16  # codec 2 × encoder stride 8
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, "depth": torch.rand(2, 1, 32, 32, generator=gen) + 0.5}
    optimizer = model.configure_optimizers()
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    optimizer.step()
    changed = [n for n, p in model.unet.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("encoder.") for n in changed) and any(n.startswith("out.") for n in changed)
    model.eval()
    pred = model.predict_image(torch.rand(1, 3, 21, 30) * 2 - 1)  # padded to 32 × 32, cropped back
    assert pred.shape == (1, 1, 21, 30) and torch.isfinite(pred).all()


def test_variant_config_swaps_only_the_denoiser(capsys):
    from lotus_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--config", str(ROOT / "experiments/variants/quickstart_timm.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert printed["denoiser"]["class_path"] == "lotus_pl.baselines.TimmRegressor"
    assert printed["denoiser"]["init_args"]["encoder_kwargs"] == {"patch_size": 1}
    assert printed["formulation"]["class_path"] == "lotus_pl.formulations.Deterministic"
    assert printed["optimizer"]["init_args"]["lr"] == 3.0e-4  # the quickstart's
    built = TimmRegressor(**printed["denoiser"]["init_args"]).build(48, 48, 0)
    assert 3.5e6 < sum(p.numel() for p in built.parameters()) < 4.5e6  # about the SmallUNet's 3.9M


def test_denoiser_ablation_puts_the_baseline_beside_lotus_g_and_d(tmp_path):
    spec = SweepSpec.load(ROOT / "experiments/ablations/embedded_denoiser.yaml")
    spec.output_dir = str(tmp_path / "sweep")
    runs = expand(spec)["runs"]
    labels = list(dict.fromkeys(r["label"] for r in runs))
    assert len(labels) == 3 and len(runs) == 3 * len(spec.seeds)
    assert labels[0] == "denoiser=SmallUNet,formulation=Deterministic"
    assert labels[1] == "denoiser=SmallUNet,formulation=Generative-pure_noise_at_terminal=True"
    assert labels[2].startswith("denoiser=TimmRegressor-encoder=convnext_atto") and labels[2].endswith("formulation=Deterministic")
    timm_run = yaml.safe_load((Path(runs[-1]["dir"]) / "overrides.yaml").read_text())
    assert timm_run["model"]["denoiser"]["init_args"]["encoder_kwargs"] == {"patch_size": 1}
