"""The tables of docs/prior.md from the two prior sweeps' ``lotus_pl sweep collect`` results.

    lotus_pl sweep collect runs/ablations/prior_vs_scratch && lotus_pl sweep collect runs/ablations/prior_formulation
    python docs/ablations/prior_tables.py runs/ablations/prior_vs_scratch/results.json runs/ablations/prior_formulation/results.json

Cells are mean ± std over the finished seeds (the count is in each row); baselines (untrained model,
mean training target) are the runs' own learning-report rows, averaged the same way.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DOMAINS = ("outdoor", "tabletop")


def cell(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def groups(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in results["runs"]:
        out.setdefault(run["label"], []).append(run)
    return out


def finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("status") == "finished"]


def prior_vs_scratch(results: dict) -> str:
    head = ["labelled rooms", "init", "seeds", "AbsRel", "δ1"] + [f"{d} AbsRel / δ1" for d in DOMAINS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_init: dict[str, list[dict]] = {}
    for label, runs in groups(results).items():
        done = finished(runs)
        init = "prior" if "Pretrained" in str(runs[0].get("denoiser")) else "scratch"
        by_init.setdefault(init, []).extend(done)
        zero = [f"{cell(done, f'zero_shot/{d}/abs_rel')} / {cell(done, f'zero_shot/{d}/delta1')}" for d in DOMAINS]
        lines.append(f"| {runs[0].get('num_train')} | {init} | {len(done)}/{len(runs)} | {cell(done, 'abs_rel')} | "
                     f"{cell(done, 'delta1')} | " + " | ".join(zero) + " |")
    # "untrained" is each run's own initial model: a random UNet (scratch) or the prior before fine-tuning
    rows = [(f"{init} before fine-tuning", "untrained", runs) for init, runs in by_init.items()]
    rows.append(("mean training target", "mean_target", [r for runs in by_init.values() for r in runs]))
    for name, kind, runs in rows:
        zero = [f"{cell(runs, f'zero_shot/{d}/baseline_{kind}_abs_rel')} / {cell(runs, f'zero_shot/{d}/baseline_{kind}_delta1')}"
                for d in DOMAINS]
        lines.append(f"| (baseline) | {name} | | {cell(runs, f'baseline_{kind}')} | | " + " | ".join(zero) + " |")
    return "\n".join(lines)


def describe(run: dict) -> str:
    """A short name of a prior_formulation point from its overrides."""
    formulation = str(run.get("formulation", ""))
    if "Deterministic" in formulation:
        return "Lotus-D x0, detail preserver " + ("on" if str(run.get("detail_preserver")) == "True" else "off")
    parts = ["Lotus-G"]
    parts.append({"Sample": "x0", "Velocity": "v", "Epsilon": "ε"}.get(str(run.get("parameterization", "Sample")).split("-")[0], "x0"))
    timesteps = str(run.get("timesteps", "SingleStep"))
    parts.append("10-step DDIM" if "MultiStep" in timesteps else "single step")
    if "zero_terminal_snr" in str(run.get("noise_schedule", "")):
        parts.append("zero terminal SNR")
    if "pure_noise" in formulation:
        parts.append("pure noise at t = 999")
    return ", ".join(parts)


def prior_formulation(results: dict) -> str:
    domains = [d for d in DOMAINS if any(f"zero_shot/{d}/abs_rel" in r for r in results["runs"])]  # if scored
    head = ["point (from the prior)", "seeds", "AbsRel", "δ1", "edge F1"] + [f"{d} AbsRel" for d in domains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    everything = []
    for label, runs in groups(results).items():
        done = finished(runs)
        everything += done
        row = [describe(runs[0]), f"{len(done)}/{len(runs)}", cell(done, "abs_rel"), cell(done, "delta1"), cell(done, "edge_f1")]
        lines.append("| " + " | ".join(row + [cell(done, f"zero_shot/{d}/abs_rel") for d in domains]) + " |")
    for kind in ("untrained", "mean_target"):
        name = "the prior before fine-tuning" if kind == "untrained" else "mean training target"
        row = [f"(baseline) {name}", "", cell(everything, f"baseline_{kind}"), "", ""]
        lines.append("| " + " | ".join(row + [cell(everything, f"zero_shot/{d}/baseline_{kind}_abs_rel") for d in domains]) + " |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        results = json.loads(Path(path).read_text())
        table = prior_vs_scratch if "prior_vs_scratch" in path else prior_formulation
        print(f"### {Path(path).parent.name}\n\n{table(results)}\n")


if __name__ == "__main__":
    main()
