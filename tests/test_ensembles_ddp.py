"""The uncertainty evaluation is exact under DDP: ``lotus_pl test`` of a Lotus-G ensemble on two CPU
processes (gloo) reports the single process's AUSE / AURG, and the suite table shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lotus_pl.evaluation.table import markdown_table, table_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def val_manifest(tmp_path_factory) -> Path:
    """8 procedural scenes of 32×32 in 4 shards, so that two ranks get 2 shards each."""
    from lotus_pl.data.synthetic import write_synthetic_split

    root = tmp_path_factory.mktemp("ensemble_eval")
    manifest = root / "val.yaml"
    write_synthetic_split(str(root / "shards"), str(manifest), "val", 8, size=32, seed=0, samples_per_shard=2, workers=1)
    return manifest


def lotus_test(manifest: Path, out: Path, *extra: str) -> dict:
    args = ["test", "--config", str(ROOT / "experiments/quickstart.yaml"),
            "--config", str(ROOT / "experiments/variants/ensemble_lotus_g.yaml"),
            "--config", str(ROOT / "experiments/eval/synthetic.yaml"),
            f"--data.test_manifest={manifest}", "--data.eval_batch_size=2", "--data.num_workers=0",
            "--model.denoiser.block_out_channels=[16,32]", "--model.denoiser.cross_attention=[false,true]",
            "--model.denoiser.cross_attention_dim=16", "--model.ensemble.init_args.size=3",
            "--model.ensemble.init_args.sparsification_steps=10", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu", f"--trainer.default_root_dir={out}", *extra]
    # Lightning's DDP launcher gives each of the 2 processes cpu_count // 2 threads (OMP_NUM_THREADS) unless set;
    # a different thread count changes the float rounding of the convolutions, and the untrained ensemble's
    # near-tied uncertainties reorder on that rounding. One thread everywhere makes the predictions identical,
    # so what is compared is the metric's reduction across ranks.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-m", "lotus_pl", *args], cwd=out.parent, capture_output=True, text=True,
                               timeout=900, env=env)  # bounded; ~60 s on an idle 2-core machine
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((out / "test_results.json").read_text())


def test_two_process_evaluation_gives_the_single_process_ause(val_manifest, tmp_path):
    single = lotus_test(val_manifest, tmp_path / "single")
    ddp = lotus_test(val_manifest, tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2")
    assert single["world_size"] == 1 and ddp["world_size"] == 2 and sorted(ddp["samples_per_rank"]) == [4, 4]
    names = [f"{k}_{m}" for k in ("ause", "aurg") for m in ("abs_rel", "rmse", "bad_delta1")]
    assert set(names) <= set(single["metrics"])
    assert single["metrics"]["ause_abs_rel"] > 0  # a real ensemble of an untrained model: not a perfect ranking
    for name in names + ["abs_rel", "delta1"]:
        assert ddp["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-9, abs=1e-12), name
    # the suite's table gets an uncertainty row from the same results
    text = markdown_table("depth", ["synthetic"], {"synthetic": single}, "ens")
    cell = f"{100 * single['metrics']['ause_abs_rel']:.1f}/{100 * single['metrics']['aurg_abs_rel']:.1f}"
    assert "uncertainty: AUSE / AURG of AbsRel" in text and f"| **ens** (measured) | {cell} |" in text
    assert table_json("depth", ["synthetic"], {"synthetic": single}, "ens")["uncertainty"]["synthetic"][0] == \
        pytest.approx(100 * single["metrics"]["ause_abs_rel"])
