"""The pretrained prior as a Stable Diffusion folder, so fine-tuning loads it exactly as it loads SD2.

:class:`~lotus_pl.denoisers.PretrainedStableDiffusion` reads ``unet/``, ``text_encoder/`` and
``tokenizer/`` (and :class:`~lotus_pl.schedules.NoiseSchedule` reads ``scheduler/``) from an SD2
folder. :func:`export_prior` writes the same parts for an :class:`~lotus_pl.prior.ImagePrior`:

- ``unet/``: the prior's UNet (in = out = latent channels, no class embedding), safetensors;
- ``text_encoder/`` + ``tokenizer/``: the tiny CLIP whose empty-prompt embedding the prior was
  trained on (rewritten from its seed and checked to give that embedding);
- ``scheduler/``: a DDIMScheduler with the prior's alpha_bar and ``prediction_type``;
- ``model_index.json``: the pipeline index (no ``vae``: the embedded codec has no weights; its
  config is recorded as ``lotus_pl_codec``).

:class:`PriorExport` does this at the end of ``lotus_pl prior fit`` (after EMA, if any, has put
the averaged weights in place) and saves a grid of samples beside the checkpoints;
:func:`export_checkpoint` (``lotus_pl prior export``) does it for any checkpoint of a run, e.g. to
look at the prior part-way through a long run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from lotus_pl.denoisers import empty_prompt_embedding
from lotus_pl.export import ALLOWED_SUFFIXES, model_arguments, prepare_folder, resolve_checkpoint
from lotus_pl.prior.module import ImagePrior


def export_prior(prior: ImagePrior, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``prior`` as an SD-layout folder at ``out``; returns the folder."""
    from diffusers import __version__

    folder = Path(out).resolve()
    prepare_folder(folder, overwrite)
    prior.unet.save_pretrained(folder / "unet", safe_serialization=True)
    prior.text_encoder.write(folder)
    if not torch.equal(empty_prompt_embedding(folder), prior.text_context.detach().cpu().float()):
        raise RuntimeError(f"the text encoder written to {folder} does not give the context the prior was trained on")
    prior.scheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": __version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
        "lotus_pl_codec": prior.codec.export(folder),
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    stray = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(ALLOWED_SUFFIXES)]
    if stray:
        raise RuntimeError(f"export wrote files other than safetensors/json/txt/yaml into {folder}: {stray}")
    return folder


class PriorExport(Callback):
    """Export the prior when ``fit`` ends, and save a sample grid.

    Args:
        out: the folder to write (replaced if it holds a previous export).
        samples: images in ``<run dir>/samples.png`` (0: none).
        sample_steps: DDIM steps for them.
    """

    def __init__(self, out: str, samples: int = 64, sample_steps: int = 50) -> None:
        self.out, self.samples, self.sample_steps = out, samples, sample_steps

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, ImagePrior):
            raise TypeError(f"PriorExport exports an ImagePrior, not a {type(pl_module).__name__}")
        folder = export_prior(pl_module, self.out, overwrite=True)
        print(f"[prior] exported {folder}", flush=True)
        shape = getattr(pl_module, "_latent_shape", None)
        if self.samples and shape is not None:
            import torchvision

            images = pl_module.sample(self.samples, shape, self.sample_steps)
            path = Path(trainer.default_root_dir) / "samples.png"
            torchvision.utils.save_image((images + 1) / 2, path, nrow=int(self.samples ** 0.5))
            print(f"[prior] samples: {path}", flush=True)


def export_checkpoint(run: str | Path, ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export checkpoint ``ckpt`` (a file, or ``last``: the run's newest) of the prior run in folder
    ``run`` (its ``config.yaml`` says how to build the model). With EMA the checkpoint's
    ``state_dict`` is the average (Lightning's ``WeightAveraging`` saves it there), so this exports
    what :class:`PriorExport` would have."""
    config_file = Path(run) / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not a prior run folder (no config.yaml)")
    model_config = yaml.safe_load(config_file.read_text()).get("model")
    if not model_config:
        raise KeyError(f"{config_file} has no 'model' section")
    ckpt = resolve_checkpoint(str(ckpt), str(run))
    prior = ImagePrior(**model_arguments(ImagePrior, model_config))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise KeyError(f"{ckpt} is not a Lightning checkpoint: it has no 'state_dict'")
    try:
        prior.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise RuntimeError(f"{ckpt} does not fit the model of {config_file}: {exc}") from exc
    return export_prior(prior.eval(), out, overwrite=overwrite)
