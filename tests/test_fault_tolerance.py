"""Exact resume after SIGKILL and requeue on SIGUSR1, with real ``python -m lotus_pl fit`` processes.

A run killed at a random step and resumed with ``--ckpt_path last`` must end with weights and
optimizer state equal (``torch.equal``) to an uninterrupted run's and must have trained on the same
sample keys in the same order; on one process with 2 loader workers, on 2 gloo DDP ranks with 2
workers each, and after resuming with another number of workers. A 2-rank run that receives
SIGUSR1 (at a random moment, to one or both ranks, or from inside backward) saves, requeues
exactly once per signal, exits within a bounded time and resumes to the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lotus_pl.cli import main, newest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
sys.path.insert(0, str(PLUGINS))  # fault_probe's callbacks, for the runs made in this process
STEPS_SINGLE, STEPS_DDP = 14, 8  # 24 samples in batches of 2: 12 steps a pass on 1 rank, 6 on 2
EXIT_WITHIN = 180  # seconds a signalled run may take to save, requeue and exit (else: a hang)


def write_config(folder: Path, tiny_dataset: dict, run_dir: Path, steps: int, workers: int) -> Path:
    """A tiny Lotus-G run (its training noise and timesteps are random) that saves last.ckpt every step."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": steps, "val_check_interval": 10000,
            "check_val_every_n_epoch": None, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "gradient_clip_val": 1.0,
            "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 1, "save_last": True,
                               "save_top_k": 0}},
                {"class_path": "fault_probe.SampleLog", "init_args": {"folder": str(run_dir)}},
                {"class_path": "fault_probe.SignalInBackward"},
            ],
        },
        "model": {
            "task": {"class_path": "lotus_pl.tasks.Depth"},
            "denoiser": {"class_path": "lotus_pl.denoisers.SmallUNet",
                         "init_args": {"block_out_channels": [16, 32], "layers_per_block": 1,
                                       "cross_attention": [False, True], "cross_attention_dim": 16}},
            "codec": {"class_path": "lotus_pl.codecs.SpaceToDepth", "init_args": {"factor": 4}},
            "formulation": {"class_path": "lotus_pl.formulations.Generative"},
            "timesteps": {"class_path": "lotus_pl.schedules.MultiStep", "init_args": {"num_inference_steps": 2}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 1e-2}},
        },
        "data": {"train_manifest": tiny_dataset["train"], "val_manifest": tiny_dataset["val"], "batch_size": 2,
                 "num_workers": workers, "hflip": 0.5},
    }
    path = folder / f"config_{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One launch of ``lotus_pl fit``: one process, or one per rank with SLURM's variables (as
    ``srun`` starts them), with a fake ``scontrol`` that records each requeue."""

    def __init__(self, config: Path, ranks: int, bin_dir: Path, args: list[str], log: Path, env: dict | None = None):
        port = free_port()
        self.procs = []
        for rank in range(ranks):
            environment = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONUNBUFFERED="1",
                               PYTHONPATH=os.pathsep.join([str(ROOT), str(PLUGINS)]), OMP_NUM_THREADS="1",
                               **(env or {}))
            command = [sys.executable, "-m", "lotus_pl", "fit", "--config", str(config), *args]
            if ranks > 1:
                environment.update(SLURM_JOB_ID="78", SLURM_JOB_NAME="tiny", SLURM_NTASKS=str(ranks),
                                   SLURM_NTASKS_PER_NODE=str(ranks), SLURM_NNODES="1", SLURM_NODEID="0",
                                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODELIST="127.0.0.1",
                                   MASTER_PORT=str(port))
                command += ["--trainer.strategy=ddp", f"--trainer.devices={ranks}", "--trainer.num_nodes=1"]
            out = open(f"{log}.rank{rank}", "w")
            self.procs.append(subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT))
        self.log = log

    def output(self) -> str:
        return "\n".join(Path(f"{self.log}.rank{r}").read_text()[-3000:] for r in range(len(self.procs)))

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.time(), 0.1)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"the run did not exit within {timeout} s (a hang?):\n{self.output()}")
        return codes

    def kill(self) -> None:
        for p in self.procs:  # the whole job at once, as a node failure or `scancel -s KILL` does
            p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def records(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / f"keys_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(run: Run, run_dir: Path, step: int, timeout: float = 900) -> None:
    """Until rank 0 has started training step ``step`` of this launch."""
    pids = {p.pid for p in run.procs}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["pid"] in pids and r["step"] >= step for r in records(run_dir, 0)):
            return
        if not run.alive():
            pytest.fail(f"the run ended before step {step}:\n{run.output()}")
        time.sleep(0.02)
    run.kill()
    pytest.fail(f"no step {step} within {timeout} s:\n{run.output()}")


def trained_keys(run_dir: Path, rank: int) -> dict[int, list[str]]:
    """Slot -> sample keys of the batches this rank trained on; a batch redone after a resume must
    repeat what was recorded for it before the interruption."""
    seen: dict[int, list[str]] = {}
    for r in records(run_dir, rank):
        assert seen.setdefault(r["slot"], r["keys"]) == r["keys"], f"slot {r['slot']} differs after the resume"
    return seen


def load_final(run_dir: Path) -> dict:
    """The run's newest complete checkpoint (Lightning versions last.ckpt as last-v1.ckpt in a copied run)."""
    return torch.load(newest_checkpoint(str(run_dir)), map_location="cpu", weights_only=False)


def assert_same_state(a, b, where: str = "") -> None:
    """Equal bit for bit: tensors with torch.equal, everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_training(run_dir: Path, reference: Path, ranks: int, steps: int) -> None:
    final, expected = load_final(run_dir), load_final(reference)
    assert final["global_step"] == expected["global_step"] == steps
    assert_same_state(final["state_dict"], expected["state_dict"], "state_dict")
    assert_same_state(final["optimizer_states"], expected["optimizer_states"], "optimizer_states")
    for rank in range(ranks):
        assert trained_keys(run_dir, rank) == trained_keys(reference, rank)


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory) -> Path:
    """A fake ``scontrol`` on PATH that appends its arguments to ``requeued.txt`` beside it."""
    folder = tmp_path_factory.mktemp("bin")
    (folder / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'requeued.txt'}\n")
    (folder / "scontrol").chmod(0o755)
    return folder


def fit_here(config: Path, *args: str) -> None:
    """``lotus_pl fit`` in this process (no interpreter start-up), on one thread like the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", str(config), *args])
    finally:
        torch.set_num_threads(threads)


def reference_run(tmp_path_factory, tiny_dataset, bin_dir, ranks: int, steps: int) -> Path:
    folder = tmp_path_factory.mktemp(f"reference{ranks}")
    run_dir = folder / "run"
    config = write_config(folder, tiny_dataset, run_dir, steps, workers=2)
    if ranks == 1:
        fit_here(config)
    else:
        run = Run(config, ranks, bin_dir, [], folder / "log")
        assert run.wait(600 + 30 * steps) == [0] * ranks, run.output()  # generous: a loaded machine
    return run_dir


@pytest.fixture(scope="module")
def reference_ddp(tmp_path_factory, tiny_dataset, bin_dir) -> Path:
    return reference_run(tmp_path_factory, tiny_dataset, bin_dir, 2, STEPS_DDP)


def kill_at_random_step(run: Run, run_dir: Path, steps: int, rng: random.Random) -> int:
    """SIGKILL the whole job somewhere in a random step (forward, backward, a checkpoint write)."""
    kill_at = rng.randrange(2, steps - 2)
    wait_for_step(run, run_dir, kill_at)
    time.sleep(rng.uniform(0, 0.2))
    run.kill()
    return kill_at


def test_sigkill_single_process_two_workers_resumes_exactly(tmp_path_factory, tmp_path, tiny_dataset, bin_dir):
    reference = reference_run(tmp_path_factory, tiny_dataset, bin_dir, 1, STEPS_SINGLE)
    rng = random.Random(time.time())
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, tiny_dataset, run_dir, STEPS_SINGLE, workers=2)
    run = Run(config, 1, bin_dir, [], tmp_path / "log")
    kill_at_random_step(run, run_dir, STEPS_SINGLE, rng)
    shutil.copytree(run_dir, tmp_path / "killed")  # to resume again, with other settings
    fit_here(config, "--ckpt_path", "last")
    assert_same_training(run_dir, reference, 1, STEPS_SINGLE)
    assert len({r["pid"] for r in records(run_dir, 0)}) == 2  # the killed process, then this one

    # The same kill resumed with 3 loader workers instead of 2: the same batches in the same order
    # (so the pass goes on with no sample repeated or skipped), and the same final state.
    killed = tmp_path / "killed"
    fit_here(write_config(tmp_path, tiny_dataset, killed, STEPS_SINGLE, workers=3), "--ckpt_path", "last")
    keys = trained_keys(killed, 0)
    assert sorted(keys) == list(range(STEPS_SINGLE))
    assert sorted(k for slot in range(12) for k in keys[slot]) == sorted(f"train_{i:07d}" for i in range(24))
    assert_same_training(killed, reference, 1, STEPS_SINGLE)


def test_ddp_sigkill_then_sigusr1_in_backward_resumes_exactly(tmp_path, tiny_dataset, bin_dir, reference_ddp):
    """2 gloo ranks with 2 workers each: SIGKILL at a random step, resume with ``--ckpt_path last``;
    that run gets SIGUSR1 on one rank inside its backward pass (the other rank may be in the
    gradient all-reduce), requeues once and exits; ``--ckpt_path resume`` finishes the run."""
    rng = random.Random(time.time())
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, tiny_dataset, run_dir, STEPS_DDP, workers=2)
    requeued = bin_dir / "requeued.txt"
    requeued.unlink(missing_ok=True)
    kill_at = kill_at_random_step(Run(config, 2, bin_dir, [], tmp_path / "log1"), run_dir, STEPS_DDP, rng)

    signal_at = STEPS_DDP - 2
    marker = tmp_path / "in_backward.txt"
    env = {"LOTUS_TEST_SIGNAL_STEP": str(signal_at), "LOTUS_TEST_SIGNAL_RANK": str(rng.randrange(2)),
           "LOTUS_TEST_SIGNAL_MARKER": str(marker)}
    resumed = Run(config, 2, bin_dir, ["--ckpt_path", "last"], tmp_path / "log2", env)
    wait_for_step(resumed, run_dir, signal_at)
    assert resumed.wait(EXIT_WITHIN) == [0, 0], resumed.output()  # the signalled step, the save, the requeue
    assert f"step {signal_at}" in marker.read_text()
    assert requeued.read_text().splitlines() == ["requeue 78"]
    hpc = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1 and torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"] == signal_at + 1

    final = Run(config, 2, bin_dir, ["--ckpt_path", "resume"], tmp_path / "log3")
    assert final.wait(900) == [0, 0], final.output()
    assert requeued.read_text().splitlines() == ["requeue 78"]  # once
    assert_same_training(run_dir, reference_ddp, 2, STEPS_DDP)
    keys = {**trained_keys(run_dir, 0), **trained_keys(run_dir, 1)}
    assert sorted(keys) == list(range(2 * STEPS_DDP))  # rank r trains slots r, r + 2, ...
    assert sorted(k for slot in range(12) for k in keys[slot]) == sorted(f"train_{i:07d}" for i in range(24))
    assert kill_at < signal_at


def signal_soak(tmp_path: Path, tiny_dataset, bin_dir, reference: Path, signals: int, steps: int, seed: int) -> None:
    """``signals`` launches of a 2-rank job, each interrupted by one SIGUSR1 during its first or
    second step, then one launch to the end; the result must equal the uninterrupted ``reference``."""
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, tiny_dataset, run_dir, steps, workers=2)
    requeued = bin_dir / "requeued.txt"
    requeued.unlink(missing_ok=True)
    marker = tmp_path / "in_backward.txt"
    restored = 0
    for k in range(signals):
        assert restored <= steps - 3, f"signal {k}: too few steps left ({restored} of {steps})"
        target = restored + rng.randrange(2)
        how = ["both", "one", "backward"][k % 3]  # SLURM signals every task; a stray signal reaches one
        env = {"LOTUS_TEST_SIGNAL_MARKER": str(marker)}
        if how == "backward":
            env.update(LOTUS_TEST_SIGNAL_STEP=str(target), LOTUS_TEST_SIGNAL_RANK=str(rng.randrange(2)))
        run = Run(config, 2, bin_dir, ["--ckpt_path", "resume"], tmp_path / f"log{k}", env)
        wait_for_step(run, run_dir, target)
        if how != "backward":
            time.sleep(rng.uniform(0, 0.1))
            for p in run.procs if how == "both" else [rng.choice(run.procs)]:
                p.send_signal(signal.SIGUSR1)
        assert run.wait(EXIT_WITHIN) == [0, 0], run.output()
        lines = requeued.read_text().splitlines()
        assert lines == ["requeue 78"] * (k + 1), (how, lines, run.output())  # once per signal
        hpc = list(run_dir.glob("hpc_ckpt_*.ckpt"))
        assert len(hpc) == 1 and not list(run_dir.glob("*.partial"))  # the newest only, complete
        saved = torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"]
        assert saved > restored  # saved after the step it was signalled in, not before
        restored = saved
    assert marker.read_text().count("signal in backward") == signals // 3
    run = Run(config, 2, bin_dir, ["--ckpt_path", "resume"], tmp_path / "final")
    assert run.wait(900) == [0, 0], run.output()
    assert requeued.read_text().count("requeue") == signals
    assert_same_training(run_dir, reference, 2, steps)


@pytest.mark.slow
def test_twenty_sigusr1_soak(tmp_path_factory, tmp_path, tiny_dataset, bin_dir):
    signals = 21
    steps = 2 * signals + 4
    reference = reference_run(tmp_path_factory, tiny_dataset, bin_dir, 2, steps)
    signal_soak(tmp_path, tiny_dataset, bin_dir, reference, signals=signals, steps=steps, seed=int(time.time()))
