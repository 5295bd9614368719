"""Callbacks: writing predictions to disk (with videos' temporal consistency), and the end-of-run
learning report.

:class:`LearningReport` answers "did the model learn from the image?" on the validation shards:
it scores the untrained model and an image-independent baseline (the mean training target, decoded
and aligned per image exactly like a prediction) before training, the trained model after, and
prints all three. A model that beats the untrained one but not the mean target has only learned
the dataset's average layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lotus_pl.data.videos import output_stem
from lotus_pl.ensembles import uncertainty_key
from lotus_pl.ensembles.confidence import save_uncertainty
from lotus_pl.tasks.depth import Depth
from lotus_pl.temporal import TemporalConsistencyMeter

log = logging.getLogger(__name__)


class PredictionWriter(Callback):
    """Write each prediction of ``lotus_pl predict`` next to its input's name, at the input's size.

    A video frame ``clip.mp4#000012`` is written as ``clip_000012_*``. With an ensemble, each task's
    uncertainty is also written as ``<name>_<task>_uncertainty.npy`` and a colour-mapped ``.png``. For depth predicted on videos,
    it also measures each video's temporal consistency (:mod:`lotus_pl.temporal`) and at the end
    writes ``<video stem>_temporal.json`` and prints the figure.

    Args:
        output_dir: folder for the outputs (one set of files per input image or video frame).
        temporal_size: longest edge the frames are downsampled to for the temporal-consistency
            figure (0: no figure).
    """

    def __init__(self, output_dir: str = "predictions", temporal_size: int = 256) -> None:
        self.output_dir = Path(output_dir)
        self.temporal_size = temporal_size
        self.sequences: dict[str, TemporalConsistencyMeter] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sequences = {}

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: dict[str, Any],
                             batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(prediction["path"]):
            files = []
            for task in pl_module.tasks:  # a joint model writes every task's files
                pred = prediction[task.name][i : i + 1]
                if "sequence" in batch and self.temporal_size and isinstance(task, Depth):
                    meter = self.sequences.setdefault(
                        batch["sequence"][i], TemporalConsistencyMeter(task.encoding.space, self.temporal_size))
                    meter.update(pred[0, 0], batch["frame"][i])
                if "size" in batch:  # at the original size (the loader may have resized the input)
                    pred = task.resize_for(pred.float(), tuple(int(n) for n in batch["size"][i]))
                files += task.save(pred[0].float().cpu().numpy(), self.output_dir, output_stem(path))
                spread = prediction.get(uncertainty_key(task.name))
                if spread is not None:  # an ensemble's <name>_<task>_uncertainty.npy / .png
                    spread = spread[i : i + 1].float()
                    if "size" in batch:
                        spread = F.interpolate(spread, size=tuple(int(n) for n in batch["size"][i]), mode="bilinear", align_corners=False)
                    files += save_uncertainty(spread[0, 0].cpu().numpy(), self.output_dir, output_stem(path), task.name)
            log.info("%s -> %s", path, ", ".join(f.name for f in files))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for sequence, meter in self.sequences.items():
            result = {"sequence": sequence, **meter.compute()}
            out = self.output_dir / f"{Path(sequence).stem}_temporal.json"
            out.write_text(json.dumps(result, indent=2))
            figure = "n/a (a single frame)" if result["mean_change"] is None else f"{result['mean_change']:.4f}"
            print(f"temporal consistency of {sequence} ({result['frames']} frames): mean frame-to-frame change "
                  f"of aligned relative {result['space']} = {figure} of its range -> {out}", flush=True)


@torch.no_grad()
def evaluate(pl_module: LightningModule, dataloader, predict) -> dict[str, float]:
    """Score ``predict(batch) -> {task name: prediction}`` on every batch of ``dataloader`` with each
    task's metric; keys are the metric names, prefixed ``<task>/`` for a joint model."""
    metrics = {task.name: task.metric().to(pl_module.device) for task in pl_module.tasks}
    for batch in dataloader:
        batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
        preds = predict(batch)
        for task in pl_module.tasks:
            metrics[task.name].update(preds[task.name], batch[task.gt_key], pl_module.valid_mask(batch, task))
    return {f"{pl_module.metric_prefix(task)}{k}": float(v)
            for task in pl_module.tasks for k, v in metrics[task.name].compute().items()}


class LearningReport(Callback):
    """Score untrained, mean-target and trained models on the validation set; print and save them.

    The same three are scored on every held-out set of the DataModule's ``zero_shot`` (saved under
    ``"zero_shot"``: name -> row -> metrics), so a run says how it transfers beyond its training domain.

    Args:
        mean_target_batches: training batches averaged into the mean-target baseline.
    """

    def __init__(self, mean_target_batches: int = 50) -> None:
        self.mean_target_batches = mean_target_batches
        self.baselines: dict[str, dict[str, dict[str, float]]] = {}  # row -> evaluation set -> metrics

    def state_dict(self) -> dict[str, Any]:
        return {"baselines": self.baselines}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # checkpoints written before zero-shot sets existed hold row -> metrics (the validation set's)
        self.baselines = {row: scores if "val" in scores else {"val": scores}
                          for row, scores in state_dict["baselines"].items()}

    def _mean_targets(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """Each task's annotation image averaged over the first training batches."""
        totals: dict[str, torch.Tensor] = {}
        count = 0
        for i, batch in enumerate(trainer.datamodule.train_dataloader()):
            if i == self.mean_target_batches:
                break
            for task in pl_module.tasks:
                gt = batch[task.gt_key].to(pl_module.device)
                encoded = task.encode(gt, task.valid_mask(gt)).sum(0)
                totals[task.name] = encoded + totals[task.name] if task.name in totals else encoded
            count += batch["image"].shape[0]
        return {name: total / count for name, total in totals.items()}

    @staticmethod
    def _eval_sets(trainer: Trainer) -> dict[str, Any]:
        """``"val"`` and each zero-shot set's loader factory (loaders are made when scored)."""
        datamodule = trainer.datamodule
        sets = {"val": datamodule.val_dataloader}
        for name in getattr(datamodule, "zero_shot", {}):
            sets[f"zero_shot/{name}"] = lambda name=name: datamodule.zero_shot_dataloader(name)
        return sets

    def _score(self, trainer: Trainer, pl_module: LightningModule, predict) -> dict[str, dict[str, float]]:
        return {key: evaluate(pl_module, loader(), predict) for key, loader in self._eval_sets(trainer).items()}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.baselines:  # resumed run: the baselines were measured before the interruption
            return
        pl_module.eval()
        self.baselines["untrained"] = self._score(trainer, pl_module, lambda b: pl_module.predict_all(b["image"]))
        means = self._mean_targets(trainer, pl_module)

        def predict_mean(batch):
            image = batch["image"]
            out = {}
            for task in pl_module.tasks:
                decoded = task.decode(means[task.name][None].expand(image.shape[0], -1, -1, -1))
                out[task.name] = task.resize_for(decoded, tuple(image.shape[-2:]))
            return out

        self.baselines["mean_target"] = self._score(trainer, pl_module, predict_mean)
        pl_module.train()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """With weight averaging (EMA), also score the raw weights before the average replaces them.
        List this callback before the averaging callback so that its ``on_train_end`` runs first."""
        if any(isinstance(c, WeightAveraging) for c in trainer.callbacks):
            pl_module.eval()
            self.raw = evaluate(pl_module, trainer.datamodule.val_dataloader(), lambda b: pl_module.predict_all(b["image"]))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.eval()
        scores = {row: dict(by_set) for row, by_set in self.baselines.items()}
        scores["trained"] = self._score(trainer, pl_module, lambda b: pl_module.predict_all(b["image"]))
        results: dict[str, Any] = {row: by_set["val"] for row, by_set in scores.items()}
        if getattr(self, "raw", None) is not None:
            results["trained_raw_weights"] = self.raw
        zero_shot = {key.split("/", 1)[1] for by_set in scores.values() for key in by_set if key != "val"}
        if zero_shot:
            results["zero_shot"] = {name: {row: by_set[f"zero_shot/{name}"] for row, by_set in scores.items()
                                           if f"zero_shot/{name}" in by_set} for name in sorted(zero_shot)}
        results["global_step"] = trainer.global_step
        out = Path(trainer.log_dir or trainer.default_root_dir) / "learning_report.json"  # a collective: all ranks
        self._report(pl_module, results, out)

    @rank_zero_only
    def _report(self, pl_module: LightningModule, results: dict[str, Any], out: Path) -> None:
        lines, headlines = [], []
        for task in pl_module.tasks:
            prefix = pl_module.metric_prefix(task)
            own = {row: {k[len(prefix):]: v for k, v in results[row].items() if k.startswith(prefix)}
                   for row in ("untrained", "mean_target", "trained_raw_weights", "trained") if row in results}
            name, _ = task.headline(own["trained"])
            headlines.append(prefix + name)
            lines.append(f"Learning report ({task.name}, validation set, step {results['global_step']}):")
            for row, metrics in own.items():
                extra = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != name and "/" not in k)
                lines.append(f"  {row:<19} {name}={metrics[name]:.4f}  {extra}")
            if "untrained" in own and "mean_target" in own:
                trained = own["trained"][name]
                lines.append(
                    f"  trained / mean_target = {trained / max(own['mean_target'][name], 1e-12):.3f}   "
                    f"trained / untrained = {trained / max(own['untrained'][name], 1e-12):.3f}"
                )
        for name, rows in results.get("zero_shot", {}).items():
            lines.append(f"Zero-shot on {name}:")
            for row, metrics in rows.items():
                lines.append(f"  {row:<19} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/" not in k))
        rank_zero_info("\n".join(lines))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**results, "headline": headlines}, indent=2))  # sweeps tabulate these
