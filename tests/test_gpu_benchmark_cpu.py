"""CPU smoke test of benchmarks/gpu_unet.py (tiny UNet, tiny sizes, no compile).

Only checks that the script runs end to end and writes a well-formed JSON with
finite positive timings. Memory effects (e.g. gradient checkpointing lowering
the peak) are GPU-only and deliberately not asserted here: on CPU the script
records ``peak_gib: null`` rather than inventing a number.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_unet.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_unet_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("diffusers")
    # The toy model gains nothing from intra-op threads, and on a loaded CI box
    # oversubscribed OpenMP threads made one tiny step ~100x slower.
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _load()
    finally:
        torch.set_num_threads(prev)


def test_sd2_config_is_sd2_base(bench):
    cfg = bench.sd2_unet_config()
    assert cfg["in_channels"] == 8  # Lotus-G default
    assert bench.sd2_unet_config(4)["in_channels"] == 4
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280)
    assert cfg["attention_head_dim"] == (5, 10, 20, 20)
    assert cfg["cross_attention_dim"] == 1024
    assert cfg["use_linear_projection"] is True
    assert cfg["class_embed_type"] == "projection"
    assert cfg["projection_class_embeddings_input_dim"] == 4


def test_card_slug(bench):
    assert bench.card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert bench.card_slug("NVIDIA H200") == "h200"
    assert bench.card_slug("NVIDIA A100-SXM4-80GB") == "a100"


def test_summarize(bench):
    s = bench.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 5.0
    assert s["iqr_ms"] == pytest.approx(2.0)


def test_cpu_tiny_run_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "bench_{card}.json"
    result = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--out", str(out)])
    path = tmp_path / "bench_cpu.json"
    assert path.exists()
    data = json.loads(path.read_text())
    assert data["finished"] is True
    assert data == json.loads(json.dumps(result, default=str))

    for key in ("device_name", "torch_version", "diffusers_version"):
        assert isinstance(data[key], str) and data[key]
    assert data["model"]["in_channels"] == 8
    assert _pos(data["model"]["params"])
    assert _pos(data["flops"]["train_forward_per_image"])
    assert _pos(data["flops"]["infer_forward_per_call"])

    train = data["train"]
    assert {(r["batch"], r["gradient_checkpointing"]) for r in train} == {
        (1, False), (2, False), (1, True), (2, True)
    }
    for r in train:
        assert r["oom"] is False
        for k in ("median_ms", "iqr_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "images_per_s"):
            assert k in r
        for k in ("median_ms", "min_ms", "max_ms", "images_per_s"):
            assert _pos(r[k]), (k, r[k])
        assert math.isfinite(r["iqr_ms"]) and r["iqr_ms"] >= 0
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["peak_gib"] is None  # not measurable on CPU; never faked
        assert r["image_hw"] == [64, 96] and r["latent_hw"] == [8, 12]

    infer = data["infer"]
    assert {(r["precision"], r["compiled"]) for r in infer} == {("fp32", False), ("bf16", False)}
    for r in infer:
        assert r["oom"] is False and r["batch"] == 1 and r["timestep"] == 999
        assert _pos(r["median_ms"]) and _pos(r["max_ms"])
        assert math.isfinite(r["iqr_ms"]) and r["iqr_ms"] >= 0
        assert r["n"] == data["infer_settings"]["iters"]

    printed = capsys.readouterr().out
    assert "TRAIN step" in printed and "INFER one UNet call" in printed


def test_cpu_tiny_channels_last_lotus_d(bench, tmp_path):
    out = tmp_path / "b.json"
    bench.main([
        "--device", "cpu", "--tiny", "--no-compile", "--channels-last", "--in-channels", "4",
        "--train-batches", "1", "--checkpointing", "on", "--precisions", "bf16",
        "--no-flops", "--train-breakdown", "--out", str(out),
    ])
    data = json.loads(out.read_text())
    assert data["channels_last"] is True and data["model"]["in_channels"] == 4
    assert len(data["train"]) == 1 and data["train"][0]["gradient_checkpointing"] is True
    assert _pos(data["train"][0]["median_ms"])
    bd = data["train"][0]["breakdown"]
    assert set(bd) == {"forward", "backward", "clip", "optimizer"}
    for phase in bd.values():
        assert _pos(phase["wall_ms"]) and _pos(phase["host_ms"])
    assert len(data["infer"]) == 1 and _pos(data["infer"][0]["median_ms"])
