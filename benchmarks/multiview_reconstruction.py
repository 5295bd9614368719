"""Multi-view reconstruction on rendered scenes: ground truth fused, and a checkpoint's predictions
aligned jointly, to sparse points, and view by view, then fused and scored against the true surface.

    python benchmarks/multiview_reconstruction.py --run runs/quickstart --ckpt runs/quickstart/checkpoints/last.ckpt \
        --scenes 5 --views 8 --out docs/benchmarks/multiview_reconstruction.json
    # or in parallel over disjoint seeds, then merged:
    python benchmarks/multiview_reconstruction.py ... --seed 1000 --scenes 3 --out a.json &
    python benchmarks/multiview_reconstruction.py ... --seed 1003 --scenes 2 --out b.json
    python benchmarks/multiview_reconstruction.py --ckpt - --combine a.json b.json --out docs/benchmarks/multiview_reconstruction.json

Per scene (``lotus_pl.data.multiview.render_sequence``, walk-through, seeds ``--seed`` ...): the
model predicts each view's relative disparity; background pixels (no surface: the renderer's
valid mask) are masked out for every row alike, depth beyond 50 m is dropped, and TSDF fusion
(``TSDFFusion(resolution=128)``) runs with the exact normals for the incidence test. Rows:

* ``gt``: exact depth fused (bounds the fusion itself);
* ``joint``: :class:`JointAlignment` as ``lotus_pl fuse`` runs it (no sparse points; scale from the
  metric poses; residuals in prediction units);
* ``joint_relative``: the same with residuals in relative depth (``prediction_units=False``, the
  solver's earlier form), which flattens views whose errors disagree;
* ``joint_range_prior``: relative depth with ``range_prior`` (``--range_prior``): each view's
  far/near ratio held near the 1..10 m guess's by a penalty, the other remedy for the flattening;
* ``sparse``: :class:`SparsePointAlignment` to the simulated SfM points observed in each view;
* ``per_view_oracle``: each view least-squares aligned to its own exact depth, alone (the single-view
  evaluation protocol: the best any per-view alignment can do, but blind to the other views);
* ``per_view_range``: each view mapped on its own onto a fixed 1..10 m range guess;
* ``joint_exact_affine``: :class:`JointAlignment` on the *exact* disparity of each view, made
  relative as training does (each view normalised to [0, 1] between its own 2nd and 98th
  percentiles): what the solve recovers when predictions are affine-exact, so that a gap between
  this row and ``joint`` is the model's error, not the solver's.

Scores: F-score at tau = 2 % and 1 % of the scene's extent (longest side of the true surface's
bounding box), Chamfer-L1 in % of the extent (nearest-neighbour distances capped at 20 % of the
extent, ``MAX_DISTANCE_TAUS``), normal consistency, the multi-view depth consistency and the mean
per-view AbsRel of the aligned depth.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lotus_pl.data.multiview import WalkThrough, render_sequence
from lotus_pl.geometry.fusion import TSDFFusion
from lotus_pl.geometry.multiview_align import (
    AlignmentView,
    JointAlignment,
    MetricDepth,
    RangeGuess,
    SparsePointAlignment,
    ViewAlignment,
    apply_scale_shift,
    depth_consistency,
)
from lotus_pl.geometry.recon_metrics import reconstruction_metrics, sample_mesh
from lotus_pl.geometry.single_view import fit_sparse

MAX_DEPTH = 50.0
MAX_DISTANCE_TAUS = 10  # nearest-neighbour distances capped at 10 tau = 20 % of the extent (recon_metrics)
ROWS = ("gt", "joint", "joint_relative", "joint_range_prior", "sparse", "per_view_oracle", "per_view_range", "joint_exact_affine")


def load_model(run: Path, ckpt: str):
    from lotus_pl.export import build_model, load_weights

    config = yaml.safe_load((run / "config.yaml").read_text())
    model, _ = build_model(config["model"])
    load_weights(model, ckpt)
    return model.eval()


class PerViewOracle:
    """Each view alone, least-squares (robust) aligned to its own exact depth."""

    def __init__(self, truth: list[np.ndarray]):
        self.truth = truth

    def align(self, views, cameras):
        out = []
        for v, gt in zip(views, self.truth):
            fit = fit_sparse(v.pred, v.space, np.where(gt > 0, gt, np.nan), v.mask)
            out.append(ViewAlignment(v.camera.name, v.space, fit.scale, fit.shift, fit.num_points, fit.num_inliers,
                                     fit.abs_rel, "per-view oracle"))
        return out


def relative_disparity(depth: np.ndarray) -> np.ndarray:
    """Exact disparity made relative as training normalises it: [0, 1] between the view's 2nd and 98th percentiles."""
    disparity = np.where(depth > 0, 1.0 / np.where(depth > 0, depth, 1.0), np.nan)
    lo, hi = np.nanpercentile(disparity, [2, 98])
    return (disparity - lo) / (hi - lo)


def evaluate(aligner, views, posed, truth_depths, normals, surface, tau2, tau1, fusion):
    start = time.perf_counter()
    report = aligner.align(views, posed)
    align_s = time.perf_counter() - start
    theta = np.concatenate([[a.scale, a.shift] for a in report])
    depths = [apply_scale_shift(v, a.scale, a.shift, MAX_DEPTH) for v, a in zip(views, report)]
    abs_rel = []
    for d, gt in zip(depths, truth_depths):
        ok = np.isfinite(d) & (gt > 0)
        abs_rel.append(float(np.mean(np.abs(d[ok] - gt[ok]) / gt[ok])))
    result = fusion.fuse(depths, [v.camera for v in views], normals=normals)
    points, point_normals = sample_mesh(result.mesh, 200_000)
    m = reconstruction_metrics(points, surface["points"], [tau2, tau1], point_normals, surface["normals"],
                               max_distance=MAX_DISTANCE_TAUS * tau2)
    return {"fscore_2pct": m["fscore"][0], "precision_2pct": m["precision"][0], "recall_2pct": m["recall"][0],
            "fscore_1pct": m["fscore"][1], "chamfer_l1": m["chamfer_l1"], "accuracy": m["accuracy"],
            "completeness": m["completeness"], "normal_consistency": m["normal_consistency"],
            "depth_consistency": depth_consistency(views, theta), "abs_rel": float(np.mean(abs_rel)),
            "align_s": align_s, "voxel": result.voxel_size,
            "views": [{"name": a.name, "scale": a.scale, "shift": a.shift, "inliers": a.num_inliers,
                       "residual": a.residual} for a in report]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="run folder with config.yaml")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=128, help="TSDF voxels across the scene's diagonal")
    parser.add_argument("--joint_samples", type=int, default=1000, help="JointAlignment pixels per view")
    parser.add_argument("--range_prior", type=float, default=0.01, help="JointAlignment.range_prior of the joint_range_prior row")
    parser.add_argument("--out", default="docs/benchmarks/multiview_reconstruction.json")
    parser.add_argument("--save_views", help="folder: pickle each scene's predictions, cameras and masks "
                        "(scene_<seed>.pkl, the --cache of benchmarks/joint_alignment.py)")
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all), e.g. to add one to an earlier run with --combine")
    parser.add_argument("--combine", nargs="+", help="only merge these result JSONs (other seeds, or other rows of the same "
                        "seeds) into --out")
    args = parser.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    torch.set_num_threads(1)
    model = load_model(Path(args.run), args.ckpt)
    fusion = TSDFFusion(resolution=args.resolution)
    rows = {name: [] for name in ROWS if not args.rows or name in args.rows}
    scenes = []
    for i in range(args.scenes):
        t_scene = time.perf_counter()
        seq = render_sequence(args.seed + i, WalkThrough(num_views=args.views), args.size, args.size)
        print(f"scene {i}: rendered in {time.perf_counter() - t_scene:.0f} s", flush=True)
        lo, hi = seq.surface_points.min(0), seq.surface_points.max(0)
        extent = float((hi - lo).max())
        tau2, tau1 = 0.02 * extent, 0.01 * extent
        surface = {"points": seq.surface_points, "normals": seq.surface_normals}
        truth = [v.depth.astype(np.float64) for v in seq.views]
        masks = [v.depth > 0 for v in seq.views]
        normals = [-v.normal.astype(np.float64) for v in seq.views]  # project frame -> OpenCV
        with torch.no_grad():
            images = torch.stack([torch.from_numpy(v.rgb).permute(2, 0, 1).float() / 127.5 - 1 for v in seq.views])
            preds = model.predict_image(images)[:, 0].double().numpy()
        space = model.tasks[0].encoding.space
        if args.save_views:
            Path(args.save_views).mkdir(parents=True, exist_ok=True)
            (Path(args.save_views) / f"scene_{args.seed + i}.pkl").write_bytes(pickle.dumps(
                {"preds": preds, "space": space, "cameras": seq.posed.cameras, "masks": masks, "seed": args.seed + i,
                 "ckpt": args.ckpt}))
        pred_views = [AlignmentView(p, space, c, m) for p, c, m in zip(preds, seq.posed.cameras, masks)]
        gt_views = [AlignmentView(np.where(t > 0, t, np.nan), "metric", c) for t, c in zip(truth, seq.posed.cameras)]
        exact_views = [AlignmentView(relative_disparity(t), "disparity", c, m) for t, c, m in zip(truth, seq.posed.cameras, masks)]
        cases = {"gt": (MetricDepth(), gt_views), "joint": (JointAlignment(max_samples=args.joint_samples), pred_views),
                 "joint_relative": (JointAlignment(max_samples=args.joint_samples, prediction_units=False), pred_views),
                 "joint_range_prior": (JointAlignment(max_samples=args.joint_samples, prediction_units=False,
                                                      range_prior=args.range_prior), pred_views),
                 "sparse": (SparsePointAlignment(), pred_views), "per_view_oracle": (PerViewOracle(truth), pred_views),
                 "per_view_range": (RangeGuess(1.0, 10.0), pred_views),
                 "joint_exact_affine": (JointAlignment(max_samples=args.joint_samples), exact_views)}
        for name, (aligner, views) in cases.items():
            if args.rows and name not in args.rows:
                continue
            try:
                row = evaluate(aligner, views, seq.posed, truth, normals, surface, tau2, tau1, fusion)
            except ValueError as exc:  # e.g. a misaligned row whose volume is empty: scored as failed
                row = {"error": str(exc), "fscore_2pct": 0.0, "fscore_1pct": 0.0}
            rows[name].append(row)
            print(f"scene {i} {name:>16}: F@2% {row['fscore_2pct']:.3f} F@1% {row['fscore_1pct']:.3f} "
                  f"chamfer {row.get('chamfer_l1', float('nan')):.3f} m NC {row.get('normal_consistency', float('nan')):.3f} "
                  f"consistency {row.get('depth_consistency', float('nan')):.4f} AbsRel {row.get('abs_rel', float('nan')):.3f}",
                  flush=True)
        scenes.append({"seed": args.seed + i, "extent": extent, "tau_2pct": tau2, "sparse_points": len(seq.posed.sparse.xyz)})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after every scene, so a stopped run keeps its scenes
        Path(args.out).write_text(json.dumps({"args": vars(args), "scenes": scenes, "rows": rows}, indent=1))
    summarize(scenes, rows, args.out)


def summarize(scenes: list[dict], rows: dict[str, list[dict]], out: str) -> None:
    def mean(name, key):
        values = [r[key] for r in rows[name] if key in r]
        return float(np.mean(values)) if values else float("nan")

    extents = np.array([s["extent"] for s in scenes])
    summary = {}
    print(f"\n{len(scenes)} scenes | row | F@2% | F@1% | Chamfer-L1 (% extent) | normal cons. | depth cons. | AbsRel")
    for name in rows:
        chamfer = [100 * r["chamfer_l1"] / e for r, e in zip(rows[name], extents) if "chamfer_l1" in r]
        summary[name] = {"fscore_2pct": mean(name, "fscore_2pct"), "fscore_1pct": mean(name, "fscore_1pct"),
                         "chamfer_pct_extent": float(np.mean(chamfer)) if chamfer else float("nan"),
                         "chamfer_l1_m": mean(name, "chamfer_l1"), "normal_consistency": mean(name, "normal_consistency"),
                         "depth_consistency": mean(name, "depth_consistency"), "abs_rel": mean(name, "abs_rel"),
                         "failed": sum("error" in r for r in rows[name])}
        s = summary[name]
        print(f"| {name} | {s['fscore_2pct']:.3f} | {s['fscore_1pct']:.3f} | {s['chamfer_pct_extent']:.2f} | "
              f"{s['normal_consistency']:.3f} | {s['depth_consistency']:.4f} | {s['abs_rel']:.3f} |")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"scenes": scenes, "summary": summary, "rows": rows}, indent=1))
    print(f"-> {out}")


def combine(files: list[str], out: str) -> None:
    """Merge result JSONs into one table: runs over other seeds (e.g. in parallel), or other rows of
    the same seeds (``--rows``); a row is kept where every scene has it."""
    scenes, by_seed = {}, {}
    for f in files:
        part = json.loads(Path(f).read_text())
        for k, scene in enumerate(part["scenes"]):
            scenes.setdefault(scene["seed"], scene)
            for name, values in part["rows"].items():
                if k < len(values):
                    by_seed.setdefault(scene["seed"], {})[name] = values[k]
    seeds = sorted(scenes)
    names = [n for n in ROWS if all(n in by_seed.get(s, {}) for s in seeds)]
    summarize([scenes[s] for s in seeds], {n: [by_seed[s][n] for s in seeds] for n in names}, out)


if __name__ == "__main__":
    main()
