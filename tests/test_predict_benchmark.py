"""Smoke test of benchmarks/predict_vs_marigold.py in its quick mode (tiny components, 64 px).

Checks that the script runs end to end, that lotus_pl and Marigold computed the same prediction
from the same noise (the comparison is of equal work), and that the JSON it writes holds every
section with finite positive times. Speed itself is never asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_vs_marigold.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("predict_vs_marigold", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_result(bench, tmp_path_factory) -> tuple[dict, dict]:
    import torch

    out = tmp_path_factory.mktemp("bench") / "quick.json"
    threads = torch.get_num_threads()
    try:
        returned = bench.main(["--quick", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return returned, json.loads(out.read_text())


def test_quick_json_has_every_section(quick_result):
    returned, data = quick_result
    assert data == json.loads(json.dumps(returned))
    assert data["quick"] is True and data["torch_threads"] == 1 and data["dtype"] == "float32"
    assert data["input_hw"] == [48, 64] and data["processing_resolution"] == 64 and data["latent_hw"] == [6, 8]
    assert data["components"]["unet"]["in_channels"] == 8 and data["components"]["vae"]["downsample"] == 8
    assert _positive(data["components"]["unet"]["params"]) and _positive(data["components"]["vae"]["params"])

    for name in ("lotus", "marigold_1x1", "floor", "lotus_large_input", "lotus_predict_path"):
        assert len(data["times_s"][name]) == data["rounds"] == 2
        assert all(_positive(t) for t in data["times_s"][name])

    equal = data["equal_work"]
    assert _positive(equal["lotus_s"]) and _positive(equal["marigold_1x1_s"])
    assert equal["marigold_over_lotus"] == pytest.approx(equal["marigold_1x1_s"] / equal["lotus_s"])
    assert isinstance(equal["lotus_at_least_as_fast"], bool)

    paper = data["paper_setting"]
    assert (paper["steps"], paper["ensemble"], paper["rounds"]) == (5, 3, 1)
    assert len(paper["times_s"]) == 1 and _positive(paper["marigold_s"]) and _positive(paper["marigold_over_lotus"])
    assert isinstance(paper["ensembling"], str) and paper["ensembling"]

    floor = data["floor"]
    for key in ("floor_s", "lotus_predict_image_s", "lotus_large_input_s", "predict_path_s"):
        assert _positive(floor[key]), key
    assert floor["overhead"] == pytest.approx(floor["lotus_predict_image_s"] / floor["floor_s"] - 1)
    assert floor["large_input_hw"] == [72, 96]

    for side in ("lotus", "marigold_1x1"):
        memory = data["memory"][side]
        assert _positive(memory["peak_mib"]) and memory["peak_mib"] >= memory["resident_before_mib"] > 0
        assert memory["growth_mib"] == pytest.approx(memory["peak_mib"] - memory["resident_before_mib"])


def test_quick_run_compares_equal_work(quick_result):
    _, data = quick_result
    # Same UNet, VAE, CLIP context and initial noise: one step of each gives the same depth.
    assert data["same_output_max_abs_diff"] < 1e-4


def test_onnx_runtime_is_the_fastest_path_case_and_computes_the_same_depth(quick_result):
    pytest.importorskip("onnxruntime")
    _, data = quick_result
    equal = data["equal_work"]
    assert len(data["times_s"]["lotus_onnxruntime"]) == 2 and _positive(equal["onnxruntime_s"])
    assert equal["marigold_over_onnxruntime"] == pytest.approx(equal["marigold_1x1_s"] / equal["onnxruntime_s"])
    assert equal["onnx_max_abs_diff_vs_lotus"] < 1e-4 and equal["onnx_max_abs_diff_vs_marigold"] < 1e-4


def test_sections_can_be_left_out(bench, tmp_path):
    import torch

    threads = torch.get_num_threads()
    try:
        data = bench.main(["--quick", "--threads", "1", "--rounds", "1", "--skip-paper", "--skip-memory", "--no-onnx"])
    finally:
        torch.set_num_threads(threads)
    assert data["paper_setting"] == {} and data["memory"] == {} and "lotus_onnxruntime" not in data["times_s"]
    bench.report(data)  # prints (a) and (c) only


def test_report_prints_every_section(bench, quick_result, capsys):
    bench.report(quick_result[1])
    printed = capsys.readouterr().out
    for line in ("(a) equal work", "lotus_pl at least as fast: ", "(b) Marigold's paper setting", "(c) against the floor",
                 "overhead", "(d) peak memory", "marigold_1x1"):
        assert line in printed
