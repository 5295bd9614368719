#!/usr/bin/env python
"""lotus_pl single-step prediction against diffusers' ``MarigoldDepthPipeline`` on identical components.

Everything is built offline into one temporary diffusers folder and loaded by both sides:

* ``vae/``: a small SD-shaped ``AutoencoderKL`` (4 latent channels, factor 8, mid-block attention);
* ``unet/``: a small ``UNet2DConditionModel`` with **8 input channels** (image latent + noise latent,
  which Marigold and Lotus-G both concatenate) and 4 outputs, no class embedding. lotus_pl loads it
  through ``PretrainedStableDiffusion``, whose ``conv_in`` expansion is the identity from 8 to 8
  channels, so both sides hold bit-identical UNets (checked below);
* ``text_encoder/`` + ``tokenizer/``: a tiny CLIP; both sides attend to its empty-prompt embedding;
* ``scheduler/``: DDIM, "trailing" spacing (t = 999 for one step, as Lotus), ``prediction_type``
  "sample" (x0, as Lotus's ``Sample``), ``set_alpha_to_one`` so that the last step returns x0.

lotus_pl is ``LotusModel(Generative, Sample, SingleStep, StableDiffusionVAE, Depth)``. With the same
initial noise both sides then compute the same prediction, which the script checks.

Measured per image (batch 1, fp32, ``torch.inference_mode``, medians over rounds after warm-up;
the cases of one section alternate within each round so machine load hits them alike):

(a) equal work: ``predict_image`` against Marigold with 1 step and no ensemble, and lotus_pl's
    fastest CPU path, the same model exported by ``lotus_pl export --format onnx``
    (:func:`lotus_pl.onnx_export.export_onnx`) run by ONNX Runtime (when ``onnxruntime`` is
    installed, ``.[onnx]``; its output is checked against ``predict_image``'s and Marigold's);
(b) Marigold's paper setting, 50 steps × 10 ensemble members with diffusers' affine-invariant
    ensembling, which needs scipy; without scipy the 10 members run as a batch of 10 copies of the
    image and are not ensembled (the same UNet and VAE work; only makes Marigold look faster);
(c) the floor: one bare ``vae.encode`` (mode × scaling) + ``unet`` + ``vae.decode`` on an already
    resized tensor against ``predict_image`` on the raw image, for a raw image at the processing
    size and for a larger one that is resized; and the full ``lotus_pl predict`` path (file read
    through ``PredictInputs``, ``predict_step``, ``PredictionWriter`` writing the depth files);
(d) peak memory of one prediction: on CUDA ``torch.cuda.max_memory_allocated``; on CPU each side
    runs in a fresh process that loads the components, resets the kernel's resident-set high-water
    mark (``/proc/self/clear_refs``), predicts one image and reads ``VmHWM`` (the growth over the
    resident set before the call is the memory the image needed).

Runs unchanged on a GPU (device auto-detected, synchronised timing). On a CPU shared with other
jobs, ``--threads 1`` keeps OpenMP workers from waiting on descheduled siblings (with 2 threads on a
loaded 2-core machine single calls varied 4x). Results: docs/benchmarks/predict_vs_marigold.md.

    python benchmarks/predict_vs_marigold.py [--quick] [--threads 1] [--rounds 7] [--paper-rounds 2]
        [--paper-resolution 384] [--skip-paper] [--skip-memory] [--no-onnx] [--out result.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lotus_pl.tiny_components import write_tiny_clip

#: Component sizes: the full run (768 px) and the seconds-long smoke test.
SIZES: dict[str, dict[str, Any]] = {
    "full": dict(vae_channels=(16, 32, 64, 64), vae_groups=8, unet_channels=(64, 128, 256), unet_groups=16,
                 unet_attention=(False, True, True), text_hidden=64, resolution=768, input_hw=(576, 768),
                 large_input_hw=(768, 1024), paper_steps=50, paper_ensemble=10),
    "quick": dict(vae_channels=(8, 8, 8, 8), vae_groups=4, unet_channels=(16, 32), unet_groups=8,
                  unet_attention=(False, True), text_hidden=16, resolution=64, input_hw=(48, 64),
                  large_input_hw=(72, 96), paper_steps=5, paper_ensemble=3),
}
OVERHEAD_TARGET = 0.15


# ------------------------------------------------------------------------------ components
def write_components(folder: Path, size: dict[str, Any]) -> dict[str, Any]:
    """Save VAE, 8-channel UNet, CLIP and DDIM scheduler (diffusers layout); return their sizes."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    levels = len(size["vae_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=size["vae_channels"],
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=size["vae_groups"])
    attention = size["unet_attention"]
    unet = UNet2DConditionModel(
        sample_size=size["resolution"] // 8, in_channels=8, out_channels=4, block_out_channels=size["unet_channels"],
        layers_per_block=1, down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=size["text_hidden"], attention_head_dim=8, norm_num_groups=size["unet_groups"],
    )
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=True, prediction_type="sample",
                  timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    write_tiny_clip(folder, size["text_hidden"])
    return {
        "vae": {"block_out_channels": list(size["vae_channels"]), "latent_channels": 4, "downsample": 2 ** (levels - 1),
                "params": sum(p.numel() for p in vae.parameters())},
        "unet": {"block_out_channels": list(size["unet_channels"]), "in_channels": 8, "out_channels": 4,
                 "attention": list(attention), "params": sum(p.numel() for p in unet.parameters())},
        "text_hidden": size["text_hidden"],
    }


def lotus_model(folder: Path, resolution: int, device: torch.device):
    """Lotus-G (x0, single step) on the folder's UNet, VAE and CLIP context."""
    from lotus_pl.codecs import StableDiffusionVAE
    from lotus_pl.denoisers import PretrainedStableDiffusion
    from lotus_pl.formulations import Generative
    from lotus_pl.model import LotusModel
    from lotus_pl.parameterizations import Sample
    from lotus_pl.schedules import NoiseSchedule, SingleStep
    from lotus_pl.tasks import Depth, NormalizedDepth

    model = LotusModel(task=Depth(encoding=NormalizedDepth()), denoiser=PretrainedStableDiffusion(str(folder)),
                       codec=StableDiffusionVAE(str(folder)), formulation=Generative(), parameterization=Sample(),
                       timesteps=SingleStep(), noise_schedule=NoiseSchedule(pretrained_path=str(folder)),
                       processing_resolution=resolution)
    return model.eval().to(device)


def marigold_pipeline(folder: Path, resolution: int, device: torch.device):
    """diffusers' Marigold depth pipeline assembled from the same folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = dict(local_files_only=True)
    pipe = MarigoldDepthPipeline(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs),
        scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kwargs),
        prediction_type="depth", default_denoising_steps=1, default_processing_resolution=resolution,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def marigold_call(pipe, image: torch.Tensor, steps: int, ensemble: int, resolution: int,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    """Marigold on ``image`` in [-1, 1] (it takes [0, 1]), depth ``[N, 1, H, W]``."""
    generator = None if latents is not None else torch.Generator(image.device).manual_seed(0)
    return pipe((image + 1) / 2, num_inference_steps=steps, ensemble_size=ensemble, processing_resolution=resolution,
                batch_size=1, latents=latents, generator=generator, output_type="pt").prediction


def sample_image(height: int, width: int, device: torch.device) -> torch.Tensor:
    """A smooth random image in [-1, 1], ``[1, 3, H, W]``."""
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=generator) * 2 - 1
    return F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False).to(device)


# ------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case; every round runs each case once, in a rotating order."""
    progress(f"timing {', '.join(cases)}: {warmup} warm-up + {rounds} rounds")
    with torch.inference_mode():
        for fn in cases.values():
            for _ in range(warmup):
                fn()
        names = list(cases)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                synchronize(device)
                start = time.perf_counter()
                cases[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in names))
    return times


def onnx_case(model, folder: Path, image: torch.Tensor, noise: torch.Tensor, threads: int | None, ours: torch.Tensor,
              theirs: torch.Tensor, check: dict[str, Any], enabled: bool = True) -> dict[str, Callable[[], Any]]:
    """``{"lotus_onnxruntime": call}``: the model exported to ONNX and run by ONNX Runtime on the CPU,
    fed the image and the same initial noise; ``check`` receives its max |difference| to
    ``predict_image`` (``ours``) and to Marigold (``theirs``). Empty when disabled, on a GPU, or
    without onnxruntime."""
    if not enabled or image.device.type != "cpu" or importlib.util.find_spec("onnxruntime") is None:
        return {}
    import onnxruntime as ort

    from lotus_pl.onnx_export import ONNX_FILE, export_onnx

    progress("exporting the ONNX graph")
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model, folder)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    if image.shape[-2] % model.size_multiple or image.shape[-1] % model.size_multiple:
        raise ValueError(f"the ONNX case needs an input on the latent grid (multiple of {model.size_multiple}), got {tuple(image.shape)}")
    feed = {"image": image.cpu().numpy(), "noise": noise.cpu().numpy()}
    out = session.run(None, feed)[0]
    check["onnx_max_abs_diff_vs_lotus"] = float(np.abs(out - ours.cpu().numpy()).max())
    check["onnx_max_abs_diff_vs_marigold"] = float(np.abs(out - theirs.cpu().numpy()).max())
    check["onnx_session"] = f"onnxruntime {ort.__version__}, CPUExecutionProvider, ORT_ENABLE_ALL, {threads or 'default'} threads"
    return {"lotus_onnxruntime": lambda: session.run(None, feed)}


def floor_call(model, x: torch.Tensor, noise: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The least any Lotus-G prediction must do: encode, one UNet call at t = 999, decode."""
    vae, unet = model.codec.vae, model.unet
    scaling = vae.config.scaling_factor
    context = model.text_context

    def run() -> torch.Tensor:
        latent = vae.encode(x).latent_dist.mode() * scaling
        out = unet(torch.cat([latent, noise], dim=1), 999, encoder_hidden_states=context).sample
        return vae.decode(out / scaling).sample

    return run


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def measure_memory_here(side: str, folder: Path, resolution: int, input_hw: Sequence[int]) -> dict[str, Any]:
    """CPU: resident memory of this (fresh) process around one prediction, in MiB."""
    device = torch.device("cpu")
    image = sample_image(*input_hw, device)
    if side == "lotus":
        model = lotus_model(folder, resolution, device)
        predict = lambda: model.predict_image(image)  # noqa: E731
    else:
        pipe = marigold_pipeline(folder, resolution, device)
        predict = lambda: marigold_call(pipe, image, 1, 1, resolution)  # noqa: E731
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (peak since process start)"
    before = _status_kib("VmRSS")
    with torch.inference_mode():
        predict()
    peak = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "resident_before_mib": before / 1024, "peak_mib": peak / 1024, "growth_mib": (peak - before) / 1024}


def memory(side_calls: dict[str, Callable[[], Any]], folder: Path, resolution: int, input_hw: Sequence[int],
           device: torch.device, repeats: int) -> dict[str, Any]:
    """Peak memory of one prediction per side (median over ``repeats`` fresh processes on CPU)."""
    result: dict[str, Any] = {}
    if device.type == "cuda":
        for side, fn in side_calls.items():
            with torch.inference_mode():
                fn()
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                fn()
                torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            result[side] = {"method": "torch.cuda.max_memory_allocated", "resident_before_mib": before / 2**20,
                            "peak_mib": peak / 2**20, "growth_mib": (peak - before) / 2**20}
        return result

    # One fresh process per measurement (the sides of one repeat side by side): each reads only its own
    # resident set. The peak varies by up to ~100 MiB between identical processes, hence the median.
    def child(side: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--child-memory", side, "--folder", str(folder), "--resolution",
                                 str(resolution), "--input", *map(str, input_hw), "--threads", str(torch.get_num_threads())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in side_calls}
    for _ in range(repeats):
        for side, process in [(side, child(side)) for side in side_calls]:
            out, err = process.communicate()
            if process.returncode:
                raise RuntimeError(f"memory measurement of {side} failed:\n{err}")
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
    for side, side_runs in runs.items():
        result[side] = {"method": side_runs[0]["method"], "runs": side_runs,
                        **{k: statistics.median(r[k] for r in side_runs) for k in ("resident_before_mib", "peak_mib", "growth_mib")}}
    return result


# ------------------------------------------------------------------------------ the benchmark
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny components at 64 px: a smoke test of seconds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of (a) and (c) (default 7; quick 2)")
    parser.add_argument("--paper-rounds", type=int, default=None, help="rounds of Marigold 50 x 10 (default 2; quick 1)")
    parser.add_argument("--paper-resolution", type=int, default=None, help="processing resolution of (b) (default: as (a))")
    parser.add_argument("--memory-repeats", type=int, default=None, help="fresh processes per side for CPU memory (default 5; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-paper", action="store_true", help="leave out (b), Marigold's 50 x 10 setting (minutes a round on a CPU)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out (d), the fresh-process memory measurements")
    parser.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out of (a) even when it is installed")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--child-memory", choices=["lotus", "marigold_1x1"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=int, nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def quiet() -> None:
    """No loading progress bars or accelerate hints between the results."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        result = measure_memory_here(args.child_memory, Path(args.folder), args.resolution, args.input)
        print(json.dumps(result))
        return result

    import diffusers

    from lotus_pl.callbacks import PredictionWriter
    from lotus_pl.data.predict_inputs import PredictInputs, plan_inputs

    size = SIZES["quick" if args.quick else "full"]
    rounds = args.rounds or (2 if args.quick else 7)
    paper_rounds = args.paper_rounds or (1 if args.quick else 2)
    memory_repeats = args.memory_repeats or (1 if args.quick else 5)
    resolution, (height, width) = size["resolution"], size["input_hw"]
    paper_resolution = args.paper_resolution or resolution
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    alignment = importlib.util.find_spec("scipy") is not None

    with tempfile.TemporaryDirectory(prefix="predict_vs_marigold_") as tmp:
        folder = Path(tmp) / "components"
        components = write_components(folder, size)
        model = lotus_model(folder, resolution, device)
        pipe = marigold_pipeline(folder, resolution, device)
        same_unet = all(torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(), pipe.unet.state_dict().values()))
        same_vae = all(torch.equal(a, b) for a, b in zip(model.codec.vae.state_dict().values(), pipe.vae.state_dict().values()))
        if not (same_unet and same_vae and model.unet.state_dict().keys() == pipe.unet.state_dict().keys()):
            raise RuntimeError("lotus_pl and Marigold did not load identical UNet / VAE weights")

        image = sample_image(height, width, device)
        latent_hw = (height // components["vae"]["downsample"], width // components["vae"]["downsample"])
        with torch.inference_mode():  # the same initial noise must give the same prediction
            noise = torch.randn(1, 4, *latent_hw, generator=torch.Generator(device).manual_seed(model.seed), device=device)
            ours = model.predict_image(image)
            theirs = marigold_call(pipe, image, 1, 1, resolution, latents=noise)
        same_output = float((ours - theirs).abs().max())

        # (a) equal work and (c) the floor, in the same rounds
        large = sample_image(*size["large_input_hw"], device)
        image_file = Path(tmp) / "input.png"
        Image.fromarray(np.round((image[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).astype(np.uint8)).save(image_file)
        # as `lotus_pl predict` plans its inputs (the loader resizes to the processing resolution)
        inputs = PredictInputs(plan_inputs([image_file], 1, model.processing_resolution))
        writer = PredictionWriter(str(Path(tmp) / "predictions"))

        def full_predict_path() -> None:
            batch = next(iter(inputs))
            batch["image"] = batch["image"].to(device)
            writer.on_predict_batch_end(None, model, model.predict_step(batch, 0), batch, 0)

        onnx_check: dict[str, Any] = {}
        cases = {
            "lotus": lambda: model.predict_image(image),
            "marigold_1x1": lambda: marigold_call(pipe, image, 1, 1, resolution),
            **onnx_case(model, Path(tmp) / "onnx", image, noise, args.threads, ours, theirs, onnx_check,
                        enabled=not args.no_onnx),
            "floor": floor_call(model, image, noise),
            "lotus_large_input": lambda: model.predict_image(large),
            "lotus_predict_path": full_predict_path,
        }
        times = interleaved(cases, rounds, device)
        median = {name: statistics.median(t) for name, t in times.items()}

        # (b) Marigold's paper setting (lotus_pl timed alongside only at a reduced resolution)
        steps, members = size["paper_steps"], size["paper_ensemble"]
        if args.skip_paper:
            paper_cases = {}
        elif alignment:
            paper_call = lambda: marigold_call(pipe, image, steps, members, paper_resolution)  # noqa: E731
        else:  # diffusers' ensembling needs scipy: run the same members as a batch of copies, unensembled
            copies = image.expand(members, -1, -1, -1)
            paper_call = lambda: marigold_call(pipe, copies, steps, 1, paper_resolution)  # noqa: E731
        if not args.skip_paper:
            paper_cases = {"marigold_paper": paper_call}
            if paper_resolution != resolution:
                reduced = lotus_model(folder, paper_resolution, device)
                paper_cases["lotus"] = lambda: reduced.predict_image(image)
        paper_times = interleaved(paper_cases, paper_rounds, device, warmup=0 if device.type == "cpu" else 1) if paper_cases else {}
        paper_lotus = statistics.median(paper_times.get("lotus", times["lotus"]))

        # (d) memory of one prediction
        mem = {} if args.skip_memory else memory({"lotus": cases["lotus"], "marigold_1x1": cases["marigold_1x1"]}, folder,
                                                 resolution, (height, width), device, memory_repeats)

    paper_median = statistics.median(paper_times["marigold_paper"]) if paper_times else float("nan")
    result: dict[str, Any] = {
        "benchmark": "predict_vs_marigold",
        "quick": args.quick,
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "dtype": "float32",
        "components": components,
        "input_hw": [height, width],
        "processing_resolution": resolution,
        "latent_hw": list(latent_hw),
        "rounds": rounds,
        "same_output_max_abs_diff": same_output,
        "times_s": times,
        "equal_work": {
            "lotus_s": median["lotus"],
            "marigold_1x1_s": median["marigold_1x1"],
            "marigold_over_lotus": median["marigold_1x1"] / median["lotus"],
            "lotus_at_least_as_fast": median["lotus"] <= median["marigold_1x1"],
            **({"onnxruntime_s": median["lotus_onnxruntime"],
                "marigold_over_onnxruntime": median["marigold_1x1"] / median["lotus_onnxruntime"],
                "eager_over_onnxruntime": median["lotus"] / median["lotus_onnxruntime"],
                **onnx_check} if "lotus_onnxruntime" in median else {}),
        },
        "paper_setting": {} if not paper_times else {
            "steps": size["paper_steps"],
            "ensemble": size["paper_ensemble"],
            "processing_resolution": paper_resolution,
            "ensembling": "affine-invariant (scipy)" if alignment else "none: scipy missing, members run as a batch of copies",
            "rounds": paper_rounds,
            "times_s": paper_times["marigold_paper"],
            "marigold_s": paper_median,
            "lotus_s": paper_lotus,
            "marigold_over_lotus": paper_median / paper_lotus,
        },
        "floor": {
            "floor_s": median["floor"],
            "lotus_predict_image_s": median["lotus"],
            "overhead": median["lotus"] / median["floor"] - 1,
            "within_target": median["lotus"] / median["floor"] - 1 <= OVERHEAD_TARGET,
            "large_input_hw": list(size["large_input_hw"]),
            "lotus_large_input_s": median["lotus_large_input"],
            "large_input_overhead": median["lotus_large_input"] / median["floor"] - 1,
            "predict_path_s": median["lotus_predict_path"],
            "predict_path_overhead": median["lotus_predict_path"] / median["floor"] - 1,
        },
        "memory": mem,
    }
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def report(r: dict[str, Any]) -> None:
    def row(label: str, seconds: float, note: str = "") -> None:
        print(f"  {label:50s}{1000 * seconds:11.1f} ms   {note}".rstrip())

    (h, w), a, b, c = r["input_hw"], r["equal_work"], r["paper_setting"], r["floor"]
    print(f"{r['device']}, {r['torch_threads']} torch threads, fp32; input {h}x{w}, processing resolution "
          f"{r['processing_resolution']} (latent {r['latent_hw'][0]}x{r['latent_hw'][1]}); medians of {r['rounds']} rounds")
    print(f"  UNet {r['components']['unet']['params']:,} params, VAE {r['components']['vae']['params']:,} params, identical on both sides; "
          f"same noise -> max |lotus - marigold| = {r['same_output_max_abs_diff']:.2e}")
    print("(a) equal work, one step, no ensemble")
    row("lotus_pl predict_image", a["lotus_s"])
    row("Marigold, 1 step x 1 member", a["marigold_1x1_s"], f"= {a['marigold_over_lotus']:.3f} x lotus_pl")
    print(f"  lotus_pl at least as fast: {'yes' if a['lotus_at_least_as_fast'] else 'no'}")
    if "onnxruntime_s" in a:
        row("lotus_pl exported, ONNX Runtime", a["onnxruntime_s"],
            f"Marigold = {a['marigold_over_onnxruntime']:.2f} x, eager = {a['eager_over_onnxruntime']:.2f} x this; "
            f"max |diff| {a['onnx_max_abs_diff_vs_lotus']:.1e} vs predict_image, {a['onnx_max_abs_diff_vs_marigold']:.1e} vs Marigold")
    if b:
        label = "" if b["processing_resolution"] == r["processing_resolution"] else f" at {b['processing_resolution']} px (reduced)"
        print(f"(b) Marigold's paper setting{label}, ensembling: {b['ensembling']}; median of {b['rounds']}")
        row(f"Marigold, {b['steps']} steps x {b['ensemble']} members", b["marigold_s"],
            f"= {b['marigold_over_lotus']:.1f} x lotus_pl single step")
    print("(c) against the floor: bare encode + UNet + decode at the processing size")
    row("floor", c["floor_s"])
    target = f"(target <= {100 * OVERHEAD_TARGET:.0f} %: {'yes' if c['within_target'] else 'no'})"
    row(f"predict_image, raw {h}x{w}", c["lotus_predict_image_s"], f"overhead {100 * c['overhead']:+.1f} % {target}")
    lh, lw = c["large_input_hw"]
    row(f"predict_image, raw {lh}x{lw} (resized in and out)", c["lotus_large_input_s"], f"overhead {100 * c['large_input_overhead']:+.1f} %")
    row("predict path: read file, predict, write files", c["predict_path_s"], f"overhead {100 * c['predict_path_overhead']:+.1f} %")
    if not r["memory"]:
        return
    print(f"(d) peak memory of one prediction at {r['processing_resolution']} px ({r['memory']['lotus']['method']})")
    for side, m in r["memory"].items():
        print(f"  {side:14s} peak {m['peak_mib']:8.1f} MiB, growth over the loaded model {m['growth_mib']:8.1f} MiB")


if __name__ == "__main__":
    main()
