"""``lotus_pl export``: a trained lotus_pl model as a diffusers folder in the layout of the Lotus
authors' released checkpoints, which lotus_pl (and diffusers tools) load back::

    lotus_pl export --config runs/x/config.yaml --ckpt_path runs/x/checkpoints/last.ckpt --out exported/x

The model is rebuilt from its configs as ``lotus_pl predict`` builds it (LotusCLI's parser: configs
compose left to right, dotted overrides, ``--print_config``; only the model is instantiated, so a
cluster run's trainer settings need not work here), the checkpoint's weights are loaded, and the
folder gets:

- ``unet/``: config.json + diffusion_pytorch_model.safetensors;
- the codec's files (:meth:`~lotus_pl.codecs.Codec.export`: ``vae/`` for the SD VAE, nothing for
  the weight-free SpaceToDepth, whose factor the config records);
- ``text_encoder/`` + ``tokenizer/`` when the UNet's context came from a text encoder (an SD
  folder), else ``text_context.safetensors`` with the fixed context tensor;
- ``scheduler/scheduler_config.json``: a DDIMScheduler with the model's noise schedule and the
  parameterization's ``prediction_type``;
- ``model_index.json``, the diffusers pipeline index naming :class:`~lotus_pl.pipeline.LotusPipeline`
  (``LotusPipeline.from_pretrained(folder)`` runs it in diffusers), and ``lotus_pl.yaml``, the config
  that runs the folder in lotus_pl through :class:`~lotus_pl.denoisers.DiffusersUNet`, with the processing
  resolution the model was trained at unless the config set one (the checkpoint records it).

Only safetensors, JSON, text and YAML files are written, never pickles.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import yaml
from diffusers import DDIMScheduler
from lightning import Trainer
from lightning.pytorch.cli import LightningArgumentParser

from lotus_pl.cli import LotusCLI, newest_checkpoint
from lotus_pl.denoisers import TEXT_CONTEXT_FILE, DenoiserFactory, DiffusersUNet
from lotus_pl.lora import LORA_SUBFOLDER, base_copy, has_lora, merged_copy, save_adapter
from lotus_pl.model import LotusModel
from lotus_pl.onnx_export import ONNX_FILE, export_onnx
from lotus_pl.schedules import MultiStep

log = logging.getLogger(__name__)

#: The only kinds of file an exported folder may hold.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".yaml")
#: Model settings for training or speed only; the exported config leaves them at their defaults.
TRAINING_ONLY = ("optimizer", "lr_scheduler", "gradient_checkpointing", "channels_last", "compile_unet")
#: Enough trainer for ``lotus_pl predict --config <folder>/lotus_pl.yaml`` to write its outputs.
INFERENCE_TRAINER = {
    "devices": 1,
    "logger": False,
    "callbacks": [{"class_path": "lotus_pl.callbacks.PredictionWriter", "init_args": {"output_dir": "predictions"}}],
}


class ExportCLI(LotusCLI):
    """LotusCLI's parser plus ``--ckpt_path``, ``--out`` and ``--overwrite``; it keeps the model's
    resolved config and instantiates nothing (:func:`build_model` makes the model alone)."""

    def __init__(self, args: list[str]) -> None:
        with warnings.catch_warnings():  # args come from `lotus_pl export ...`, not from a Python caller
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().__init__(args=args, run=False)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(**{"prog": "lotus_pl export", "description": __doc__.split("\n\n")[0], **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)  # a run's config.yaml has LotusCLI's sections too
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="the checkpoint to export; 'last' or 'resume': the newest of trainer.default_root_dir")
        parser.add_argument("--out", type=str, required=True, help="the folder to write")
        parser.add_argument("--format", type=Literal["diffusers", "onnx"], default="diffusers",
                            help="diffusers: the released-layout folder; onnx: lotus.onnx (encode -> UNet -> decode) for onnxruntime")
        parser.add_argument("--lora", type=Literal["merged", "separate"], default="merged",
                            help="a LoRA-tuned UNet: fold the adapters into its weights, or write them to unet_lora/ beside the base UNet")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="replace a previous export in --out (its contents are deleted first)")
        # A run's saved config.yaml also holds its subcommand's other arguments (weights_only, verbose, ...).
        added = {"ckpt_path"}
        for subcommand, skip in self.subcommands().items():
            added.update(parser.add_method_arguments(Trainer, subcommand, skip=set(skip) | added))

    def instantiate_classes(self) -> None:
        self.model_config: dict[str, Any] = self.config.model.as_dict()


def model_arguments(model_class: type, model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_class``'s constructor arguments from a run's resolved ``model:`` config, instantiated
    by jsonargparse as LightningCLI does (nested ``class_path`` objects built)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_class_arguments(model_class, "model", instantiate=False, fail_untyped=False, sub_configs=True)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return dict(vars(instantiate(parser.parse_object({"model": model_config})).model))


def build_model(model_config: dict[str, Any]) -> tuple[LotusModel, DenoiserFactory]:
    """The model from its resolved config, instantiated by jsonargparse as LightningCLI does, and
    the denoiser factory it was built with (which says where the text context came from)."""
    # Runtime switches only: the saved weights are the same, and plain modules save plainly.
    arguments = model_arguments(LotusModel, {**model_config, "compile_unet": False, "channels_last": False})
    return LotusModel(**arguments), arguments["denoiser"]


def resolve_checkpoint(ckpt_path: str | None, run_dir: str | None) -> str | None:
    """A checkpoint file; ``last`` / ``resume`` (a run config's setting) mean the run's newest one."""
    if ckpt_path in ("last", "resume"):
        found = newest_checkpoint(run_dir or ".")
        if found is None:
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no checkpoint in {run_dir or '.'} "
                                    "(checkpoints/last*.ckpt or hpc_ckpt_*.ckpt); pass the checkpoint file")
        return found
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    return ckpt_path


def load_weights(model: LotusModel, ckpt_path: str) -> None:
    """The checkpoint's weights into ``model``, as Lightning restores them (strict, codec from the config)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise KeyError(f"{ckpt_path} is not a Lightning checkpoint: it has no 'state_dict'")
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def prepare_folder(out: Path, overwrite: bool) -> None:
    """An empty ``out``. ``overwrite`` clears a previous export, and only that (a folder with
    ``model_index.json``), so a mistyped ``--out`` cannot delete unrelated files."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another folder")
        if not (out / "model_index.json").is_file() and not (out / ONNX_FILE).is_file():
            raise FileExistsError(f"--out {out} has files but no model_index.json, so it is not an exported folder and "
                                  "--overwrite will not delete it; choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def ddim_scheduler(model: LotusModel) -> DDIMScheduler:
    """A diffusers DDIMScheduler with exactly the model's alpha_bar and its parameterization's
    ``prediction_type``. "trailing" spacing starts the walk at T - 1, as lotus_pl's steps do."""
    schedule = model.noise_schedule
    scheduler = DDIMScheduler.from_config(
        schedule.scheduler_config, prediction_type=model.parameterization.prediction_type,
        rescale_betas_zero_snr=schedule.zero_terminal_snr, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0,
    )
    if not torch.equal(scheduler.alphas_cumprod.float(), schedule.alpha_bar.cpu()):
        raise RuntimeError(f"the DDIMScheduler built from {schedule.scheduler_config} does not reproduce the model's alpha_bar")
    return scheduler


def model_index(folder: Path, model: LotusModel) -> dict[str, Any]:
    """The diffusers pipeline index of the folder, naming :class:`~lotus_pl.pipeline.LotusPipeline`
    (absent components are ``[null, null]``) with the settings it needs to predict as the model does."""
    from diffusers import __version__

    from lotus_pl.pipeline import LotusPipeline

    def component(subfolder: str, library: str, name: str) -> list[str | None]:
        return [library, name] if (folder / subfolder).is_dir() else [None, None]

    num_train = model.noise_schedule.num_train_timesteps
    timesteps = model.timesteps.inference_timesteps(num_train)
    trailing = MultiStep(len(timesteps), spacing="trailing").inference_timesteps(num_train)
    if timesteps != trailing:
        log.warning("LotusPipeline walks DDIM's trailing timesteps %s, this model %s: in diffusers the export will "
                    "predict differently from lotus_pl", trailing, timesteps)
    task = model.tasks[0]
    return {
        "_class_name": LotusPipeline.__name__,
        "_diffusers_version": __version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": component("text_encoder", "transformers", "CLIPTextModel"),
        "tokenizer": component("tokenizer", "transformers", "CLIPTokenizer"),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": component("vae", "diffusers", "AutoencoderKL"),
        "task": f"{type(task).__module__}.{type(task).__name__}",
        "task_index": 0,
        "default_processing_resolution": int(model.inference_resolution),  # the training size unless set
        "default_denoising_steps": len(timesteps),
        "pure_noise_at_terminal": bool(getattr(model.formulation, "pure_noise_at_terminal", False)),
        "space_to_depth": 0 if (folder / "vae").is_dir() else model.codec.downsample,
        **({"space_to_depth_scale": model.codec.scale} if getattr(model.codec, "scale", 1.0) != 1.0 else {}),
        "seed": model.seed,
    }


def lotus_pl_config(model_config: dict[str, Any], model: LotusModel, codec_config: dict[str, Any], folder: Path,
                    lora_subfolder: str | None = None) -> dict[str, Any]:
    """The config that runs the folder in lotus_pl: the model's own task, formulation,
    parameterization, timesteps and inference settings; its weights, codec and schedule from the folder."""
    model_part = {k: v for k, v in model_config.items() if k not in TRAINING_ONLY}
    if model_part.get("processing_resolution") is None:  # the training size, from the checkpoint
        model_part["processing_resolution"] = int(model.inference_resolution)
    denoiser_args = {"path": str(folder), **({"lora_subfolder": lora_subfolder} if lora_subfolder else {})}
    model_part["denoiser"] = {"class_path": f"{DiffusersUNet.__module__}.{DiffusersUNet.__name__}", "init_args": denoiser_args}
    model_part["codec"] = codec_config
    model_part["noise_schedule"] = {
        "class_path": "lotus_pl.schedules.NoiseSchedule",
        "init_args": {"pretrained_path": str(folder), "zero_terminal_snr": model.noise_schedule.zero_terminal_snr},
    }
    return {"trainer": INFERENCE_TRAINER, "model": model_part}


def export_model(model: LotusModel, model_config: dict[str, Any], denoiser: DenoiserFactory, out: str | Path,
                 overwrite: bool = False, source: str = "", lora: str = "merged") -> Path:
    """Write ``model`` (built from ``model_config`` with ``denoiser``) as a released-layout folder; returns it.
    A LoRA-tuned UNet is written ``merged`` (one plain UNet) or ``separate`` (base UNet + ``unet_lora/``)."""
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(out).resolve()
    text_source = denoiser.text_encoder_folder()
    text_encoder = tokenizer = None
    if text_source is not None:  # read before the folder is cleared: it may be the source itself
        text_encoder = CLIPTextModel.from_pretrained(text_source, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(text_source, subfolder="tokenizer", local_files_only=True)
    prepare_folder(folder, overwrite)

    lora_subfolder = None
    if not has_lora(model.unet):
        model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    elif lora == "merged":
        merged_copy(model.unet).save_pretrained(folder / "unet", safe_serialization=True)
    else:
        base_copy(model.unet).save_pretrained(folder / "unet", safe_serialization=True)
        save_adapter(model.unet, folder / LORA_SUBFOLDER)
        lora_subfolder = LORA_SUBFOLDER
    codec_config = model.codec.export(folder)
    if text_encoder is not None:
        text_encoder.save_pretrained(folder / "text_encoder")  # safetensors (transformers' default)
        tokenizer.save_pretrained(folder / "tokenizer")
    else:
        save_file({"text_context": model.text_context.detach().float().cpu().contiguous()}, folder / TEXT_CONTEXT_FILE)
    ddim_scheduler(model).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(model_index(folder, model), indent=2) + "\n")
    header = (f"# Written by `lotus_pl export`{' from ' + source if source else ''}.\n"
              f"#   lotus_pl predict --config {folder / 'lotus_pl.yaml'} --data.predict_input <images>\n"
              f"#   lotus_pl test --config {folder / 'lotus_pl.yaml'} --config experiments/eval/<dataset>.yaml\n"
              "# The paths below are absolute: after moving the folder, edit them or override\n"
              "# --model.denoiser.init_args.path, --model.codec.init_args.path (a VAE) and\n"
              "# --model.noise_schedule.init_args.pretrained_path.\n")
    body = yaml.safe_dump(lotus_pl_config(model_config, model, codec_config, folder, lora_subfolder), sort_keys=False)
    (folder / "lotus_pl.yaml").write_text(header + body)

    stray = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(ALLOWED_SUFFIXES)]
    if stray:
        raise RuntimeError(f"export wrote files other than safetensors/json/txt/yaml into {folder}: {stray}")
    return folder


def export_main(args: list[str]) -> Path:
    """``lotus_pl export --config ... [--ckpt_path ...] --out <folder> [--overwrite]``."""
    cli = ExportCLI(args)
    config = cli.config
    ckpt_path = resolve_checkpoint(config.ckpt_path, config.trainer.default_root_dir)
    model, denoiser = build_model(cli.model_config)
    if ckpt_path is not None:
        load_weights(model, ckpt_path)
    else:
        log.warning("no --ckpt_path: exporting the weights the config builds (trained only if its denoiser loads trained weights)")
    model.eval()
    configs = ", ".join(str(c) for c in (config.get("config") or []))
    source = " + ".join(part for part in (configs, ckpt_path) if part)
    if config.format == "onnx":
        folder = Path(config.out).resolve()
        prepare_folder(folder, config.overwrite)
        if has_lora(model.unet):  # one plain UNet traces into a smaller, faster graph
            model.unet = merged_copy(model.unet)
        print(f"[export] wrote {export_onnx(model, folder)}", flush=True)
        return folder
    folder = export_model(model, cli.model_config, denoiser, config.out, config.overwrite, source, config.lora)
    print(f"[export] wrote {folder}", flush=True)
    return folder
