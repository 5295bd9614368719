"""``lotus_pl prior fit | validate --config experiments/prior/<...>.yaml``: LightningCLI over
:class:`~lotus_pl.prior.ImagePrior` and the same DataModule, with lotus_pl's CLI conventions
(configs compose left to right, dotted overrides, ``--ckpt_path resume``)."""

from __future__ import annotations

from lotus_pl.cli import LotusCLI
from lotus_pl.prior.module import ImagePrior


class PriorCLI(LotusCLI):
    model_class = ImagePrior

    def before_predict(self) -> None:
        raise SystemExit("lotus_pl prior has no predict: the prior samples images (ImagePrior.sample) and is "
                         "fine-tuned through PretrainedStableDiffusion(path=<its export>)")


def prior_main(args: list[str]) -> None:
    PriorCLI(args=args)
