"""Does ensembling pay off? Accuracy, uncertainty quality and cost of lotus_pl's ensembles.

For a trained checkpoint and its validation set (the quickstart's procedural scenes by default), each
setting predicts every image and reports AbsRel and δ1 (per-image least squares in disparity space,
as the learning report), the AUSE / AURG of the ensemble's uncertainty for AbsRel, RMSE and 1 − δ1
(lotus_pl.ensembles.sparsification, per-image curves at 50 removal fractions), the AUSE of a random
uncertainty (uniform noise) and of the oracle (ranking by the true AbsRel error, 0 by definition for
AbsRel; its AURG is the most any uncertainty could gain), and the time per image as a ratio to one
member (the plain single call), measured in the same run, split into the model calls and the
combination (Marigold's BFGS alignment for depth).

    python benchmarks/ensembles.py --config experiments/quickstart.yaml --config experiments/variants/quickstart_lotus_g.yaml \\
        --ckpt_path runs/quickstart_lotus_g/checkpoints/last.ckpt --settings g --out docs/benchmarks/ensembles_lotus_g.json
    python benchmarks/ensembles.py --config experiments/quickstart.yaml \\
        --ckpt_path runs/quickstart/checkpoints/last.ckpt --settings d --out docs/benchmarks/ensembles_lotus_d.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from lotus_pl.cli import load_for_evaluation
from lotus_pl.ensembles import DepthPixelErrors, Ensemble, HorizontalFlip, MeanAlign, Rescale, SparsificationMetrics

#: name -> the ensemble (None: one plain call, the baseline of the time ratios)
SETTINGS: dict[str, dict[str, Ensemble | None]] = {
    "g": {
        "single call": None,
        "ensemble 4 (median)": Ensemble(size=4),
        "ensemble 10 (median)": Ensemble(size=10, chunk_size=5),
        "ensemble 10 (mean)": Ensemble(size=10, chunk_size=5, reductions={"depth": MeanAlign()}),
        "flip TTA (2 members)": Ensemble(size=1, tta=[HorizontalFlip()]),
    },
    "d": {
        "single call": None,
        "flip TTA (2 members)": Ensemble(size=1, tta=[HorizontalFlip()]),
        "flip + rescale 96/160 (4 members)": Ensemble(size=1, tta=[HorizontalFlip(), Rescale([96, 160])]),
    },
}


def load(configs: list[str], ckpt_path: str):
    """The model and validation loader of ``configs``, with the checkpoint's weights."""
    model, datamodule = load_for_evaluation([a for c in configs for a in ("--config", c)], ckpt_path)
    return model, datamodule.val_dataloader()


@torch.no_grad()
def run_setting(model, batches: list[dict[str, torch.Tensor]], ensemble: Ensemble | None, steps: int, seed: int) -> dict[str, Any]:
    task = model.task
    depth = task.metric()
    errors = DepthPixelErrors(task.encoding.alignment(), task.min_depth, task.max_depth)
    uncertainty = {k: SparsificationMetrics(errors, steps) for k in ("ensemble", "random", "oracle")}
    generator = torch.Generator().manual_seed(seed)
    model_seconds = combine_seconds = 0.0
    images = 0
    for batch in batches:
        image, gt, valid = batch["image"], batch[task.gt_key], model.valid_mask(batch, task)
        start = time.perf_counter()
        if ensemble is None:
            pred = model.predict_all(image)[task.name]
            spread = torch.zeros_like(pred)
            model_seconds += time.perf_counter() - start
        else:
            members = ensemble.members(model, image)[task.name]
            middle = time.perf_counter()
            pred, spread = ensemble.reduction(task)(members)
            model_seconds += middle - start
            combine_seconds += time.perf_counter() - middle
        images += image.shape[0]
        depth.update(pred, gt, valid)
        per_pixel, _ = errors(pred, gt, valid)
        uncertainty["ensemble"].update(pred, gt, valid, spread)
        uncertainty["random"].update(pred, gt, valid, torch.rand(spread.shape, generator=generator))
        uncertainty["oracle"].update(pred, gt, valid, per_pixel[:, :1])
    scores = {k: float(v) for k, v in depth.compute().items()}
    return {
        "members": 1 if ensemble is None else ensemble.num_members,
        "ensemble": repr(ensemble),
        "abs_rel": scores["abs_rel"], "delta1": scores["delta1"], "rmse": scores["rmse"],
        "uncertainty": {k: {n: float(v) for n, v in m.compute().items()} for k, m in uncertainty.items()},
        "seconds_per_image": (model_seconds + combine_seconds) / images,
        "model_seconds_per_image": model_seconds / images,
        "combine_seconds_per_image": combine_seconds / images,
        "images": images,
    }


def table(results: dict[str, Any]) -> str:
    base = results["settings"]["single call"]["seconds_per_image"]
    lines = ["| setting | members | AbsRel | δ1 | AUSE AbsRel (ens / random / oracle) | AURG AbsRel (ens / oracle) | "
             "AUSE 1−δ1 (ens / random) | AUSE RMSE (ens / random) | time / image vs one member (model + combine) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["settings"].items():
        u = r["uncertainty"]
        lines.append(
            f"| {name} | {r['members']} | {r['abs_rel']:.4f} | {r['delta1']:.4f} | "
            f"{u['ensemble']['ause_abs_rel']:.4f} / {u['random']['ause_abs_rel']:.4f} / {u['oracle']['ause_abs_rel']:.4f} | "
            f"{u['ensemble']['aurg_abs_rel']:.4f} / {u['oracle']['aurg_abs_rel']:.4f} | "
            f"{u['ensemble']['ause_bad_delta1']:.4f} / {u['random']['ause_bad_delta1']:.4f} | "
            f"{u['ensemble']['ause_rmse']:.4f} / {u['random']['ause_rmse']:.4f} | "
            f"{r['seconds_per_image'] / base:.2f}× ({r['model_seconds_per_image'] / base:.2f} + {r['combine_seconds_per_image'] / base:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="model config(s), composed left to right")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--settings", choices=sorted(SETTINGS), required=True, help="g: seeds and flip; d: TTA")
    parser.add_argument("--only", default=None, help="comma-separated setting names (default: all of --settings)")
    parser.add_argument("--num_images", type=int, default=100, help="validation images used (the first N)")
    parser.add_argument("--steps", type=int, default=50, help="sparsification removal fractions")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, loader = load(args.config, args.ckpt_path)
    batches, count = [], 0
    for batch in loader:
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        take = min(args.num_images - count, batch["image"].shape[0])
        batches.append({k: v[:take] for k, v in batch.items()})
        count += take
        if count >= args.num_images:
            break
    settings = SETTINGS[args.settings]
    names = ["single call"] + [n for n in (args.only.split(",") if args.only else settings) if n != "single call"]
    results: dict[str, Any] = {"configs": args.config, "ckpt_path": args.ckpt_path, "images": count,
                               "threads": torch.get_num_threads(), "settings": {}}
    with torch.no_grad():
        model.predict_all(batches[0]["image"])  # warm-up, so that the first setting is not charged for it
    for name in names:
        start = time.perf_counter()
        results["settings"][name] = run_setting(model, batches, settings[name], args.steps, seed=0)
        print(f"[ensembles] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    # the single call once more at the end: how much the time of the same work drifted during the run
    # (a shared machine); the ratios use the first measurement
    again = run_setting(model, batches, None, args.steps, seed=0)
    results["single_call_repeat_seconds_per_image"] = again["seconds_per_image"]
    text = table(results) + (f"\n\nsingle call measured again at the end: "
                             f"{results['single_call_repeat_seconds_per_image'] / results['settings']['single call']['seconds_per_image']:.2f}× "
                             f"its first time ({results['images']} images, {results['threads']} thread(s))")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**results, "table": text}, indent=2))
    return results


if __name__ == "__main__":
    main()
