"""benchmarks/ensembles.py: each setting scores accuracy and uncertainty on the same batches, the
single call scores as random (zero spread), the oracle's AUSE is 0, and the table's time ratios are
against the single call."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lotus_pl.ensembles import Ensemble, HorizontalFlip
from lotus_pl.formulations import Generative

from test_model import make_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ensembles.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ensembles_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_are_scored_on_the_same_batches():
    bench = load_script()
    model = make_model(formulation=Generative(pure_noise_at_terminal=True)).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(2, 3, 16, 20, generator=gen) * 2 - 1,
                "depth": torch.rand(2, 1, 16, 20, generator=gen) * 4 + 1} for _ in range(2)]
    results = {"images": 4, "threads": 1, "settings": {
        "single call": bench.run_setting(model, batches, None, steps=10, seed=0),
        "ensemble 3": bench.run_setting(model, batches, Ensemble(size=3, tta=[HorizontalFlip()]), steps=10, seed=0),
    }}
    single, ensemble = results["settings"]["single call"], results["settings"]["ensemble 3"]
    assert single["members"] == 1 and ensemble["members"] == 6 and single["images"] == ensemble["images"] == 4
    assert single["uncertainty"]["ensemble"]["aurg_abs_rel"] == pytest.approx(0.0, abs=1e-12)
    for setting in (single, ensemble):
        assert setting["uncertainty"]["oracle"]["ause_abs_rel"] == pytest.approx(0.0, abs=1e-12)
        assert setting["uncertainty"]["oracle"]["aurg_abs_rel"] > 0
    assert ensemble["combine_seconds_per_image"] > 0 and single["combine_seconds_per_image"] == 0
    text = bench.table(results)
    assert "| single call | 1 |" in text and "1.00× (1.00 + 0.00)" in text and "| ensemble 3 | 6 |" in text
