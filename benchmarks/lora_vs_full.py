#!/usr/bin/env python
"""LoRA against full fine-tuning of the UNet: trainable parameters, step time and peak memory.

The UNet has the SD2 architecture (4 levels, cross-attention in the first three, 2 resnets per
level, linear projections, 1024-wide context, the 8-channel Lotus-G ``conv_in`` and the task
switcher's class embedding) with its widths divided by ``--width-divisor`` (5 by default:
(64, 128, 256, 256) instead of (320, 640, 1280, 1280)) so that it trains on this CPU; on a GPU
pass ``--width-divisor 1`` for the exact SD2 size. Each mode runs in a fresh process: Lotus-G,
x0, detail preserver, the lossless SpaceToDepth codec replaced by a 4-channel latent of the
same grid (random latents: the codec does not train), AdamW, batch 2; the step time is the median
of the timed steps after a warm-up, peak memory the process's resident-set high-water mark
(``VmHWM``, CPU) or ``torch.cuda.max_memory_allocated`` (GPU) over the training steps.

    python benchmarks/lora_vs_full.py [--width-divisor 5] [--latent 32] [--steps 4] [--rank 8] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def sd2_unet_config(divisor: int) -> dict[str, Any]:
    """SD2(-base)'s UNet config with the widths (and head dims) divided by ``divisor``, Lotus-G inputs."""
    return dict(sample_size=96, in_channels=8, out_channels=4, layers_per_block=2,
                block_out_channels=tuple(c // divisor for c in (320, 640, 1280, 1280)),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                attention_head_dim=tuple(max(h // divisor, 1) for h in (5, 10, 20, 20)), cross_attention_dim=1024,
                use_linear_projection=True, norm_num_groups=32,
                class_embed_type="projection", projection_class_embeddings_input_dim=4)


def _vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_mode(mode: str, divisor: int, latent: int, steps: int, rank: int) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd2_unet_config(divisor))
    total = sum(p.numel() for p in unet.parameters())
    if mode == "lora":  # as lotus_pl.lora.LoRA configures it
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), "lotus_lora")
        for name, p in unet.named_parameters():
            if name.startswith(("conv_in.", "class_embedding.")):
                p.requires_grad_(True)
    unet.to(device).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = 2 * 2  # 2 images x (annotation + detail-preserver reconstruction)
    x = torch.randn(batch, 8, latent, latent, device=device)
    target = torch.randn(batch, 4, latent, latent, device=device)
    context = torch.randn(batch, 2, 1024, device=device)
    labels = torch.randn(batch, 4, device=device)
    t = torch.full((batch,), 999, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=context, class_labels=labels).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step is a warm-up (allocations, optimizer state)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _vmhwm_mib()
    return {"mode": mode, "device": device.type, "unet_params": total, "trainable_params": sum(p.numel() for p in params),
            "step_s": times, "median_step_s": statistics.median(times), "peak_mib": peak,
            "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process VmHWM (whole process)"}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-divisor", type=int, default=5)
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_mode(args.child, args.width_divisor, args.latent, args.steps, args.rank)))
        return {}
    results = {}
    for mode in ("full", "lora"):  # fresh processes: each peak is its own
        command = [sys.executable, __file__, "--child", mode, "--width-divisor", str(args.width_divisor),
                   "--latent", str(args.latent), "--steps", str(args.steps), "--rank", str(args.rank)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode}: {results[mode]['trainable_params']:,} trainable of {results[mode]['unet_params']:,}, "
              f"step {results[mode]['median_step_s']:.3f} s, peak {results[mode]['peak_mib']:.0f} MiB", flush=True)
    full, lora = results["full"], results["lora"]
    summary = {"config": {**vars(args), "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in sd2_unet_config(args.width_divisor).items()}},
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
               "results": results, "trainable_fraction_lora": lora["trainable_params"] / lora["unet_params"],
               "step_time_ratio_lora_over_full": lora["median_step_s"] / full["median_step_s"],
               "peak_ratio_lora_over_full": lora["peak_mib"] / full["peak_mib"]}
    print(f"LoRA / full: step time {summary['step_time_ratio_lora_over_full']:.2f}x, peak {summary['peak_ratio_lora_over_full']:.2f}x, "
          f"trainable {summary['trainable_fraction_lora']:.4f} of the UNet", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
