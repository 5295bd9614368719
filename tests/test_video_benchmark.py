"""benchmarks/video_consistency.py: its camera path moves smoothly, its video is lossless, and the
ground-truth figure it uses as the floor is the scene's own motion (small, but not zero)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from lotus_pl.data.videos import iter_frames
from lotus_pl.temporal import temporal_consistency

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "video_consistency.py"


def load_script():
    spec = importlib.util.spec_from_file_location("video_consistency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendered_pan_is_written_losslessly_and_moves_a_little(tmp_path):
    bench = load_script()
    rgbs, depths = bench.render_sequence(frames=4, size=32, seed=7)
    bench.write_video(rgbs, tmp_path / "pan.mkv")
    decoded = [frame for _, frame in iter_frames(tmp_path / "pan.mkv")]
    assert len(decoded) == 4 and all(np.array_equal(a, b) for a, b in zip(decoded, rgbs))
    truth = [torch.from_numpy(1.0 / d) for d in depths]
    change = temporal_consistency(truth, "disparity")
    assert 0.001 < change < 0.1  # the camera moves, smoothly
    assert not np.array_equal(depths[0], depths[-1])
