"""Time of :class:`JointAlignment.solve` against an earlier revision of the same code, on one
rendered scene predicted by a checkpoint (what ``benchmarks/multiview_reconstruction.py`` aligns).

    python benchmarks/joint_alignment.py --run runs/quickstart --ckpt runs/quickstart/checkpoints/last.ckpt \
        --baseline_rev 8323157 --repeats 3 --out docs/benchmarks/joint_alignment.json

The baseline is ``lotus_pl/geometry/multiview_align.py`` as it was at ``--baseline_rev`` (read with
``git show``, imported as a separate module), so both sides solve the very same views in the same
process, alternating, ``--repeats`` times each; medians and their ratio are printed, and how far the
two solutions are apart (they compute the same thing; only the summation order differs).
Times are process CPU time (the machine is shared). ``--mode residuals`` times single evaluations of
all residuals instead (the solver's unit of work) and checks they agree bitwise. ``--profile`` prints the cProfile of one solve of each side. ``--cache`` keeps the rendered and
predicted views (a pickle), so that a rerun skips the rendering and the model.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import pickle
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lotus_pl.geometry import multiview_align

ROOT = Path(__file__).resolve().parents[1]


def baseline_module(rev: str):
    """``multiview_align`` as of git revision ``rev``, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:lotus_pl/geometry/multiview_align.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "multiview_align_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("multiview_align_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def scene_views(args) -> dict:
    """Predictions, cameras and masks of one rendered walk-through scene (cached in ``--cache``)."""
    if args.cache and Path(args.cache).exists():
        return pickle.loads(Path(args.cache).read_bytes())
    import torch

    from lotus_pl.data.multiview import WalkThrough, render_sequence

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from multiview_reconstruction import load_model

    torch.set_num_threads(1)
    seq = render_sequence(args.seed, WalkThrough(num_views=args.views), args.size, args.size)
    model = load_model(Path(args.run), args.ckpt)
    with torch.no_grad():
        images = torch.stack([torch.from_numpy(v.rgb).permute(2, 0, 1).float() / 127.5 - 1 for v in seq.views])
        preds = model.predict_image(images)[:, 0].double().numpy()
    case = {"preds": preds, "space": model.tasks[0].encoding.space, "cameras": seq.posed.cameras,
            "masks": [v.depth > 0 for v in seq.views], "seed": args.seed, "ckpt": args.ckpt}
    if args.cache:
        Path(args.cache).write_bytes(pickle.dumps(case))
    return case


def residual_times(args, sides: dict, views: dict, case: dict) -> None:
    """CPU time of one evaluation of all residuals (and with the Jacobian and normal equations),
    the unit the solver repeats: ~41 evaluations for the initial scale search, then 2-13 per
    iteration. The two sides' residuals are compared too (they should agree bitwise)."""
    theta = np.concatenate([sides["current"].RangeGuess().scale_shift(case["space"])] * len(case["preds"]))
    old, new = sides["baseline"], sides["current"]
    pairs, corr = old._pairs(views["baseline"], args.samples), new._correspondences(views["current"], args.samples)
    calls = {
        "baseline residuals": lambda: old._residuals(views["baseline"], pairs, theta, jacobian=False),
        "current residuals": lambda: new._residuals(corr, theta, jacobian=False),
        "baseline with Jacobian + J^T J": lambda: (lambda r, J, _: J[np.isfinite(r)].T @ J[np.isfinite(r)])(
            *old._residuals(views["baseline"], pairs, theta)),
        "current with Jacobian + J^T J": lambda: (lambda r, J: new._normal_equations(corr, r, J, np.isfinite(r), len(theta)))(
            *new._residuals(corr, theta)),
    }
    times = {name: [] for name in calls}
    for repeat in range(args.repeats):
        for name, call in calls.items():
            start = time.process_time()
            call()
            times[name].append(time.process_time() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    r_old, r_new = calls["baseline residuals"]()[0], calls["current residuals"]()[0]
    same = bool(np.array_equal(r_old, r_new, equal_nan=True))
    for name, t in median.items():
        print(f"{name}: {1000 * t:.1f} ms (median of {args.repeats}, process CPU time)")
    ratios = {"residuals": median["baseline residuals"] / median["current residuals"],
              "with_jacobian": median["baseline with Jacobian + J^T J"] / median["current with Jacobian + J^T J"]}
    print(f"speed-up: residuals {ratios['residuals']:.1f}x, with Jacobian {ratios['with_jacobian']:.1f}x; "
          f"{len(r_new)} rows, residuals bitwise equal: {same}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "seed": case["seed"], "ckpt": case["ckpt"],
                                              "views": len(case["preds"]), "rows": len(r_new), "median_cpu_s": median,
                                              "speedup": ratios, "bitwise_equal": same}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="run folder with config.yaml")
    parser.add_argument("--ckpt", default="runs/quickstart/checkpoints/last.ckpt")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=1000, help="JointAlignment max_samples (pixels per view)")
    parser.add_argument("--baseline_rev", default="8323157", help="git revision of the baseline implementation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", help="pickle of the rendered, predicted views (read if present, else written)")
    parser.add_argument("--mode", choices=["solve", "residuals"], default="solve",
                        help="time whole solves, or single evaluations of the residuals (cheap)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    case = scene_views(args)
    old = baseline_module(args.baseline_rev)
    sides = {"baseline": old, "current": multiview_align}
    views = {name: [m.AlignmentView(p, case["space"], c, k) for p, c, k in zip(case["preds"], case["cameras"], case["masks"])]
             for name, m in sides.items()}
    if args.profile:
        for name, m in sides.items():
            profile = cProfile.Profile()
            profile.runcall(m.JointAlignment(max_samples=args.samples).solve, views[name])
            print(f"--- {name}")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(14)
    if args.mode == "residuals":
        return residual_times(args, sides, views, case)
    times, thetas = {name: [] for name in sides}, {}
    for repeat in range(args.repeats):
        for name in (sides if repeat % 2 == 0 else reversed(sides)):
            start = time.process_time()
            # like for like: the baseline's objective (relative depth) and trimming schedule (x0.5)
            same = {"prediction_units": False, "cut_decay": 0.5} if name == "current" else {}
            thetas[name] = sides[name].JointAlignment(max_samples=args.samples, **same).solve(views[name])[0]
            times[name].append(time.process_time() - start)
            print(f"repeat {repeat} {name}: {times[name][-1]:.2f} s", flush=True)
    median = {name: float(np.median(t)) for name, t in times.items()}
    apart = float(np.max(np.abs(thetas["current"] - thetas["baseline"]) / np.maximum(np.abs(thetas["baseline"]), 1e-12)))
    print(f"median solve (process CPU time): baseline {median['baseline']:.2f} s, current {median['current']:.2f} s, "
          f"speed-up {median['baseline'] / median['current']:.1f}x; largest relative difference of (s, t): {apart:.1e}")
    if args.out:
        result = {"args": vars(args), "seed": case["seed"], "ckpt": case["ckpt"], "views": len(case["preds"]),
                  "cpu_times_s": times, "median_cpu_s": median, "speedup": median["baseline"] / median["current"],
                  "max_relative_theta_difference": apart, "theta": {k: v.tolist() for k, v in thetas.items()}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
