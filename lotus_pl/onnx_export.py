"""``lotus_pl export --format onnx``: the whole prediction (encode -> UNet -> decode -> task decoding)
as one ONNX graph for onnxruntime, with dynamic batch, height and width.

The graph takes the image already resized and padded to the model's size multiple (as
``LotusModel.predict_image`` pads it, ``size_multiple`` in ``onnx_model.json``) and, for Lotus-G,
the initial noise on the latent grid; it returns the first task's prediction at the image's size.
Batch, height and width are dynamic axes, so any padded size runs. It is exported with PyTorch's
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, deprecated but kept in torch
2.14): on this project's CPU machine the ``torch.export``-based one (``dynamo=True``, which needs
onnxscript) took 300-570 s for a 0.3M-parameter test model that the TorchScript one exports in 18 s,
with the same parity (2e-6). ``pip install lotus_pl[onnx]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lotus_pl.model import LotusModel

ONNX_FILE = "lotus.onnx"
ONNX_META = "onnx_model.json"


class PredictionGraph(nn.Module):
    """``LotusModel``'s prediction on a padded image, as one traceable module: the codec's encode, the
    formulation's sampling over the model's inference timesteps (one UNet call for the single step),
    the codec's decode and the task's decoding. ``noise`` is Lotus-G's initial latent."""

    def __init__(self, model: LotusModel) -> None:
        super().__init__()
        self.model = model
        self.timesteps = model.timesteps.inference_timesteps(model.noise_schedule.num_train_timesteps)
        self.needs_noise = model.unet.config.in_channels > model.codec.latent_channels

    def forward(self, image: Tensor, noise: Tensor | None = None) -> Tensor:
        model = self.model
        latent = model.codec.encode(image)
        batch = latent.shape[0]
        out = model.formulation.sample(model._denoise(model._switch([0], batch), batch), latent, self.timesteps,
                                       model.noise_schedule, model.parameterization, init_latent=noise)
        return model.tasks[0].decode(model.codec.decode(out).float())

    def example_inputs(self, height: int, width: int, batch: int = 1) -> tuple[Tensor, ...]:
        image = torch.rand(batch, 3, height, width) * 2 - 1
        if not self.needs_noise:
            return (image,)
        f = self.model.codec.downsample
        return image, torch.randn(batch, self.model.codec.latent_channels, height // f, width // f)


def export_onnx(model: LotusModel, out: Path, example_size: int | None = None) -> Path:
    """Write ``out/lotus.onnx`` and ``out/onnx_model.json`` (inputs, size multiple, task); returns the graph file."""
    model = model.eval().float()
    graph = PredictionGraph(model).eval()
    m, f = model.size_multiple, model.codec.downsample
    side = example_size or 2 * m
    inputs = graph.example_inputs(side, side)
    names = ["image", "noise"][: len(inputs)]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "noise": {0: "batch", 2: "latent_height", 3: "latent_width"}}
    file = Path(out) / ONNX_FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False: see the module docstring
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(graph, inputs, str(file), dynamo=False, input_names=names, output_names=["prediction"],
                          dynamic_axes={n: axes[n] for n in names}, opset_version=17)
    meta = {
        "inputs": {"image": "[B, 3, H, W] in [-1, 1], RGB; H and W multiples of size_multiple (pad by edge replication)",
                   **({"noise": f"[B, {model.codec.latent_channels}, H / {f}, W / {f}] standard normal (Lotus-G's initial latent)"}
                      if graph.needs_noise else {})},
        "output": f"prediction [B, C, H, W] of task {type(model.tasks[0]).__name__} (lotus_pl's decoding)",
        "size_multiple": m, "latent_factor": f, "latent_channels": model.codec.latent_channels,
        "timesteps": graph.timesteps, "processing_resolution": int(model.inference_resolution), "seed": model.seed,
        "task": f"{type(model.tasks[0]).__module__}.{type(model.tasks[0]).__name__}",
    }
    (Path(out) / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n")
    return file
