"""Ablation sweeps: expand a grid into per-run configs, run them (SLURM array or locally), collect one table.

A spec names base configs, a grid of dotted overrides (their cartesian product), optional explicit
points, seeds, and SLURM resources::

    name: parameterization_x_steps
    base: [experiments/quickstart.yaml]
    output_dir: runs/ablations/parameterization_x_steps
    seeds: [0, 1]
    fixed: {trainer.max_steps: 600}
    grid:
      model.parameterization:
        - {class_path: lotus_pl.parameterizations.Epsilon}
        - {class_path: lotus_pl.parameterizations.Sample}
    slurm: {gpus_per_node: 8, time: "24:00:00"}

``lotus_pl sweep expand spec.yaml`` writes, per point, ``<output_dir>/<NNN>_<label>/overrides.yaml``
(a config composed after the bases, which also points the run directory there), plus
``sweep.json`` (the plan), ``sweep.sbatch`` (a SLURM array: one task per point, ``srun lotus_pl fit``
under Lightning's SLURM support, SIGUSR1 before the time limit so that :class:`lotus_pl.requeue.Requeue`
checkpoints between steps and requeues, and an exact resume on restart) and ``run_local.sh``. SLURM and Lightning do the distribution;
nothing here schedules. ``lotus_pl sweep run <dir>`` runs the points one process each on a
workstation; ``lotus_pl sweep collect <dir>`` reads finished and unfinished runs into one table.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PLAN = "sweep.json"
REPORT = "learning_report.json"


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"model.lr": 1}`` -> ``{"model": {"lr": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r} conflicts with another override of {part!r}")
        node[leaf] = value
    return out


def short(value: Any) -> str:
    """A readable label for an override value: class names without module, init args inline."""
    if isinstance(value, dict) and "class_path" in value:
        name = value["class_path"].rsplit(".", 1)[-1]
        args = value.get("init_args") or {}
        return name + "".join(f"-{k}={short(v)}" for k, v in args.items())
    if isinstance(value, (list, tuple)):
        return "+".join(short(v) for v in value)
    return str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=+.-]+", "_", text).strip("_")[:120]


@dataclass
class SlurmResources:
    """Resources of each array task; every point gets the same."""

    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    time: str = "24:00:00"
    partition: str | None = None
    max_parallel: int | None = None
    signal_seconds: int = 120
    extra: list[str] = field(default_factory=list)


@dataclass
class SweepSpec:
    name: str
    base: list[str]
    output_dir: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    slurm: SlurmResources = field(default_factory=SlurmResources)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a sweep spec is a mapping")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown sweep spec keys {sorted(unknown)}")
        missing = [k for k in ("name", "base", "output_dir") if k not in data]
        if missing:
            raise ValueError(f"{path}: sweep spec lacks {missing}")
        if not data.get("grid") and not data.get("points"):
            raise ValueError(f"{path}: a sweep needs a 'grid' or 'points'")
        data["base"] = [data["base"]] if isinstance(data["base"], str) else data["base"]
        data["slurm"] = SlurmResources(**(data.get("slurm") or {}))
        return cls(**data)

    def settings(self) -> list[dict[str, Any]]:
        """The sweep's points without seeds: the grid's product, then the explicit points."""
        keys = list(self.grid)
        product = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))] if keys else []
        return product + [dict(p) for p in self.points]


def expand(spec: SweepSpec) -> dict[str, Any]:
    """Write per-point configs, the SLURM array script and the local runner; return the plan."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for setting in spec.settings():
        for seed in spec.seeds:
            index = len(runs)
            label = ",".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in setting.items())
            run_dir = out / f"{index:03d}_{slug(label)}_seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            overrides = {**spec.fixed, **setting, "seed_everything": seed, "data.seed": seed}
            config = nest(overrides)
            trainer = config.setdefault("trainer", {})
            trainer["default_root_dir"] = str(run_dir)
            trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                 "init_args": {"save_dir": str(run_dir), "name": "", "version": ""}}
            (run_dir / "overrides.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            command = ["lotus_pl", "fit"] + [a for b in spec.base for a in ("--config", b)]
            command += ["--config", str(run_dir / "overrides.yaml"), "--ckpt_path", "resume"]
            runs.append({"index": index, "label": label, "seed": seed, "dir": str(run_dir),
                         "overrides": {**setting}, "command": command})
    plan = {"name": spec.name, "base": spec.base, "output_dir": str(out), "fixed": spec.fixed, "runs": runs}
    (out / PLAN).write_text(json.dumps(plan, indent=2))
    (out / "sweep.sbatch").write_text(sbatch_script(spec, runs))
    local = ["#!/usr/bin/env bash", "# Runs every point of the sweep, one process each, skipping finished ones.",
             f"exec lotus_pl sweep run {shlex.quote(str(out))} \"$@\""]
    (out / "run_local.sh").write_text("\n".join(local) + "\n")
    (out / "run_local.sh").chmod(0o755)
    return plan


def sbatch_script(spec: SweepSpec, runs: list[dict[str, Any]]) -> str:
    """A SLURM array job: task i runs point i with ``srun`` (one task per GPU, Lightning's SLURM DDP)."""
    s = spec.slurm
    array = f"0-{len(runs) - 1}" + (f"%{s.max_parallel}" if s.max_parallel else "")
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={s.nodes}",
        f"#SBATCH --ntasks-per-node={s.gpus_per_node}",
        f"#SBATCH --gpus-per-node={s.gpus_per_node}",
        f"#SBATCH --cpus-per-task={s.cpus_per_task}",
        f"#SBATCH --time={s.time}",
        # USR1 to every task before the time limit: lotus_pl's Requeue saves hpc_ckpt_N.ckpt between steps,
        # requeues the job once and exits (docs/fault_tolerance.md).
        f"#SBATCH --signal=SIGUSR1@{s.signal_seconds}",
        "#SBATCH --requeue",
        f"#SBATCH --output={Path(spec.output_dir) / 'slurm-%A_%a.out'}",
    ]
    if s.partition:
        lines.append(f"#SBATCH --partition={s.partition}")
    lines += [f"#SBATCH {e}" for e in s.extra]
    lines += ["", "set -euo pipefail", "RUNS=("]
    lines += [f"  {shlex.quote(shlex.join(r['command']))}" for r in runs]
    lines += [")", "",
              "# --ckpt_path resume: the newest of the run's hpc_ckpt (after a requeue) and last.ckpt, or a fresh start.",
              f'eval srun ${{RUNS[$SLURM_ARRAY_TASK_ID]}} --trainer.num_nodes={s.nodes} --trainer.devices={s.gpus_per_node}', ""]
    return "\n".join(lines)


def _run_point(run: dict[str, Any]) -> int:
    with open(Path(run["dir"]) / "stdout.log", "a") as log:
        return subprocess.call([sys.executable, "-m", "lotus_pl", *run["command"][1:]], stdout=log, stderr=subprocess.STDOUT)


def run_local(sweep_dir: str | Path, only: list[int] | None = None, jobs: int = 1) -> list[int]:
    """Run the sweep's unfinished points, each in its own process, ``jobs`` at a time (one per GPU
    of a workstation, or several small runs on one GPU); return the indices that failed."""
    plan = json.loads((Path(sweep_dir) / PLAN).read_text())
    todo = []
    for run in plan["runs"]:
        if only is not None and run["index"] not in only:
            continue
        if (Path(run["dir"]) / REPORT).is_file():
            print(f"[{run['index']}] {run['label']} seed={run['seed']}: finished already")
            continue
        todo.append(run)
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for run, code in zip(todo, pool.map(_run_point, todo)):
            status = "done" if code == 0 else f"failed with exit code {code}; see {run['dir']}/stdout.log"
            print(f"[{run['index']}] {run['label']} seed={run['seed']}: {status}", flush=True)
            if code:
                failed.append(run["index"])
    return failed


def _last_logged(run_dir: Path) -> dict[str, float]:
    """The latest value of each validation scalar in the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, tuple[int, float]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            if tag.startswith("val/"):
                last = accumulator.Scalars(tag)[-1]
                if tag not in values or last.step >= values[tag][0]:
                    values[tag] = (last.step, last.value)
    return {tag[4:]: value for tag, (_, value) in values.items()}


def _run_result(run: dict[str, Any]) -> dict[str, Any]:
    run_dir = Path(run["dir"])
    row = {"index": run["index"], "label": run["label"], "seed": run["seed"],
           **{k.rsplit(".", 1)[-1]: short(v) for k, v in run["overrides"].items()}}
    report = run_dir / REPORT
    if report.is_file():
        data = json.loads(report.read_text())
        # the task's headline metric (lower is better); reports written before it was recorded: depth or normals
        headline = data.get("headline") or [next(k for k in ("abs_rel", "mean") if k in data["trained"])]
        zero_shot = {f"zero_shot/{name}/{metric}" if kind == "trained" else f"zero_shot/{name}/baseline_{kind}_{metric}": value
                     for name, rows in (data.get("zero_shot") or {}).items() for kind, metrics in rows.items()
                     for metric, value in metrics.items()}
        return {**row, "status": "finished", "step": data.get("global_step"), **data["trained"], "headline": ",".join(headline),
                **{f"baseline_{k}": v.get(headline[0]) for k, v in data.items() if k in ("untrained", "mean_target")},
                **zero_shot}
    step = None
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        import torch

        step = torch.load(last, map_location="cpu", weights_only=False).get("global_step")
    metrics = _last_logged(run_dir) if run_dir.is_dir() else {}
    status = "unfinished" if (step is not None or metrics) else "not started"
    return {**row, "status": status, "step": step, **metrics}


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def collect(sweep_dir: str | Path, metrics: list[str] | None = None) -> dict[str, Any]:
    """Read every run (finished or not) and write results.{json,csv,md}: per run, and mean ± std over seeds."""
    sweep_dir = Path(sweep_dir)
    plan = json.loads((sweep_dir / PLAN).read_text())
    rows = [_run_result(r) for r in plan["runs"]]
    dotted = list(dict.fromkeys(k for r in plan["runs"] for k in r["overrides"]))
    names = {k: k.rsplit(".", 1)[-1] for k in dotted}  # "model.parameterization" -> "parameterization"
    if len(set(names.values())) < len(names):
        names = {k: k for k in dotted}
    override_keys = list(names.values())
    headlines = [h for r in rows for h in str(r.get("headline") or "").split(",") if h]  # any task's, first
    known = ("abs_rel", "delta1", "mean", "a11_25", "edge_f1", "edge_accuracy", "edge_completeness")
    zero_shot = [k for r in rows for k in r if k.startswith("zero_shot/") and k.rsplit("/", 1)[1] in (*headlines, "delta1")]
    metric_keys = metrics or [k for k in dict.fromkeys([*headlines, *known, *zero_shot]) if any(k in r for r in rows)]

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    summary = []
    for label, members in groups.items():
        entry = {k: members[0].get(k) for k in override_keys}
        entry["seeds"] = f"{sum(m['status'] == 'finished' for m in members)}/{len(members)} finished"
        entry["steps"] = "/".join(str(m.get("step")) for m in members)
        for k in metric_keys:
            entry[k] = _mean_std([m.get(k) for m in members])
        summary.append(entry)

    (sweep_dir / "results.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2, default=str))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    (sweep_dir / "results.csv").write_text(buffer.getvalue())
    header = override_keys + ["seeds", "steps"] + metric_keys
    lines = [f"# {plan['name']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(s.get(k, "")) for k in header) + " |" for s in summary]
    (sweep_dir / "results.md").write_text("\n".join(lines) + "\n")
    return {"runs": rows, "summary": summary}


def expand_spec(spec: str) -> None:
    """Write a sweep's per-point configs, SLURM array script and local runner from ``spec`` (YAML)."""
    plan = expand(SweepSpec.load(spec))
    print(f"{len(plan['runs'])} runs in {plan['output_dir']}: sbatch {plan['output_dir']}/sweep.sbatch "
          f"or {plan['output_dir']}/run_local.sh")


def run_sweep(sweep_dir: str, only: list[int] | None = None, jobs: int = 1) -> None:
    """Run a sweep's unfinished points locally, each in its own process, ``jobs`` at a time."""
    failed = run_local(sweep_dir, only, jobs=jobs)
    if failed:
        raise SystemExit(f"runs {failed} failed")


def collect_sweep(sweep_dir: str) -> None:
    """Write results.{md,csv,json} for a sweep's finished and unfinished runs and print the table."""
    result = collect(sweep_dir)
    print((Path(sweep_dir) / "results.md").read_text())
    unfinished = [r["index"] for r in result["runs"] if r["status"] != "finished"]
    if unfinished:
        print(f"unfinished runs: {unfinished}")


def sweep_main(args: list[str]) -> None:
    """``lotus_pl sweep expand <spec> | run <dir> [--jobs N] [--only [i, ...]] | collect <dir>``."""
    from jsonargparse import CLI

    CLI({"expand": expand_spec, "run": run_sweep, "collect": collect_sweep}, args=args)
