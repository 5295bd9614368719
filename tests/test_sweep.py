"""Sweeps: expansion into configs and a SLURM array script, collection of finished and killed runs,
and a 2-process DDP fit launched as the sbatch script launches it, requeued and resumed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lotus_pl.sweep import SweepSpec, collect, expand, nest

ROOT = Path(__file__).resolve().parents[1]


def tiny_fixed(tiny_dataset: dict) -> dict:
    return {
        "trainer.accelerator": "cpu", "trainer.enable_progress_bar": False, "trainer.val_check_interval": 3,
        "trainer.limit_val_batches": 1, "trainer.max_steps": 3,
        "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": 0}},
                              {"class_path": "lotus_pl.callbacks.LearningReport", "init_args": {"mean_target_batches": 2}}],
        "data.train_manifest": tiny_dataset["train"], "data.val_manifest": tiny_dataset["val"], "data.synthetic": None,
        "data.num_workers": 0, "data.batch_size": 2, "data.eval_batch_size": 4,
        "model.denoiser.init_args.block_out_channels": [16, 32], "model.denoiser.init_args.cross_attention": [False, True],
        "model.denoiser.init_args.cross_attention_dim": 16,
    }


def write_spec(tmp_path: Path, tiny_dataset: dict, **extra) -> Path:
    spec = {
        "name": "tiny", "base": [str(ROOT / "experiments/quickstart.yaml")], "output_dir": str(tmp_path / "sweep"),
        "seeds": [0, 1], "fixed": tiny_fixed(tiny_dataset),
        "grid": {"model.parameterization": [{"class_path": "lotus_pl.parameterizations.Sample"},
                                            {"class_path": "lotus_pl.parameterizations.Velocity"}],
                 "model.formulation": [{"class_path": "lotus_pl.formulations.Generative"}]},
        "slurm": {"gpus_per_node": 4, "nodes": 2, "max_parallel": 3, "signal_seconds": 90, "partition": "gpu"},
        **extra,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_nest_dotted_keys():
    assert nest({"model.a.b": 1, "model.c": 2, "x": 3}) == {"model": {"a": {"b": 1}, "c": 2}, "x": 3}
    with pytest.raises(ValueError, match="conflicts"):
        nest({"model.a": 1, "model.a.b": 2})


def test_expand_writes_configs_and_sbatch(tmp_path, tiny_dataset):
    plan = expand(SweepSpec.load(write_spec(tmp_path, tiny_dataset)))
    runs = plan["runs"]
    assert len(runs) == 4  # 2 parameterizations × 1 formulation × 2 seeds
    assert len({r["dir"] for r in runs}) == 4
    for run in runs:
        config = yaml.safe_load((Path(run["dir"]) / "overrides.yaml").read_text())
        assert config["trainer"]["default_root_dir"] == run["dir"]
        assert config["trainer"]["logger"]["init_args"]["save_dir"] == run["dir"]
        assert config["seed_everything"] == run["seed"] == config["data"]["seed"]
        assert config["model"]["parameterization"]["class_path"].rsplit(".", 1)[-1] in run["label"]
        assert run["command"][-2:] == ["--ckpt_path", "resume"]
    sbatch = (tmp_path / "sweep" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3%3" in sbatch
    assert "#SBATCH --signal=SIGUSR1@90" in sbatch and "#SBATCH --requeue" in sbatch
    assert "#SBATCH --nodes=2" in sbatch and "#SBATCH --ntasks-per-node=4" in sbatch and "#SBATCH --partition=gpu" in sbatch
    assert "srun ${RUNS[$SLURM_ARRAY_TASK_ID]} --trainer.num_nodes=2 --trainer.devices=4" in sbatch
    assert sum(r["dir"] in sbatch for r in runs) == 4
    bash = subprocess.run(["bash", "-n", str(tmp_path / "sweep" / "sweep.sbatch")], capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr


def test_bad_spec_is_a_clear_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "base": "a.yaml", "output_dir": "o", "grdi": {}}))
    with pytest.raises(ValueError, match="unknown sweep spec keys.*grdi"):
        SweepSpec.load(path)


def test_run_and_collect_with_a_killed_run(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path, tiny_dataset)
    plan = expand(SweepSpec.load(spec))
    from lotus_pl.sweep import run_local

    assert run_local(tmp_path / "sweep", only=[0, 1, 2]) == []  # run 3 is "killed before it started"
    killed = Path(plan["runs"][2]["dir"])
    (killed / "learning_report.json").unlink()  # as if killed after its last checkpoint, before the end
    result = collect(tmp_path / "sweep")
    status = {r["index"]: r["status"] for r in result["runs"]}
    assert status == {0: "finished", 1: "finished", 2: "unfinished", 3: "not started"}
    unfinished = result["runs"][2]
    assert unfinished["step"] == 3 and "abs_rel" in unfinished  # read back from last.ckpt and TensorBoard
    sample = next(s for s in result["summary"] if s["parameterization"] == "Sample")
    values = [r["abs_rel"] for r in result["runs"][:2]]
    assert sample["abs_rel"].startswith(f"{sum(values) / 2:.4f} ± ")
    assert "2/2 finished" == sample["seeds"]
    table = (tmp_path / "sweep" / "results.md").read_text()
    header = table.splitlines()[2]
    assert header.startswith("| formulation | parameterization | seeds | steps | abs_rel | delta1 |")
    assert (tmp_path / "sweep" / "results.csv").read_text().count("\n") == 5


def test_collect_tabulates_any_tasks_headline_metric(tmp_path, tiny_dataset):
    """A task the collector has never heard of (albedo's si_mse) gets its columns from the reports."""
    plan = expand(SweepSpec.load(write_spec(tmp_path, tiny_dataset)))
    for i, run in enumerate(plan["runs"]):
        Path(run["dir"]).mkdir(parents=True, exist_ok=True)
        report = {"untrained": {"si_mse": 0.09, "lmse": 0.5}, "mean_target": {"si_mse": 0.05, "lmse": 0.4},
                  "trained": {"si_mse": 0.01 * (i + 1), "lmse": 0.1}, "global_step": 3, "headline": ["si_mse"]}
        (Path(run["dir"]) / "learning_report.json").write_text(json.dumps(report))
    result = collect(tmp_path / "sweep")
    assert result["runs"][0]["baseline_untrained"] == 0.09 and result["runs"][0]["baseline_mean_target"] == 0.05
    header = (tmp_path / "sweep" / "results.md").read_text().splitlines()[2]
    assert header == "| formulation | parameterization | seeds | steps | si_mse |"
    sample = next(s for s in result["summary"] if s["parameterization"] == "Sample")
    assert sample["si_mse"].startswith("0.0150 ± ")  # runs 0 and 1: 0.01 and 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_ddp_fit_requeues_and_resumes(tmp_path, tiny_dataset):
    """Two 'srun' tasks with SLURM's variables; SIGUSR1 -> hpc checkpoint + scontrol requeue + exit; relaunch resumes."""
    fixed = {**tiny_fixed(tiny_dataset), "trainer.max_steps": 100000, "trainer.val_check_interval": 100000}
    spec = write_spec(tmp_path, tiny_dataset, seeds=[0], fixed=fixed,
                      grid={"model.parameterization": [{"class_path": "lotus_pl.parameterizations.Sample"}]})
    run = expand(SweepSpec.load(spec))["runs"][0]
    run_dir = Path(run["dir"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "requeued.txt"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {requeued}\n")
    (bin_dir / "scontrol").chmod(0o755)
    port = free_port()

    def launch(max_steps: int) -> list[subprocess.Popen]:
        procs = []
        for rank in range(2):
            env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="78", SLURM_ARRAY_JOB_ID="77",
                       SLURM_ARRAY_TASK_ID="0", SLURM_JOB_NAME="tiny", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
                       SLURM_NNODES="1", SLURM_NODEID="0", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                       SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
            command = [sys.executable, "-m", "lotus_pl", *run["command"][1:], "--trainer.num_nodes=1", "--trainer.devices=2",
                       "--trainer.strategy=ddp", f"--trainer.max_steps={max_steps}"]
            log = open(tmp_path / f"rank{rank}_{max_steps}.log", "w")
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        return procs

    def step_of(path: Path) -> int:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]

    last = run_dir / "checkpoints" / "last.ckpt"
    procs = launch(100000)
    deadline = time.time() + 900  # start-up can take minutes on a loaded machine
    while not (last.exists() and step_of(last) >= 4):
        assert all(p.poll() is None for p in procs), (tmp_path / "rank0_100000.log").read_text()[-3000:]
        if time.time() > deadline:
            for p in procs:
                p.kill()
            pytest.fail("no step 4 within 900 s:\n" + (tmp_path / "rank0_100000.log").read_text()[-3000:])
        time.sleep(0.5)
    for p in procs:  # SLURM signals every task before the time limit
        p.send_signal(signal.SIGUSR1)
    try:  # lotus_pl.requeue.Requeue: the ranks agree at the next step, save, requeue once and exit
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], (tmp_path / "rank0_100000.log").read_text()[-3000:]
    hpc = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert hpc, (tmp_path / "rank0_100000.log").read_text()[-3000:]
    assert requeued.read_text().split() == ["requeue", "77_0"]
    interrupted_at = step_of(hpc[0])
    assert interrupted_at >= 4
    assert step_of(last) < interrupted_at  # the requeue checkpoint is the newest: `resume` takes it

    procs = launch(interrupted_at + 3)
    codes = [p.wait(timeout=900) for p in procs]
    assert codes == [0, 0], (tmp_path / f"rank0_{interrupted_at + 3}.log").read_text()[-3000:]
    assert step_of(last) == interrupted_at + 3
    assert "hpc_ckpt" in (tmp_path / f"rank0_{interrupted_at + 3}.log").read_text()  # restored from the requeue checkpoint


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from lotus_pl.cli import newest_checkpoint

    assert newest_checkpoint(str(tmp_path)) is None  # fresh start
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 1}, last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"global_step": 2}, hpc)
    os.utime(last, (1, 1))
    assert newest_checkpoint(str(tmp_path)) == str(hpc)
    os.utime(hpc, (0, 0))
    assert newest_checkpoint(str(tmp_path)) == str(last)
    # A kill while a checkpoint is written leaves it cut short: never picked, however new.
    data = last.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 0):
        (tmp_path / "checkpoints" / "last-v1.ckpt").write_bytes(data[:cut])
        assert newest_checkpoint(str(tmp_path)) == str(last)


SPECS = sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))


# *_base.yaml are configs that the specs compose, not specs
@pytest.mark.parametrize("spec_path", [p for p in SPECS if not p.name.endswith("_base.yaml")], ids=lambda p: p.stem)
def test_every_shipped_spec_expands_to_valid_configs(spec_path, tmp_path, monkeypatch, capsys):
    from lotus_pl.cli import main

    spec = SweepSpec.load(spec_path)
    spec.output_dir = str(tmp_path / spec.name)
    plan = expand(spec)
    assert len(plan["runs"]) == len(spec.settings()) * len(spec.seeds) > 1
    monkeypatch.chdir(ROOT)
    for run in (plan["runs"][0], plan["runs"][-1]):
        with pytest.raises(SystemExit) as exit_info:
            main([*run["command"][1:-2], "--print_config"])
        assert exit_info.value.code == 0, capsys.readouterr().err[-2000:]
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["default_root_dir"] == run["dir"]


def test_sweep_command_line(tmp_path, tiny_dataset, capsys):
    from lotus_pl.cli import main

    main(["sweep", "expand", str(write_spec(tmp_path, tiny_dataset))])
    assert "4 runs in" in capsys.readouterr().out
    main(["sweep", "collect", str(tmp_path / "sweep")])
    assert "unfinished runs: [0, 1, 2, 3]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", "run", str(tmp_path / "sweep"), "--jobs", "x"])
