"""How well an exported prior denoises: its x0 estimate's error at several timesteps, and how much of
that error is the noise itself passed through (the "leak"), on held-out pretraining scenes.

    python docs/ablations/prior_denoising.py priors/embedded64 priors/embedded64_unit_latents \\
        --out docs/ablations/prior_denoising.json

For x_t = sqrt(abar) x0 + sqrt(1 - abar) eps the prior's output is turned into an x0 estimate with its
own parameterization (the export's scheduler ``prediction_type``). Reported per t: the x0 error's
mean square relative to the latents' variance (1 = no better than predicting the mean), and the leak
coefficient: the regression of the error on eps, divided by the latents' standard deviation (the
noise left in the estimate, in units of the signal: 0 = none; a denoiser that only rescales x_t
leaves sqrt(1 - abar) / sqrt(abar) / std of it).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "figures"))
from prior_samples import codec_of  # noqa: E402  (the export's codec, as the sample figure decodes it)

from lotus_pl.denoisers import empty_prompt_embedding  # noqa: E402

TIMESTEPS = (999, 700, 500, 300, 100, 20)


def held_out(shard: str, num: int) -> torch.Tensor:
    images = []
    for sample in wds.WebDataset(shard, shardshuffle=False):
        rgb = np.array(Image.open(io.BytesIO(sample["rgb.png"])).convert("RGB"))
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1)
        if len(images) == num:
            break
    return torch.stack(images)


@torch.no_grad()
def denoising(folder: Path, images: torch.Tensor, seed: int = 0) -> list[dict]:
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    kind = scheduler.config.prediction_type
    x0 = codec_of(folder).encode(images)
    variance = x0.var().item()
    context = empty_prompt_embedding(folder).expand(len(x0), -1, -1)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in TIMESTEPS:
        eps = torch.randn(x0.shape, generator=generator)
        a = scheduler.alphas_cumprod[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        out = unet(xt, torch.full((len(x0),), t), encoder_hidden_states=context).sample
        if kind == "v_prediction":
            estimate = a.sqrt() * xt - (1 - a).sqrt() * out
        elif kind == "epsilon":
            estimate = (xt - (1 - a).sqrt() * out) / a.sqrt()
        else:
            estimate = out
        error = estimate - x0
        rows.append({"t": t, "x0_mse_over_variance": error.pow(2).mean().item() / variance,
                     "leak": ((error * eps).mean() / eps.pow(2).mean()).item() / variance**0.5,
                     "latent_variance": variance})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("priors", nargs="+", help="export folders")
    parser.add_argument("--shard", default="data/prior64/val-000000.tar", help="held-out pretraining scenes")
    parser.add_argument("--num", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = held_out(args.shard, args.num)
    result = {}
    for folder in args.priors:
        result[folder] = denoising(Path(folder), images)
        print(folder)
        for row in result[folder]:
            print(f"  t={row['t']:4d}: x0 MSE / variance {row['x0_mse_over_variance']:.3f}, leak {row['leak']:+.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
