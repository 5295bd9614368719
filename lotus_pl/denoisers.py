"""Build the denoising UNet (a diffusers ``UNet2DConditionModel``) and its fixed text context.

- :class:`PretrainedStableDiffusion` loads SD2's UNet from a local folder and adapts it to Lotus:
  ``conv_in`` widened for Lotus-G by repeating the pretrained weight along the input channels and
  dividing by the repeat count (so feeding the image latent k times gives the pretrained output),
  and a new projection class embedding for the task switcher. The empty-prompt CLIP embedding is
  computed once from the local text encoder, which is then dropped.
- :class:`SmallUNet` builds a small UNet from config for the embedded CPU default; its "text"
  context is a fixed random tensor, since it has no text encoder.
- :class:`DiffusersUNet` loads a trained Lotus UNet as is from a diffusers folder: the Lotus
  authors' released checkpoints, or what ``lotus_pl export`` writes. Nothing is adapted; the saved
  config must match the model's formulation, codec and task switcher, and says how it does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from lotus_pl.hub import resolve_model_path

#: Where ``lotus_pl export`` keeps the fixed context of a model without a text encoder.
TEXT_CONTEXT_FILE = "text_context.safetensors"
#: ``conv_in`` width over the latent channels -> the Lotus variant it belongs to.
LOTUS_VARIANTS = {1: "Lotus-D, model.formulation Deterministic", 2: "Lotus-G, model.formulation Generative"}


class DenoiserFactory(ABC):
    """Makes the UNet for given input/output channels and task-switch width."""

    @abstractmethod
    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> torch.nn.Module:
        """The UNet (or a module called like one, see ``lotus_pl.baselines``); ``class_embedding_dim == 0``
        means no task switcher."""

    @abstractmethod
    def text_context(self) -> Tensor:
        """The fixed cross-attention context, ``[1, tokens, cross_attention_dim]``."""

    def text_encoder_folder(self) -> Path | None:
        """The diffusers folder whose ``text_encoder/`` and ``tokenizer/`` give :meth:`text_context`,
        so an export can ship them; ``None`` when the context comes from elsewhere."""
        return None


def _with_task_switcher(config: dict, class_embedding_dim: int) -> dict:
    if class_embedding_dim:
        return {**config, "class_embed_type": "projection", "projection_class_embeddings_input_dim": class_embedding_dim}
    return {**config, "class_embed_type": None, "projection_class_embeddings_input_dim": None}


class SmallUNet(DenoiserFactory):
    """A small ``UNet2DConditionModel`` from config (the embedded default).

    Args:
        block_out_channels: channels per resolution level.
        layers_per_block: resnet layers per level.
        cross_attention: per level, whether it has (self + cross) attention blocks.
        attention_head_dim: channels per attention head.
        cross_attention_dim: width of the fixed context the UNet attends to.
        context_tokens: length of that context (2, like SD2's unpadded empty prompt).
        norm_num_groups: GroupNorm groups.
        seed: seed of the fixed context.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int] = (32, 64, 128),
        layers_per_block: int = 1,
        cross_attention: Sequence[bool] = (False, False, True),
        attention_head_dim: int = 8,
        cross_attention_dim: int = 64,
        context_tokens: int = 2,
        norm_num_groups: int = 8,
        seed: int = 0,
    ) -> None:
        if len(cross_attention) != len(block_out_channels):
            raise ValueError(
                f"cross_attention has {len(cross_attention)} entries but block_out_channels has {len(block_out_channels)}"
            )
        self.block_out_channels = tuple(block_out_channels)
        self.layers_per_block = layers_per_block
        self.cross_attention = tuple(cross_attention)
        self.attention_head_dim = attention_head_dim
        self.cross_attention_dim = cross_attention_dim
        self.context_tokens = context_tokens
        self.norm_num_groups = norm_num_groups
        self.seed = seed

    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> UNet2DConditionModel:
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.cross_attention))
        config = dict(
            sample_size=64,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn" if self.cross_attention[-1] else None,
            attention_head_dim=self.attention_head_dim,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
        )
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # the same config builds the same initial weights
        try:
            return UNet2DConditionModel(**_with_task_switcher(config, class_embedding_dim))
        finally:
            torch.random.set_rng_state(generator_state)

    def text_context(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(1, self.context_tokens, self.cross_attention_dim, generator=generator)


def _require_folder(path: Path, entries: Sequence[str], what: str, hint: str) -> None:
    missing = [e for e in entries if not (path / e).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a usable {what} (diffusers layout): missing {', '.join(missing)}. {hint}")


def _has_text_encoder(path: Path) -> bool:
    return (path / "text_encoder" / "config.json").is_file() and (path / "tokenizer").is_dir()


@torch.no_grad()
def empty_prompt_embedding(path: Path) -> Tensor:
    """The CLIP embedding of the empty prompt, unpadded ([BOS, EOS]) as Lotus uses it, from the
    ``tokenizer/`` and ``text_encoder/`` of a local diffusers folder; ``[1, 2, hidden]``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids  # [BOS, EOS]
    return encoder(ids)[0].float()


def expand_conv_in(weight: Tensor, in_channels: int) -> Tensor:
    """Widen a pretrained ``conv_in`` weight ``[O, C, k, k]`` to ``in_channels`` = k·C inputs.

    The weight is repeated k times along the input channels and divided by k, so an input made of
    the original input repeated k times gives exactly the pretrained output (Lotus-G, Marigold).
    """
    channels = weight.shape[1]
    if in_channels % channels:
        raise ValueError(f"cannot expand conv_in from {channels} to {in_channels} input channels")
    repeats = in_channels // channels
    return weight.repeat(1, repeats, 1, 1) / repeats


class PretrainedStableDiffusion(DenoiserFactory):
    """The UNet of a local Stable Diffusion folder, adapted to Lotus.

    Args:
        path: diffusers folder with ``unet/``, ``text_encoder/`` and ``tokenizer/``, or a Hugging
            Face Hub id (``stabilityai/stable-diffusion-2-base[@revision]``, see ``lotus_pl.hub``).
        unet_subfolder: the UNet's subfolder.
    """

    def __init__(self, path: str, unet_subfolder: str = "unet") -> None:
        self.path = resolve_model_path(path)
        self.unet_subfolder = unet_subfolder
        _require_folder(self.path, [f"{unet_subfolder}/config.json", "text_encoder/config.json", "tokenizer"],
                        "Stable Diffusion folder", "Point the config at a local copy of stabilityai/stable-diffusion-2 "
                        "(base) or at its Hub id (fetched once into the Hugging Face cache), or at an embedded prior "
                        "written by `lotus_pl prior fit --config experiments/prior/embedded.yaml`.")

    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> UNet2DConditionModel:
        pretrained = UNet2DConditionModel.from_pretrained(self.path, subfolder=self.unet_subfolder, local_files_only=True)
        if out_channels != pretrained.config.out_channels:
            raise ValueError(f"the pretrained UNet predicts {pretrained.config.out_channels} channels, the codec needs {out_channels}")
        state = pretrained.state_dict()
        state["conv_in.weight"] = expand_conv_in(state["conv_in.weight"], in_channels)
        config = _with_task_switcher({**pretrained.config, "in_channels": in_channels}, class_embedding_dim)
        unet = UNet2DConditionModel.from_config(config)
        missing, unexpected = unet.load_state_dict(state, strict=False)
        new = [k for k in missing if not k.startswith("class_embedding.")]
        if new or unexpected:
            raise RuntimeError(f"pretrained UNet at {self.path} does not match its config: missing {new}, unexpected {unexpected}")
        return unet

    def text_context(self) -> Tensor:
        return empty_prompt_embedding(self.path)

    def text_encoder_folder(self) -> Path | None:
        return self.path


def _conv_in(in_channels: int, latent_channels: int) -> str:
    """``conv_in`` width in words, naming the Lotus variant it belongs to."""
    ratio, remainder = divmod(in_channels, latent_channels)
    variant = LOTUS_VARIANTS.get(ratio) if not remainder else None
    return f"{in_channels} input channels" + (f" ({variant})" if variant else "")


def _task_switcher(width: int) -> str:
    return f"a task switcher (projection class embedding of width {width})" if width else "no task switcher (no class embedding)"


def _saved_switch_width(config: dict, config_file: Path) -> int:
    kind = config.get("class_embed_type")
    if kind is None:
        return 0
    if kind != "projection":
        raise ValueError(f"{config_file}: class_embed_type {kind!r} is not lotus_pl's task switcher (a 'projection' class embedding)")
    return int(config["projection_class_embeddings_input_dim"])


class DiffusersUNet(DenoiserFactory):
    """A trained Lotus UNet, loaded as is from a local diffusers folder.

    This is how lotus_pl runs the Lotus authors' released checkpoints (Lotus-G: 8-channel
    ``conv_in``; Lotus-D: 4; both with the projection class embedding of the task switcher) and the
    folders ``lotus_pl export`` writes. Unlike :class:`PretrainedStableDiffusion` nothing is widened
    or added: the saved config must already match what the model asks for, else :meth:`build`
    says which setting differs. The text context is the empty-prompt CLIP embedding when the folder
    has ``text_encoder/`` and ``tokenizer/``, else the tensor in ``text_context.safetensors``.

    Args:
        path: the diffusers folder (``unet/``, and ``text_encoder/`` + ``tokenizer/`` or ``text_context.safetensors``),
            or a Hugging Face Hub id (``jingheya/lotus-depth-g-v2-1-disparity[@revision]``, see ``lotus_pl.hub``).
        subfolder: the UNet's subfolder.
        lora_subfolder: a LoRA adapter to attach, saved beside the base UNet (``lotus_pl export
            --lora separate`` writes ``unet_lora``; needs peft).
    """

    def __init__(self, path: str, subfolder: str = "unet", lora_subfolder: str | None = None) -> None:
        self.path = resolve_model_path(path)
        self.subfolder = subfolder
        self.lora_subfolder = lora_subfolder
        _require_folder(self.path, [f"{subfolder}/config.json"], "trained Lotus UNet folder",
                        "Point model.denoiser.init_args.path at a local copy of a released Lotus checkpoint "
                        "or its Hub id (e.g. jingheya/lotus-depth-g-v2-1-disparity), or at a folder written by `lotus_pl export`.")

    def build(self, in_channels: int, out_channels: int, class_embedding_dim: int) -> UNet2DConditionModel:
        config_file = self.path / self.subfolder / "config.json"
        config = UNet2DConditionModel.load_config(self.path, subfolder=self.subfolder, local_files_only=True)
        saved_in, saved_out = int(config["in_channels"]), int(config["out_channels"])
        if saved_out != out_channels:
            raise ValueError(f"{config_file}: the saved UNet predicts {saved_out} latent channels but the codec's latent has "
                             f"{out_channels}; use the codec the model was trained with (model.codec)")
        if saved_in != in_channels:
            raise ValueError(f"{config_file}: the saved UNet has a conv_in of {_conv_in(saved_in, saved_out)} but the model "
                             f"config asks for {_conv_in(in_channels, out_channels)}; set model.formulation to match the folder")
        saved_switch = _saved_switch_width(config, config_file)
        if saved_switch != class_embedding_dim:
            raise ValueError(f"{config_file}: the saved UNet has {_task_switcher(saved_switch)} but the model config asks for "
                             f"{_task_switcher(class_embedding_dim)}; set model.detail_preserver to match the folder "
                             "(the released Lotus models have the switch: detail_preserver: true)")
        unet, info = UNet2DConditionModel.from_pretrained(self.path, subfolder=self.subfolder, local_files_only=True,
                                                          torch_dtype=torch.float32, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        if problems:
            raise RuntimeError(f"{self.path / self.subfolder}: the saved weights do not match config.json: {problems}")
        if self.lora_subfolder is not None:
            from lotus_pl.lora import load_adapter

            load_adapter(unet, self.path / self.lora_subfolder)
        return unet

    def text_context(self) -> Tensor:
        if _has_text_encoder(self.path):
            return empty_prompt_embedding(self.path)
        file = self.path / TEXT_CONTEXT_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} has no text context for the UNet: neither text_encoder/ + tokenizer/ "
                                    f"(the Lotus releases) nor {TEXT_CONTEXT_FILE} (lotus_pl export of a model without a text encoder)")
        from safetensors.torch import load_file

        tensors = load_file(file)
        if "text_context" not in tensors:
            raise KeyError(f"{file} has no tensor 'text_context' (it has {sorted(tensors)})")
        return tensors["text_context"].float()

    def text_encoder_folder(self) -> Path | None:
        return self.path if _has_text_encoder(self.path) else None
