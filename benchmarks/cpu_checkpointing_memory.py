#!/usr/bin/env python
"""Peak CPU memory of a training step with and without gradient checkpointing (reduced UNet).

Each measurement runs in a fresh process: build the model, note the process's peak resident memory,
run training steps, and report the growth of the peak (activations + gradients + optimizer state).
Prints medians over repeats and the ratio checkpointed / plain.

    python benchmarks/cpu_checkpointing_memory.py [--repeats 3] [--batch 8] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys


def measure(checkpointing: bool, batch: int, size: int) -> float:
    """MiB of peak-memory growth over three training steps, in this process."""
    import torch

    from lotus_pl.codecs import SpaceToDepth
    from lotus_pl.denoisers import SmallUNet
    from lotus_pl.model import LotusModel
    from lotus_pl.tasks import Depth

    torch.manual_seed(0)
    model = LotusModel(task=Depth(), denoiser=SmallUNet(), codec=SpaceToDepth(2), gradient_checkpointing=checkpointing)
    model.log = lambda *args, **kwargs: None  # no trainer here
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-4)
    batch_data = {"image": torch.rand(batch, 3, size, size) * 2 - 1, "depth": torch.rand(batch, 1, size, size) * 5 + 1}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(3):
        loss = model.training_step(batch_data, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--child", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "checkpointed", args.batch, args.size)))
        return
    results: dict[str, list[float]] = {"plain": [], "checkpointed": []}
    for _ in range(args.repeats):
        for mode in results:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--batch", str(args.batch), "--size", str(args.size)],
                                 capture_output=True, text=True, check=True).stdout
            results[mode].append(float(out.strip().splitlines()[-1]))
    plain, checkpointed = statistics.median(results["plain"]), statistics.median(results["checkpointed"])
    print(f"training-step peak memory growth, batch {args.batch} at {args.size}px, median of {args.repeats}:")
    print(f"  plain          {plain:8.1f} MiB   {results['plain']}")
    print(f"  checkpointed   {checkpointed:8.1f} MiB   {results['checkpointed']}")
    print(f"  ratio checkpointed / plain = {checkpointed / plain:.3f}")


if __name__ == "__main__":
    main()
