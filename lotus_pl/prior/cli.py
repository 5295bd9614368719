"""``lotus_pl prior fit | validate --config experiments/prior/<...>.yaml``: LightningCLI over
:class:`~lotus_pl.prior.ImagePrior` and the same DataModule, with lotus_pl's CLI conventions
(configs compose left to right, dotted overrides, ``--ckpt_path resume``);
``lotus_pl prior export --run DIR --ckpt_path CKPT --out FOLDER`` exports any checkpoint of a run."""

from __future__ import annotations

import argparse

from lotus_pl.cli import LotusCLI
from lotus_pl.prior.module import ImagePrior


class PriorCLI(LotusCLI):
    model_class = ImagePrior

    def before_predict(self) -> None:
        raise SystemExit("lotus_pl prior has no predict: the prior samples images (ImagePrior.sample) and is "
                         "fine-tuned through PretrainedStableDiffusion(path=<its export>)")


def export_main(args: list[str]) -> None:
    from lotus_pl.prior.export import export_checkpoint

    parser = argparse.ArgumentParser(prog="lotus_pl prior export",
                                     description="Export a checkpoint of a prior run as a Stable Diffusion folder.")
    parser.add_argument("--run", required=True, help="the run folder (its config.yaml builds the model)")
    parser.add_argument("--ckpt_path", default="last", help="checkpoint file, or last (the run's newest)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export at --out")
    ns = parser.parse_args(args)
    folder = export_checkpoint(ns.run, ns.ckpt_path, ns.out, ns.overwrite)
    print(f"[prior] exported {folder}", flush=True)


def prior_main(args: list[str]) -> None:
    if args[:1] == ["export"]:
        return export_main(args[1:])
    PriorCLI(args=args)
