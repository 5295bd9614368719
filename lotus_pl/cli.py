"""The ``lotus_pl`` command.

``lotus_pl fit | validate | test | predict`` is Lightning's CLI over :class:`LotusModel` and
:class:`DenseDataModule`: several ``--config`` files compose left to right, ``--model.x=...`` style
dotted overrides work, and ``--print_config`` shows the resolved configuration. Every piece is
chosen by ``class_path`` in YAML, so there is no option here that switches behaviour by string.

``lotus_pl data <source> ...`` runs the dataset converters (training sources and the evaluation
benchmarks); ``lotus_pl eval-suite ...`` evaluates a model on every benchmark of a task
(:mod:`lotus_pl.evaluation.suite`); ``lotus_pl sweep ...`` expands, runs and
collects ablation sweeps (:mod:`lotus_pl.sweep`); ``lotus_pl reconstruct ...`` turns predicted depth
into point clouds and meshes (:mod:`lotus_pl.reconstruct`); ``lotus_pl export ...`` writes a trained
model as a diffusers folder in the layout of the Lotus releases (:mod:`lotus_pl.export`);
``lotus_pl prior fit ...`` pretrains a small generative prior and exports it as a Stable Diffusion
folder (:mod:`lotus_pl.prior`); ``lotus_pl demo ...`` serves a local web page to try a model on
photos and videos (:mod:`lotus_pl.demo`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lotus_pl.data.datamodule import DenseDataModule
from lotus_pl.model import LotusModel
from lotus_pl.requeue import Requeue


class LotusCLI(LightningCLI):
    """LightningCLI with lotus_pl's defaults: the resolved config is saved into the run directory
    (and overwritten on reruns into the same directory, e.g. when resuming)."""

    #: The LightningModule the configs describe (``lotus_pl prior`` trains an ``ImagePrior``).
    model_class: type = LotusModel

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            self.model_class,
            DenseDataModule,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        """Every run gets :class:`Requeue` (``--requeue.signal``, ``--requeue.command``): preemption
        saves, requeues and exits between steps, never inside a signal handler."""
        parser.add_lightning_class_args(Requeue, "requeue")

    def before_fit(self) -> None:
        """``--ckpt_path resume``: continue from the newest checkpoint of this run directory, if any
        (Lightning's ``hpc_ckpt_*`` after a SLURM requeue, or ``checkpoints/last.ckpt``); else start fresh.
        One command line then serves the first start, a requeue and a manual restart."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "resume":
            config["ckpt_path"] = newest_checkpoint(self.trainer.default_root_dir)

    def before_predict(self) -> None:
        """Predictions go to disk (``PredictionWriter``); unless asked, do not also keep every one of
        them in memory, as Lightning does by default: a long video or a big folder would not fit."""
        config = self.config_init[self.subcommand]
        if config.get("return_predictions") is None:
            config["return_predictions"] = False


def newest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint of a run: ``hpc_ckpt_*`` (a requeue) or ``checkpoints/last*``.
    A file cut short by a kill is passed over (a checkpoint is a zip archive, whose directory sits
    at its very end, so a truncated one does not open)."""
    candidates = [*Path(run_dir).glob("hpc_ckpt_*.ckpt"), *Path(run_dir).glob("checkpoints/last*.ckpt")]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_is_complete(path):
            return str(path)
    return None


def checkpoint_is_complete(path: Path) -> bool:
    """Whether a torch checkpoint file is whole: its zip directory reads and lists the pickled data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_for_evaluation(args: list[str], ckpt_path: str | Path) -> tuple[LotusModel, DenseDataModule]:
    """The model and DataModule that ``args`` (``--config`` files, dotted overrides) describe, with the
    checkpoint's weights, in eval mode and with the validation set up, for scripts that evaluate a run
    outside the Trainer (benchmarks, figures)."""
    from types import SimpleNamespace

    import torch

    cli = LotusCLI(args=[*args, "--trainer.logger=false"], run=False)
    model, datamodule = cli.model, cli.datamodule
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    # the loader decodes the ground truth of the model's tasks, which it reads from its trainer
    datamodule.trainer = SimpleNamespace(lightning_module=model, global_rank=0, world_size=1)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return model.eval(), datamodule


def data_main(args: list[str]) -> int | None:
    """``lotus_pl data <source>``: build shards and manifests; ``lotus_pl data verify <manifest>``: check them."""
    from jsonargparse import CLI

    from lotus_pl.data.multiview import make_synthetic_multiview
    from lotus_pl.data.synthetic import make_synthetic
    from lotus_pl.evaluation import datasets
    from lotus_pl.evaluation.normals import convert_normals

    if args and args[0] == "verify":
        from lotus_pl.data.manifest import verify_main

        return verify_main(args[1:])  # main() exits with it
    from lotus_pl.data.folder import make_folder
    from lotus_pl.data.hypersim import make_hypersim
    from lotus_pl.data.vkitti import make_vkitti

    converters = {
        "synthetic": make_synthetic,
        "synthetic-multiview": make_synthetic_multiview,
        "hypersim": make_hypersim,
        "vkitti": make_vkitti,
        "folder": make_folder,
        "nyuv2": datasets.convert_nyuv2,
        "kitti": datasets.convert_kitti,
        "eth3d": datasets.convert_eth3d,
        "scannet": datasets.convert_scannet,
        "diode": datasets.convert_diode,
        "normals": convert_normals,
    }
    CLI(converters, args=args, as_positional=False)


#: Commands beside Lightning's fit / validate / test / predict: name -> (module, function). Each
#: takes its own arguments; an int it returns is the exit status. Modules load only when used.
SUBCOMMANDS = {
    "data": ("lotus_pl.cli", "data_main"),
    "eval-suite": ("lotus_pl.evaluation.suite", "suite_main"),
    "sweep": ("lotus_pl.sweep", "sweep_main"),
    "reconstruct": ("lotus_pl.reconstruct", "reconstruct_main"),
    "fuse": ("lotus_pl.geometry.fuse", "fuse_main"),
    "export": ("lotus_pl.export", "export_main"),
    "prior": ("lotus_pl.prior.cli", "prior_main"),
    "demo": ("lotus_pl.demo.app", "demo_main"),
}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, function = SUBCOMMANDS[argv[0]]
        status = getattr(importlib.import_module(module), function)(argv[1:])
        if isinstance(status, int) and status:
            sys.exit(status)  # e.g. some dataset of the suite failed
        return
    LotusCLI(args=None if args is None else argv)


if __name__ == "__main__":
    main()
