"""Figure: depth edges with and without the detail preserver (issue 15, claim 3).

For the first validation scenes, one row each: the image, the exact depth's edges, and for each run
its aligned depth and its edges coloured against the truth (green: a true edge found within the
tolerance, red: a predicted edge with no true edge near, blue: a true edge missed). Edges and their
matching are those of :mod:`lotus_pl.edge_metrics` (the ``edge_f1`` column of the sweep tables)::

    python docs/figures/detail_preserver_edges.py --out docs/figures/detail_preserver_edges.png \\
        --run "off=runs/ablations/prior_formulation/000_..._seed0" --run "on=runs/ablations/prior_formulation/001_..._seed0"

Each ``--run label=dir`` is a ``lotus_pl fit`` run directory (its ``config.yaml`` and
``checkpoints/last.ckpt`` are read).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from lotus_pl.cli import load_for_evaluation
from lotus_pl.edge_metrics import _near, depth_edges
from lotus_pl.visualize import colorize


def load_run(run_dir: Path):
    """The run's model (its last checkpoint) and validation loader."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):  # the fit subcommand's own options, saved with the config
        config.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        model, datamodule = load_for_evaluation(["--config", str(path)], run_dir / "checkpoints" / "last.ckpt")
    return model, datamodule.val_dataloader()


def edge_overlay(pred_edges: torch.Tensor, true_edges: torch.Tensor, tolerance: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] from ``[B, 1, H, W]`` edges: green predicted edges with a true edge
    within ``tolerance`` pixels, red predicted edges without, blue true edges that none found."""
    hit = pred_edges & _near(true_edges, tolerance)
    missed = true_edges & ~_near(pred_edges, tolerance)
    return torch.cat([pred_edges & ~hit, hit, missed], dim=1).float()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="label=run_dir, in column order")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--scale", type=int, default=3, help="pixel repeat of the 64 px images in the figure")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from torchvision.utils import save_image

    columns: list[torch.Tensor] = []  # each [B, 3, H, W]
    first = True
    for spec in args.run:
        label, _, run_dir = spec.partition("=")
        model, loader = load_run(Path(run_dir))
        task = model.task
        edges = task.metric()["edges"]  # the run's DepthEdgeMetrics (edge_metrics: true in the ablations)
        batch = next(iter(loader))
        n = args.images
        image, gt = batch["image"][:n], batch[task.gt_key][:n].double()
        valid = torch.isfinite(gt) & (gt > edges.min_depth) & (gt < edges.max_depth)
        mask = model.valid_mask(batch, task)
        if mask is not None:
            valid &= mask[:n].bool()
        pred = model.predict_all(image)[task.name]
        aligned = edges.alignment(pred.double(), gt, valid).clamp(edges.min_depth, edges.max_depth)
        true_edges = depth_edges(gt, valid, edges.threshold)
        found = depth_edges(aligned, valid, edges.threshold)
        if first:
            columns += [(image.clamp(-1, 1) + 1) / 2, true_edges.float().expand(-1, 3, -1, -1)]
            first = False
        columns += [colorize(1 / aligned, valid), edge_overlay(found, true_edges, edges.tolerance)]
        print(f"{label}: {run_dir}")
    grid = torch.cat([torch.cat(list(col), dim=-2) for col in columns], dim=-1)  # rows: scenes
    grid = grid.repeat_interleave(args.scale, -1).repeat_interleave(args.scale, -2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, args.out)
    print(f"wrote {args.out}: rows = validation scenes; columns = image, true edges, then per run: depth, edges")


if __name__ == "__main__":
    main()
