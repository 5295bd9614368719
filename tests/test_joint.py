"""Joint estimation: one UNet, N tasks (+ reconstruction) behind the task switcher; every task
trained in one step, predicted in one run, scored where its ground truth exists; Lotus-G video mode."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lotus_pl.cli import main
from lotus_pl.formulations import Generative
from lotus_pl.model import task_switch
from lotus_pl.tasks import Albedo, Depth, Normal

from test_cli import checkpoint_every, tiny_overrides
from test_model import fake_batch, make_model


def joint_batch(batch_size=2, size=16):
    batch = fake_batch(batch_size, size)
    batch["albedo"] = torch.rand(batch_size, 3, size, size) * 2 - 1
    return batch


class UNetSpy:
    """Record the UNet's inputs while it runs."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        self.calls.append({"sample": args[0], "class_labels": kwargs["class_labels"]})


@pytest.mark.parametrize("detail_preserver", [False, True])
def test_one_step_trains_every_task_through_its_switch(detail_preserver):
    model = make_model(task=[Depth(), Normal(), Albedo(loss_weight=0.5)], detail_preserver=detail_preserver)
    states = 3 + int(detail_preserver)
    assert model.num_switch_states == states
    assert model.unet.config.projection_class_embeddings_input_dim == 2 * states
    spy = UNetSpy(model)
    batch = joint_batch()
    loss = model.training_step(batch, 0)
    loss.backward()
    (call,) = spy.calls
    assert call["sample"].shape[0] == 2 * states  # one copy of the batch per task (+ reconstruction)
    expected = torch.cat([task_switch(i, states, 2, model.device) for i in range(states)])
    torch.testing.assert_close(call["class_labels"], expected)
    assert model.unet.class_embedding.linear_1.weight.grad.abs().sum() > 0


def test_loss_is_the_weighted_sum_of_the_task_losses(monkeypatch):
    model = make_model(task=[Depth(), Albedo(loss_weight=0.25)])
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    torch.manual_seed(0)
    loss = model.training_step(joint_batch(), 0)
    assert set(logged) == {"train/loss_depth", "train/loss_albedo", "train/loss"}
    assert float(loss) == pytest.approx(logged["train/loss_depth"] + 0.25 * logged["train/loss_albedo"], rel=1e-6)


def test_training_without_a_tasks_ground_truth_names_it():
    model = make_model(task=[Depth(), Albedo()])
    with pytest.raises(KeyError, match="albedo"):
        model.training_step(fake_batch(), 0)


def test_predict_all_equals_one_call_per_switch():
    """Batching the tasks into one UNet call gives each task what its own switch gives."""
    model = make_model(task=[Depth(), Normal(), Albedo()]).eval()
    image = torch.rand(2, 3, 20, 28) * 2 - 1
    preds = model.predict_all(image)
    assert preds["depth"].shape == (2, 1, 20, 28) and preds["normal"].shape == (2, 3, 20, 28)
    assert preds["albedo"].shape == (2, 3, 20, 28)
    torch.testing.assert_close(model.predict_image(image), preds["depth"])
    assert 20 % model.size_multiple == 0 and 28 % model.size_multiple == 0  # no padding to undo
    latent = model.codec.encode(image)
    for index, task in enumerate(model.tasks):
        labels = task_switch(index, 3, 2, model.device)
        out = model.unet(latent, 999, encoder_hidden_states=model.text_context.expand(2, -1, -1), class_labels=labels).sample
        alone = task.decode(model.codec.decode(out))
        torch.testing.assert_close(preds[task.name], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(preds["normal"], preds["normal"].roll(1, dims=1))  # not a constant


def test_single_and_joint_names():
    joint = make_model(task=[Depth(), Normal()])
    with pytest.raises(RuntimeError, match="model.tasks"):
        joint.task
    assert joint.metric_prefix(joint.tasks[1]) == "normal/"
    single = make_model()
    assert single.task.name == "depth" and single.metric_prefix(single.task) == "" and single.num_switch_states == 0
    with pytest.raises(ValueError, match="distinct"):
        make_model(task=[Depth(), Depth()])


def test_evaluation_scores_only_tasks_with_ground_truth():
    model = make_model(task=[Depth(), Normal()]).eval()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    batch = fake_batch(2, 16)
    del batch["normal"]  # a depth benchmark
    model.validation_step(batch, 1)
    model.on_validation_epoch_end()
    assert "val/depth/abs_rel" in logged and not any(k.startswith("val/normal") for k in logged)


def test_joint_fit_reports_and_predicts_every_task(tiny_dataset, tiny_sd, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(["experiments/quickstart.yaml", "experiments/variants/quickstart_joint.yaml"], tiny_dataset, tiny_sd, run)
    main(["fit", *args, *checkpoint_every(1)])
    report = json.loads((run / "learning_report.json").read_text())
    assert report["headline"] == ["depth/abs_rel", "normal/mean", "albedo/si_mse"]  # what sweeps tabulate
    for key in ("depth/abs_rel", "normal/mean", "albedo/si_mse", "albedo/lmse"):
        assert key in report["trained"] and key in report["untrained"] and key in report["mean_target"]
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(photos / "a.png")
    out = tmp_path / "predictions"
    main(["predict", *args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), f"--data.predict_input={photos}",
          f"--trainer.callbacks.output_dir={out}"])
    assert np.load(out / "a_depth.npy").shape == (20, 30)
    assert np.load(out / "a_normal.npy").shape == (3, 20, 30)
    assert np.load(out / "a_albedo.npy").shape == (3, 20, 30)
    assert (out / "a_albedo.png").is_file() and (out / "a_normal.png").is_file() and (out / "a_depth.png").is_file()


def test_video_init_starts_each_frame_from_the_previous_one():
    model = make_model(formulation=Generative(), video_init=True).eval()
    frames = [torch.rand(1, 3, 16, 16) * 2 - 1 for _ in range(3)]

    def frame(i, sequence="clip.mp4"):
        return {"image": frames[i], "path": [f"{sequence}#{i:06d}"], "sequence": [sequence]}

    first = model.predict_step(frame(0), 0)["depth"]
    torch.testing.assert_close(first, model.predict_image(frames[0]))  # nothing before it: plain sampling
    _, latents = model._predict_at(frames[0], 0)
    second = model.predict_step(frame(1), 1)["depth"]
    expected, _ = model._predict_at(frames[1], 0, previous=latents)
    torch.testing.assert_close(second, expected["depth"])
    assert not torch.allclose(second, model.predict_image(frames[1]))  # the previous frame mattered
    other = model.predict_step(frame(2, "other.mp4"), 2)["depth"]  # a new sequence starts afresh
    torch.testing.assert_close(other, model.predict_image(frames[2]))
    with pytest.raises(ValueError, match="Deterministic"):
        make_model(video_init=True)
