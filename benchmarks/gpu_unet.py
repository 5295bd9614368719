#!/usr/bin/env python
"""GPU benchmark of the Stable Diffusion 2 UNet as Lotus uses it.

Builds a *randomly initialised* ``diffusers.UNet2DConditionModel`` with the
exact architecture of Stable Diffusion 2-base (plus Lotus' task-switcher
``class_embed_type="projection"`` with a 4-d input) and measures

* training step time (forward + MSE loss + backward + grad clip 1.0 + AdamW
  step, bf16 autocast over fp32 master weights) and peak GPU memory at
  576x768 px (latent 72x96) for several batch sizes, with and without
  gradient checkpointing; OOM is caught and recorded;
* single-step inference latency (one UNet call at t=999, batch 1) at
  768x768 px (latent 96x96) in fp32 and bf16, eager and ``torch.compile``d.

Results go to a JSON file (``--out``, ``{card}`` in the path is replaced by
a short slug of the device name, e.g. ``h100``) that is rewritten after every
measurement, so a run cut short still leaves what it measured. A compact
table is printed at the end.

No weights are downloaded: timing and memory do not depend on the values.

Examples::

    python benchmarks/gpu_unet.py --out docs/benchmarks/gpu_unet_{card}.json
    python benchmarks/gpu_unet.py --device cpu --tiny --no-compile --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# model configurations
# --------------------------------------------------------------------------------------

LATENT_DOWNSCALE = 8  # SD VAE: 8x spatial downsampling


def sd2_unet_config(in_channels: int = 8) -> dict[str, Any]:
    """Stable Diffusion 2-base UNet (stabilityai/stable-diffusion-2-base/unet),
    written out, plus Lotus' projection class embedding (task switcher).

    ``in_channels`` is 8 for Lotus-G (noisy latent concatenated with the image
    latent) and 4 for Lotus-D.
    """
    return dict(
        sample_size=64,
        in_channels=in_channels,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention=False,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        dual_cross_attention=False,
        use_linear_projection=True,
        upcast_attention=False,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=4,
    )


def tiny_unet_config(in_channels: int = 8) -> dict[str, Any]:
    """Same block structure as SD2 at toy width, for CPU tests."""
    return dict(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=4,
    )


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def card_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'cpu' -> 'cpu'."""
    low = name.lower()
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", low.replace("nvidia", ""))
    if m:
        return m.group(1)
    return re.sub(r"[^a-z0-9]+", "_", low).strip("_") or "device"


def summarize(times_ms: Sequence[float]) -> dict[str, Any]:
    xs = sorted(float(t) for t in times_ms)
    n = len(xs)
    if n == 1:
        q1 = q3 = xs[0]
    else:
        qs = statistics.quantiles(xs, n=4, method="inclusive")
        q1, q3 = qs[0], qs[2]
    return {
        "n": n,
        "median_ms": statistics.median(xs),
        "mean_ms": statistics.fmean(xs),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": xs[0],
        "max_ms": xs[-1],
    }


class Timer:
    """Per-iteration timing: CUDA events on GPU, perf_counter (after sync) elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self._sync()
        out: list[float] = []
        if self.cuda:
            evs = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(iters)
            ]
            for s, e in evs:
                s.record()
                fn()
                e.record()
            torch.cuda.synchronize()
            out = [s.elapsed_time(e) for s, e in evs]
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated by PyTorch's CUDA allocator since the last reset; None off-GPU
    (there is no per-region allocator peak on CPU, and we do not invent one)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def peak_reserved_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**30
    return None


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def build_unet(cfg: dict[str, Any], device: torch.device, channels_last: bool, seed: int):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    # PyTorch SDPA attention (diffusers' default on torch>=2; set explicitly).
    unet.set_attn_processor(AttnProcessor2_0())
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return unet


def make_inputs(
    batch: int,
    in_channels: int,
    latent_hw: tuple[int, int],
    text_len: int,
    text_dim: int,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    timestep: int = 999,
) -> dict[str, torch.Tensor]:
    h, w = latent_hw
    sample = torch.randn(batch, in_channels, h, w, device=device, dtype=dtype)
    if channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    return dict(
        sample=sample,
        timestep=torch.full((batch,), timestep, device=device, dtype=torch.long),
        encoder_hidden_states=torch.randn(batch, text_len, text_dim, device=device, dtype=dtype),
        class_labels=torch.randn(batch, 4, device=device, dtype=dtype),
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_forward_flops(cfg: dict[str, Any], batch: int, latent_hw: tuple[int, int], text_len: int) -> float | None:
    """FLOPs of one UNet forward, counted on the meta device (no compute, no memory)."""
    try:
        from diffusers import UNet2DConditionModel
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            unet = UNet2DConditionModel(**cfg)
            inp = make_inputs(
                batch, cfg["in_channels"], latent_hw, text_len, cfg["cross_attention_dim"],
                torch.device("meta"), torch.float32, False,
            )
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            unet(**inp, return_dict=False)
        return float(fc.get_total_flops())
    except Exception as exc:  # pragma: no cover - best effort
        print(f"[flops] could not count: {exc!r}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------


def train_breakdown(unet, opt, amp, inputs, target, device, iters: int) -> dict[str, Any]:
    """Per-phase times of a training step, synchronizing after each phase.

    ``wall_ms``: host wall time of the phase, synchronized before and after
    (i.e. until the GPU has finished it). ``host_ms``: wall time until the
    phase's Python call returns, before the closing synchronize, i.e. the time
    the host spends issuing the work. host_ms ~ wall_ms means the GPU waited on
    the host (Python/dispatch/launch bound). ``cpu_ms``: process CPU time over
    the phase; NOTE it also counts the busy-wait inside ``cuda.synchronize``
    (CUDA spins by default when cores outnumber GPUs), so cpu_ms ~ wall_ms is
    *not* evidence of host-boundness. The sync points make the sum a little
    larger than a real step.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    phases: dict[str, dict[str, list[float]]] = {
        k: {"wall_ms": [], "host_ms": [], "cpu_ms": []} for k in ("forward", "backward", "clip", "optimizer")
    }
    state: dict[str, Any] = {}

    def fwd():
        with amp:
            pred = unet(**inputs, return_dict=False)[0]
        state["loss"] = F.mse_loss(pred.float(), target)

    def bwd():
        state.pop("loss").backward()

    def clip():
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)

    def optim():
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(max(iters, 1)):
        for name, fn in (("forward", fwd), ("backward", bwd), ("clip", clip), ("optimizer", optim)):
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            phases[name]["host_ms"].append((time.perf_counter() - w0) * 1e3)
            sync()
            phases[name]["wall_ms"].append((time.perf_counter() - w0) * 1e3)
            phases[name]["cpu_ms"].append((time.process_time() - c0) * 1e3)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in phases.items()}


def bench_train(
    unet: torch.nn.Module,
    device: torch.device,
    batch: int,
    checkpointing: bool,
    args: argparse.Namespace,
    in_channels: int,
    text_dim: int,
    latent_hw: tuple[int, int],
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "batch": batch,
        "gradient_checkpointing": checkpointing,
        "image_hw": [latent_hw[0] * LATENT_DOWNSCALE, latent_hw[1] * LATENT_DOWNSCALE],
        "latent_hw": list(latent_hw),
        "oom": False,
    }
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()

    free_memory(device)
    reset_peak(device)
    use_fused = device.type == "cuda"
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-5, weight_decay=1e-2, fused=use_fused)
    amp = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if args.train_dtype == "bf16"
        else nullcontext()
    )
    inputs = make_inputs(
        batch, in_channels, latent_hw, args.text_len, text_dim, device, torch.float32, args.channels_last
    )
    target = torch.randn(batch, 4, *latent_hw, device=device)

    def step() -> None:
        with amp:
            pred = unet(**inputs, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    failed: BaseException | None = None
    try:
        times = Timer(device).time(step, args.train_warmup, args.train_iters)
        rec.update(summarize(times))
        rec["images_per_s"] = batch * 1e3 / rec["median_ms"]
        rec["peak_gib"] = peak_gib(device)
        rec["peak_reserved_gib"] = peak_reserved_gib(device)
        if args.train_breakdown:
            rec["breakdown"] = train_breakdown(unet, opt, amp, inputs, target, device, args.train_iters)
    except Exception as exc:
        if not is_oom(exc):
            raise
        failed = exc
    if failed is not None:
        rec["oom"] = True
        rec["error"] = str(failed).splitlines()[0][:300]
        rec["peak_gib"] = peak_gib(device)  # how far it got before failing
        del failed
    # drop activations/grads/optimizer state before the next configuration
    opt.zero_grad(set_to_none=True)
    for p in unet.parameters():
        p.grad = None
    del opt, inputs, target, step
    free_memory(device)
    return rec


def bench_infer(
    unet: torch.nn.Module,
    device: torch.device,
    precision: str,
    compiled: bool,
    args: argparse.Namespace,
    in_channels: int,
    text_dim: int,
    latent_hw: tuple[int, int],
) -> dict[str, Any]:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rec: dict[str, Any] = {
        "precision": precision,
        "compiled": compiled,
        "batch": args.infer_batch,
        "timestep": 999,
        "image_hw": [latent_hw[0] * LATENT_DOWNSCALE, latent_hw[1] * LATENT_DOWNSCALE],
        "latent_hw": list(latent_hw),
        "oom": False,
    }
    inputs = make_inputs(
        args.infer_batch, in_channels, latent_hw, args.text_len, text_dim, device, dtype,
        args.channels_last,
    )
    model: Callable[..., Any] = unet
    if compiled:
        torch._dynamo.reset()
        model = torch.compile(unet, mode=args.compile_mode)
        rec["compile_mode"] = args.compile_mode or "default"

    def call() -> None:
        with torch.inference_mode():
            model(**inputs, return_dict=False)

    prev_tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    rec["tf32_matmul"] = precision == "tf32"
    failed: BaseException | None = None
    try:
        free_memory(device)
        reset_peak(device)
        if compiled:
            t0 = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rec["compile_s"] = time.perf_counter() - t0
        times = Timer(device).time(call, args.infer_warmup, args.infer_iters)
        rec.update(summarize(times))
        rec["peak_gib"] = peak_gib(device)
    except Exception as exc:
        if not is_oom(exc):
            raise
        failed = exc
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    if failed is not None:
        rec["oom"] = True
        rec["error"] = str(failed).splitlines()[0][:300]
        del failed
    del model, inputs, call
    if compiled:
        torch._dynamo.reset()
    free_memory(device)
    return rec


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return format(x, spec)


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['device_name']}  torch {result['torch_version']}  "
        f"diffusers {result['diffusers_version']}",
        f"UNet: {result['model']['name']}  params {result['model']['params'] / 1e6:.1f}M  "
        f"in_channels {result['model']['in_channels']}  channels_last {result['channels_last']}",
    ]
    tr = result.get("train", [])
    if tr:
        h, w = tr[0]["image_hw"]
        lines.append("")
        lines.append(
            f"TRAIN step ({h}x{w} px, {result['train_settings']['dtype']} autocast, fp32 master, "
            "AdamW, clip 1.0)"
        )
        lines.append(f"{'batch':>5} {'ckpt':>5} {'median ms':>10} {'IQR ms':>8} {'img/s':>8} {'peak GiB':>9}")
        for r in tr:
            if r["oom"]:
                lines.append(
                    f"{r['batch']:>5} {str(r['gradient_checkpointing']):>5} {'OOM':>10} {'-':>8} "
                    f"{'-':>8} {'>' + _fmt(r.get('peak_gib'), '.1f'):>9}"
                )
            else:
                lines.append(
                    f"{r['batch']:>5} {str(r['gradient_checkpointing']):>5} {_fmt(r['median_ms']):>10} "
                    f"{_fmt(r['iqr_ms'], '.2f'):>8} {_fmt(r['images_per_s'], '.2f'):>8} "
                    f"{_fmt(r['peak_gib'], '.2f'):>9}"
                )
    bd = [r for r in tr if r.get("breakdown")]
    if bd:
        lines.append("")
        lines.append("TRAIN phases, synchronized (wall ms / host-issue ms; host ~ wall => host-bound)")
        lines.append(f"{'batch':>5} {'ckpt':>5} {'forward':>15} {'backward':>15} {'clip':>13} {'optimizer':>13}")
        for r in bd:
            b = r["breakdown"]
            cells = [f"{b[k]['wall_ms']:.1f}/{b[k].get('host_ms', float('nan')):.1f}" for k in ("forward", "backward", "clip", "optimizer")]
            lines.append(f"{r['batch']:>5} {str(r['gradient_checkpointing']):>5} {cells[0]:>15} {cells[1]:>15} "
                         f"{cells[2]:>13} {cells[3]:>13}")
    inf = result.get("infer", [])
    if inf:
        h, w = inf[0]["image_hw"]
        lines.append("")
        lines.append(f"INFER one UNet call, t=999, batch {inf[0]['batch']}, {h}x{w} px")
        lines.append(
            f"{'prec':>5} {'compiled':>8} {'median ms':>10} {'IQR ms':>8} {'min ms':>8} "
            f"{'max ms':>8} {'peak GiB':>9} {'compile s':>9}"
        )
        for r in inf:
            if r["oom"]:
                lines.append(f"{r['precision']:>5} {str(r['compiled']):>8} {'OOM':>10}")
            else:
                lines.append(
                    f"{r['precision']:>5} {str(r['compiled']):>8} {_fmt(r['median_ms'], '.2f'):>10} "
                    f"{_fmt(r['iqr_ms'], '.2f'):>8} {_fmt(r['min_ms'], '.2f'):>8} "
                    f"{_fmt(r['max_ms'], '.2f'):>8} {_fmt(r['peak_gib'], '.2f'):>9} "
                    f"{_fmt(r.get('compile_s'), '.1f'):>9}"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _str_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true", help="toy UNet, tiny sizes, few iterations (CPU tests)")
    p.add_argument("--in-channels", type=int, default=8, choices=(4, 8),
                   help="8 = Lotus-G (noisy latent + image latent), 4 = Lotus-D")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--sections", default="train,infer", help="comma list of train, infer")
    p.add_argument("--train-batches", default=None, help="comma list (default 1,4,16; tiny 1,2)")
    p.add_argument("--train-image", default=None, help="HxW px (default 576x768; tiny 64x96)")
    p.add_argument("--checkpointing", default="off,on", help="comma list of off,on")
    p.add_argument("--train-dtype", default="bf16", choices=("bf16", "fp32"),
                   help="autocast dtype for training (master weights always fp32)")
    p.add_argument("--train-breakdown", action="store_true",
                   help="also time forward/backward/clip/optimizer separately (wall and CPU time)")
    p.add_argument("--train-warmup", type=int, default=None)
    p.add_argument("--train-iters", type=int, default=None)
    p.add_argument("--infer-image", default=None, help="HxW px (default 768x768; tiny 64x64)")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--precisions", default="fp32,bf16",
                   help="comma list of fp32 (strict, no TF32), tf32 (fp32 weights, TF32 matmuls), bf16 (bf16 weights)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    p.add_argument("--compile-precisions", default=None,
                   help="precisions also timed torch.compile'd (default: all of --precisions)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: PyTorch's default)")
    p.add_argument("--infer-warmup", type=int, default=None)
    p.add_argument("--infer-iters", type=int, default=None)
    p.add_argument("--text-len", type=int, default=2, help="tokens in the text context [B, L, 1024]")
    p.add_argument("--no-flops", action="store_true", help="skip the meta-device FLOP count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output path; '{card}' is replaced by the card slug")
    args = p.parse_args(argv)

    def hw(s: str) -> tuple[int, int]:
        h, w = (int(v) for v in s.lower().split("x"))
        if h % LATENT_DOWNSCALE or w % LATENT_DOWNSCALE:
            raise SystemExit(f"image size {s} must be a multiple of {LATENT_DOWNSCALE}")
        return h, w

    t = args.tiny
    args.train_batches = _int_list(args.train_batches or ("1,2" if t else "1,4,16"))
    args.train_image = hw(args.train_image or ("64x96" if t else "576x768"))
    args.infer_image = hw(args.infer_image or ("64x64" if t else "768x768"))
    args.checkpointing = [{"off": False, "on": True}[x] for x in _str_list(args.checkpointing)]
    args.sections = _str_list(args.sections)
    args.precisions = _str_list(args.precisions)
    args.compile_precisions = (
        [] if args.no_compile
        else _str_list(args.compile_precisions) if args.compile_precisions is not None
        else list(args.precisions)
    )
    for pr in args.precisions + args.compile_precisions:
        if pr not in ("fp32", "tf32", "bf16"):
            raise SystemExit(f"unknown precision {pr}")
    args.train_warmup = args.train_warmup if args.train_warmup is not None else (1 if t else 3)
    args.train_iters = args.train_iters if args.train_iters is not None else (3 if t else 10)
    args.infer_warmup = args.infer_warmup if args.infer_warmup is not None else (1 if t else 10)
    args.infer_iters = args.infer_iters if args.infer_iters is not None else (5 if t else 50)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import diffusers

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA requested but not available (use --device cpu --tiny)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine() or device.type
    slug = card_slug(device_name) if device.type == "cuda" else device.type
    out_path = args.out.replace("{card}", slug) if args.out else None

    cfg = (tiny_unet_config if args.tiny else sd2_unet_config)(args.in_channels)
    text_dim = cfg["cross_attention_dim"]
    train_latent = (args.train_image[0] // LATENT_DOWNSCALE, args.train_image[1] // LATENT_DOWNSCALE)
    infer_latent = (args.infer_image[0] // LATENT_DOWNSCALE, args.infer_image[1] // LATENT_DOWNSCALE)

    result: dict[str, Any] = {
        "benchmark": "gpu_unet",
        "device": str(device),
        "device_name": device_name,
        "card_slug": slug,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "command": "python benchmarks/gpu_unet.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "channels_last": args.channels_last,
        "attention": "AttnProcessor2_0 (torch SDPA)",
        # PyTorch defaults: convolutions may use TF32 even in 'fp32' (cudnn.allow_tf32=True);
        # matmuls are strict fp32 except in the 'tf32' inference variant.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32_default": torch.backends.cuda.matmul.allow_tf32,
        "model": {
            "name": "tiny" if args.tiny else "sd2-base-unet+lotus-projection-class-embed",
            "in_channels": args.in_channels,
            "config": cfg,
        },
        "text_context_shape": ["B", args.text_len, text_dim],
        "class_labels_shape": ["B", 4],
        "train_settings": {
            "dtype": args.train_dtype,
            "master_weights": "fp32",
            "optimizer": "AdamW(lr=3e-5, wd=1e-2" + (", fused)" if device.type == "cuda" else ")"),
            "grad_clip_norm": 1.0,
            "loss": "mse",
            "timestep": 999,
            "warmup": args.train_warmup,
            "iters": args.train_iters,
        },
        "infer_settings": {"warmup": args.infer_warmup, "iters": args.infer_iters},
        "timing": "CUDA events per iteration" if device.type == "cuda" else "perf_counter per iteration",
        "memory": "torch.cuda.max_memory_allocated per measurement (GiB)" if device.type == "cuda"
        else "not measured on CPU (no allocator peak); peak_gib is null",
        "train": [],
        "infer": [],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        result["device_total_gib"] = props.total_memory / 2**30
        result["device_sm_count"] = props.multi_processor_count

    def flush() -> None:
        if out_path:
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            tmp = out_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2, default=str)
            os.replace(tmp, out_path)

    if not args.no_flops:
        result["flops"] = {
            "train_forward_per_image": count_forward_flops(cfg, 1, train_latent, args.text_len),
            "infer_forward_per_call": count_forward_flops(cfg, args.infer_batch, infer_latent, args.text_len),
        }

    unet = build_unet(cfg, device, args.channels_last, args.seed)
    result["model"]["params"] = count_params(unet)
    print(f"[gpu_unet] {device_name}: UNet params = {result['model']['params']:,}", flush=True)
    flush()

    if "train" in args.sections:
        for ckpt in args.checkpointing:
            for bs in args.train_batches:
                rec = bench_train(unet, device, bs, ckpt, args, args.in_channels, text_dim, train_latent)
                result["train"].append(rec)
                print(f"[train] bs={bs} ckpt={ckpt}: "
                      + ("OOM" if rec["oom"] else f"{rec['median_ms']:.1f} ms, peak {_fmt(rec['peak_gib'], '.2f')} GiB"),
                      flush=True)
                flush()
        unet.disable_gradient_checkpointing()
        free_memory(device)

    if "infer" in args.sections:
        unet.eval()
        unet.requires_grad_(False)
        variants = [(p, False) for p in args.precisions]
        variants += [(p, True) for p in args.compile_precisions]
        # group by dtype so the weights are converted once (fp32/tf32 first, then bf16)
        variants.sort(key=lambda v: (v[0] == "bf16", v[1], v[0]))
        current = torch.float32
        for prec, compiled in variants:
            want = torch.bfloat16 if prec == "bf16" else torch.float32
            if want != current:
                unet.to(dtype=want)
                current = want
                free_memory(device)
            try:
                rec = bench_infer(unet, device, prec, compiled, args, args.in_channels, text_dim, infer_latent)
            except Exception as exc:  # e.g. a compile failure: record, keep going
                rec = {"precision": prec, "compiled": compiled, "oom": False,
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
                print(f"[infer] {prec} compiled={compiled}: FAILED {rec['error']}", flush=True)
                result["infer"].append(rec)
                flush()
                continue
            fl = (result.get("flops") or {}).get("infer_forward_per_call")
            if fl and not rec["oom"]:
                rec["achieved_tflops"] = fl / (rec["median_ms"] * 1e-3) / 1e12
            result["infer"].append(rec)
            print(f"[infer] {prec} compiled={compiled}: "
                  + ("OOM" if rec["oom"] else f"{rec['median_ms']:.2f} ms (IQR {rec['iqr_ms']:.2f})"),
                  flush=True)
            flush()

    fl_t = (result.get("flops") or {}).get("train_forward_per_image")
    if fl_t:
        for rec in result["train"]:
            if not rec["oom"]:
                # fwd + bwd ~ 3x forward FLOPs (recompute with checkpointing not counted as useful)
                rec["achieved_tflops_3x_fwd"] = 3 * fl_t * rec["batch"] / (rec["median_ms"] * 1e-3) / 1e12

    result["finished"] = True
    flush()
    # infer records that failed outright (no median) are skipped by the table
    table_result = dict(result, infer=[r for r in result["infer"] if "median_ms" in r or r.get("oom")])
    print()
    print(format_table(table_result))
    for r in result["infer"]:
        if "median_ms" not in r and not r.get("oom"):
            print(f"infer {r['precision']} compiled={r['compiled']}: {r.get('error')}")
    if out_path:
        print(f"\nwrote {out_path}")
    return result


if __name__ == "__main__":
    main()
