"""``lotus_pl eval-suite``: evaluate one model on every dataset of a task and write the paper's table.

Each dataset runs in its own ``lotus_pl test`` subprocess (a fresh process per dataset: no state
or memory carried over, and a failure on one dataset does not stop the others)::

    lotus_pl test --config <model.yaml> ... --config experiments/eval/<dataset>.yaml \\
        --trainer.default_root_dir=<out>/<dataset> --ckpt_path <ckpt> <extra arguments>

The eval config's :class:`~lotus_pl.evaluation.results.EvaluationResults` callback writes
``<out>/<dataset>/test_results.json`` (the run's resolved ``config.yaml`` and ``test.log`` sit
beside it); the suite reads those and writes ``<out>/<task>_results.md`` and ``.json``. Arguments
the suite does not know (``--trainer.devices=2``, ``--data.num_workers=4``) go to every test run.
Normal datasets use ``experiments/eval/<dataset>_normal.yaml``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lotus_pl.evaluation.reference import PAPER_DATASETS, check_task
from lotus_pl.evaluation.results import RESULTS_FILE
from lotus_pl.evaluation.table import markdown_table, table_json

_PACKAGE_EVAL_DIR = Path(__file__).resolve().parents[2] / "experiments" / "eval"


def default_eval_dir() -> Path:
    """``experiments/eval`` of the working directory if it has one, else the repository's."""
    local = Path("experiments/eval")
    return local if local.is_dir() else _PACKAGE_EVAL_DIR


def eval_config(eval_dir: Path, task: str, dataset: str) -> Path:
    """The eval config of ``dataset`` for ``task``: ``<dataset>.yaml`` or ``<dataset>_normal.yaml``."""
    return eval_dir / (f"{dataset}.yaml" if task == "depth" else f"{dataset}_normal.yaml")


def lotus_test_command(configs: list[str], eval_yaml: Path, run_dir: Path, ckpt_path: str | None, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "lotus_pl", "test"]
    for config in configs:
        command += ["--config", config]
    command += ["--config", str(eval_yaml), f"--trainer.default_root_dir={run_dir}"]
    if ckpt_path is not None:
        command += ["--ckpt_path", ckpt_path]
    return command + list(extra)


def run_dataset(configs: list[str], eval_yaml: Path, run_dir: Path, ckpt_path: str | None, task: str,
                extra: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """Run one ``lotus_pl test``; returns its results (or ``None``) and the error (or ``None``)."""
    if not eval_yaml.is_file():
        return None, f"no eval config {eval_yaml}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / RESULTS_FILE
    results_path.unlink(missing_ok=True)  # never report a previous run's numbers
    command = lotus_test_command(configs, eval_yaml, run_dir, ckpt_path, extra)
    log = run_dir / "test.log"
    with log.open("w") as stream:
        stream.write(" ".join(command) + "\n\n")
        stream.flush()
        returncode = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        return None, f"lotus_pl test exited with {returncode}; see {log}:\n{tail}"
    if not results_path.is_file():
        return None, f"no {results_path}: does {eval_yaml} install lotus_pl.evaluation.EvaluationResults?"
    results = json.loads(results_path.read_text())
    if results.get("task") != task:
        return None, f"{eval_yaml} evaluated a {results.get('task')} model, the suite's task is {task}"
    return results, None


def run_suite(configs: list[str], ckpt_path: str | None, task: str = "depth", datasets: list[str] | None = None,
              out: str = "results", name: str | None = None, eval_dir: str | None = None,
              extra: list[str] | None = None) -> dict[str, Any]:
    """Evaluate on each dataset, write ``<out>/<task>_results.md|json``; returns the JSON table."""
    check_task(task)
    datasets = list(datasets or PAPER_DATASETS[task])
    folder = Path(eval_dir) if eval_dir is not None else default_eval_dir()
    name = name or (Path(ckpt_path).stem if ckpt_path else "model")
    out_dir = Path(out)
    measured: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {}
    for dataset in datasets:
        eval_yaml = eval_config(folder, task, dataset)
        run_dir = out_dir / eval_yaml.stem
        start = time.perf_counter()
        measured[dataset], error = run_dataset(configs, eval_yaml, run_dir, ckpt_path, task, list(extra or []))
        status = "ok" if error is None else "FAILED"
        print(f"[eval-suite] {dataset}: {status} ({time.perf_counter() - start:.0f} s)", flush=True)
        if error is not None:
            errors[dataset] = error
            print(f"[eval-suite] {dataset}: {error}", file=sys.stderr, flush=True)

    table = table_json(task, datasets, measured, name, errors)
    markdown = markdown_table(task, datasets, measured, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task}_results.md").write_text(markdown)
    (out_dir / f"{task}_results.json").write_text(json.dumps(table, indent=2))
    print(markdown)
    return table


def suite_main(args: list[str]) -> int:
    """``lotus_pl eval-suite``; the exit status is 1 when any dataset failed."""
    parser = argparse.ArgumentParser(prog="lotus_pl eval-suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="model config(s), composed left to right")
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to evaluate")
    parser.add_argument("--task", default="depth", choices=sorted(PAPER_DATASETS), help="which paper table")
    parser.add_argument("--datasets", default=None, help="comma-separated (default: the paper's datasets of the task)")
    parser.add_argument("--out", default="results", help="folder for the runs and the table")
    parser.add_argument("--name", default=None, help="the measured row's name (default: the checkpoint's file name)")
    parser.add_argument("--eval_dir", default=None, help="folder of the eval configs (default: experiments/eval)")
    known, extra = parser.parse_known_args(args)
    datasets = [d.strip() for d in known.datasets.split(",") if d.strip()] if known.datasets else None
    table = run_suite(known.config, known.ckpt_path, known.task, datasets, known.out, known.name, known.eval_dir, extra)
    return 1 if any("error" in entry for entry in table["measured"].values()) else 0
