"""Preemption without collectives in a signal handler: save, requeue once, exit.

SLURM sends ``SIGUSR1`` (``#SBATCH --signal=SIGUSR1@90``) to every task shortly before the time
limit. Lightning's own SLURM handler saves the checkpoint (a collective under DDP) inside the signal
handler, which deadlocks when the signal lands while another rank is inside a gradient all-reduce.
:class:`Requeue` takes over that signal instead:

1. the handler only records the request (a flag; nothing else runs in it);
2. after every optimizer step the ranks agree on it (one all-reduce of the flag, the same collective
   on every rank at the same point), so a signal seen by any rank is honoured by all;
3. they save one checkpoint, ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` (written under a temporary
   name and renamed when complete; older ``hpc_ckpt`` files are removed);
4. rank 0 runs the requeue command once (``scontrol requeue <job id>``; nothing outside SLURM);
5. every rank leaves ``fit`` (``SystemExit(0)``), and the restarted job continues with
   ``--ckpt_path resume`` (:func:`lotus_pl.cli.newest_checkpoint`).

Lightning's own requeue is switched off (``SLURMEnvironment.auto_requeue = False``). A signal that
arrives during validation is honoured at the next training step; one after the last step is moot.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The job to requeue: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if job is not None and not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected SLURM job id {job!r}")
    return job


class Requeue(Callback):
    """Save a checkpoint, requeue the job and exit on ``signal``, agreeing on it between steps.

    Args:
        signal: the signal that asks for it (SLURM's ``--signal``), by name.
        command: the requeue command; ``{job_id}`` is replaced by the SLURM job id.
        exit_code: the status the processes exit with after requeueing.
    """

    def __init__(self, signal: str = "SIGUSR1", command: list[str] | None = None, exit_code: int = 0) -> None:
        self.signum = _signal_number(signal)
        self.command = list(command) if command is not None else ["scontrol", "requeue", "{job_id}"]
        self.exit_code = exit_code
        self.requested = False
        self._checked_step = -1
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # nothing else here: no collective, no I/O

    def _install(self) -> None:
        current = signal.getsignal(self.signum)
        if current != self._handler:
            self._previous = current if self._previous is None else self._previous
            signal.signal(self.signum, self._handler)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        connector = getattr(trainer, "_accelerator_connector", None)  # what Lightning's signal handling reads
        for environment in (getattr(trainer.strategy, "cluster_environment", None),
                            getattr(connector, "cluster_environment", None)):
            if isinstance(environment, SLURMEnvironment):
                environment.auto_requeue = False  # no save (a collective) inside Lightning's signal handler
        self._install()  # early, before restoring a checkpoint, which can take long

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()  # after Lightning registered its handlers
        self._checked_step = trainer.global_step  # agree only after optimizer steps, never mid-accumulation

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._checked_step:  # between the micro-batches of an accumulated step
            return
        self._checked_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.save(trainer)
        if trainer.is_global_zero:
            self.requeue()
        trainer.strategy.barrier("requeue")
        log.info("rank %d: checkpoint %s saved at step %d; exiting for the requeue", trainer.global_rank, path,
                 trainer.global_step)
        raise SystemExit(self.exit_code)

    def save(self, trainer: Trainer) -> Path:
        """One complete checkpoint: written under a temporary name, renamed once whole."""
        root = Path(trainer.default_root_dir)
        old = sorted(root.glob("hpc_ckpt_*.ckpt"))
        numbers = [int(m.group(1)) for p in old if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
        path = root / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"
        partial = path.with_name(path.name + ".partial")
        trainer.save_checkpoint(partial)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, path)
            for stale in old:
                stale.unlink(missing_ok=True)
        trainer.strategy.barrier("requeue checkpoint")
        return path

    def requeue(self) -> None:
        job = slurm_job_id()
        if job is None:
            log.warning("received %s outside a SLURM job: checkpoint saved, stopping without requeue",
                        signal.Signals(self.signum).name)
            return
        command = [part.replace("{job_id}", job) for part in self.command]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            log.error("requeue command %s failed (%d): %s", command, result.returncode, result.stderr.strip())
        else:
            log.info("requeued SLURM job %s", job)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (use a name such as SIGUSR1)") from None
