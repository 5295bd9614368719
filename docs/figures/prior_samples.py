"""Figure: DDIM samples of exported priors, one row each, under a row of real pretraining scenes.

    python docs/figures/prior_samples.py --out docs/figures/prior_samples.png \\
        --prior "ε, 32 wide=priors/embedded64_first32" --prior "v, 48 wide=priors/embedded64"

Each ``--prior label=folder`` is a ``lotus_pl prior fit`` export (Stable Diffusion layout); it is
sampled with its own scheduler (50 DDIM steps, trailing spacing, from the same seeded noise) and
decoded with the codec its ``model_index.json`` records. Labels are printed, top row first.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torchvision
import webdataset as wds
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

from lotus_pl.codecs import Codec
from lotus_pl.denoisers import empty_prompt_embedding


def codec_of(folder: Path) -> Codec:
    """The codec the export's ``model_index.json`` records (``class_path`` + ``init_args``)."""
    spec = json.loads((folder / "model_index.json").read_text())["lotus_pl_codec"]
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


@torch.no_grad()
def samples(folder: Path, num: int, steps: int, seed: int, image_size: int) -> torch.Tensor:
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(steps)
    context = empty_prompt_embedding(folder).expand(num, -1, -1)
    codec = codec_of(folder)
    shape = codec.encode(torch.zeros(1, 3, image_size, image_size)).shape[1:]
    x = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t.expand(num), encoder_hidden_states=context).sample, t, x).prev_sample
    return (codec.decode(x).clamp(-1, 1) + 1) / 2


def real(shard: str, num: int) -> torch.Tensor:
    images = []
    for sample in wds.WebDataset(shard, shardshuffle=False):
        rgb = np.array(Image.open(io.BytesIO(sample["rgb.png"])).convert("RGB"))
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
        if len(images) == num:
            break
    return torch.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", action="append", required=True, help="label=export folder, top to bottom")
    parser.add_argument("--real", default="data/prior64/val-000000.tar", help="a shard of the pretraining scenes")
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [real(args.real, args.num)]
    print("row 1: real pretraining scenes")
    for i, spec in enumerate(args.prior, start=2):
        label, _, folder = spec.partition("=")
        rows.append(samples(Path(folder), args.num, args.steps, args.seed, rows[0].shape[-1]))
        print(f"row {i}: {label} ({folder})")
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=args.num, padding=2, pad_value=1.0)
    grid = grid.repeat_interleave(args.scale, -1).repeat_interleave(args.scale, -2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
