"""Test-only callbacks for the fault-tolerance tests: a record of every training batch's sample
keys, and a signal sent to the process from inside the backward pass."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning import Callback


class SampleLog(Callback):
    """Append ``{"pid", "rank", "step", "slot", "keys"}`` per training batch to
    ``<folder>/keys_rank<r>.jsonl``, flushed at once (a SIGKILL loses nothing written before it)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        record = {"pid": os.getpid(), "rank": trainer.global_rank, "step": trainer.global_step,
                  "slot": int(batch["slot"]), "keys": list(batch["key"])}
        with open(self.folder / f"keys_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class SignalInBackward(Callback):
    """Send ``SIGUSR1`` to this process from a gradient hook, midway through the backward pass of
    step ``LOTUS_TEST_SIGNAL_STEP`` on rank ``LOTUS_TEST_SIGNAL_RANK`` (environment; unset: never)."""

    def __init__(self) -> None:
        self.step = int(os.environ.get("LOTUS_TEST_SIGNAL_STEP", "-1"))
        self.rank = int(os.environ.get("LOTUS_TEST_SIGNAL_RANK", "0"))
        self.handle = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step != self.step or trainer.global_rank != self.rank or self.handle is not None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        middle = params[len(params) // 2]

        def hook(grad):
            os.kill(os.getpid(), signal.SIGUSR1)
            marker = Path(os.environ.get("LOTUS_TEST_SIGNAL_MARKER", os.devnull))
            with open(marker, "a") as f:
                f.write(f"signal in backward, step {trainer.global_step}, rank {trainer.global_rank}\n")
            return grad

        self.handle = middle.register_hook(hook)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            self.step = -1
