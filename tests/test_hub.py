"""Hub ids or folders: ``lotus_pl.hub.resolve_model_path`` and every model path that goes through it.

A Hugging Face cache is populated inside the test in the layout ``huggingface_hub`` keeps
(``models--org--name/snapshots/<commit>/...`` and ``refs/<branch or tag>``), and a fresh Python process
with ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1`` resolves ids from it, as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lotus_pl.hub import parse_hub_id, resolve_model_path
from test_export import write_released_folder

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def populate_cache(cache: Path, repo_id: str, snapshots: dict[str, Path], refs: dict[str, str]) -> None:
    """A Hugging Face Hub cache holding ``repo_id`` at the given commits (folder copies) and refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, folder in snapshots.items():
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)


@pytest.mark.parametrize("text, expected", [
    ("jingheya/lotus-depth-g-v2-1-disparity", ("jingheya/lotus-depth-g-v2-1-disparity", None)),
    ("org/name@v1.0", ("org/name", "v1.0")),
    (f"org/name@{COMMIT}", ("org/name", COMMIT)),
    ("/abs/path", None), ("./rel/path", None), ("a/b/c", None), ("name", None), ("../up", None), ("org/..", None),
])
def test_hub_ids_are_told_from_paths(text, expected):
    assert parse_hub_id(text) == expected


def test_an_existing_folder_is_used_as_is_and_nothing_is_fetched(tmp_path, monkeypatch):
    import huggingface_hub

    def fetch(*args, **kwargs):
        raise AssertionError(f"snapshot_download called with {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fetch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)  # a relative folder that also reads as a Hub id
    assert resolve_model_path("org/name") == Path("org/name")
    assert resolve_model_path(tmp_path / "missing") == tmp_path / "missing"  # not an id: the caller names it


RESOLVE_SCRIPT = r"""
import json, sys, torch
from lotus_pl.codecs import StableDiffusionVAE
from lotus_pl.denoisers import DiffusersUNet
from lotus_pl.formulations import Deterministic
from lotus_pl.hub import resolve_model_path
from lotus_pl.model import LotusModel
from lotus_pl.schedules import NoiseSchedule
from lotus_pl.tasks import Depth

def model(path):
    return LotusModel(task=Depth(), denoiser=DiffusersUNet(path), codec=StableDiffusionVAE(path), formulation=Deterministic(),
                      detail_preserver=True, noise_schedule=NoiseSchedule(pretrained_path=path)).eval()

repo, folder, commit, other = sys.argv[1:5]
image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
out = {"main": str(resolve_model_path(repo)), "tag": str(resolve_model_path(repo + "@v1")),
       "commit": str(resolve_model_path(repo + "@" + other)),
       "same_prediction": bool(torch.equal(model(repo).predict_image(image), model(folder).predict_image(image))),
       "pinned_differs": not torch.equal(model(repo + "@" + other).predict_image(image), model(folder).predict_image(image))}
for missing in ("nobody/uncached-model", repo + "@v9"):
    try:
        DiffusersUNet(missing)
    except FileNotFoundError as error:
        out[missing] = str(error)
print(json.dumps(out))
"""


def test_hub_ids_resolve_offline_from_a_cache_and_uncached_ids_are_named(tmp_path, tiny_sd):
    main_folder = write_released_folder(tmp_path / "lotus_d", tiny_sd, 4)
    other_folder = tmp_path / "lotus_d_other"
    shutil.copytree(main_folder, other_folder)
    from safetensors.torch import load_file, save_file  # a different commit: perturbed UNet weights

    weights = other_folder / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    cache, repo = tmp_path / "hf_cache", "lotus-test/lotus-depth-d"
    populate_cache(cache, repo, {COMMIT: main_folder, OTHER: other_folder}, {"main": COMMIT, "v1": COMMIT})

    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", RESOLVE_SCRIPT, repo, str(main_folder), COMMIT, OTHER], env=env,
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    assert out["main"] == out["tag"] == str(snapshots / COMMIT)
    assert out["commit"] == str(snapshots / OTHER)
    assert out["same_prediction"] and out["pinned_differs"]
    uncached = out["nobody/uncached-model"]
    assert "nobody/uncached-model is not a local folder" in uncached and "HF_HUB_OFFLINE is set" in uncached
    assert str(cache) in uncached and "hf download nobody/uncached-model" in uncached
    assert f"({repo}@v9)" in out[repo + "@v9"]
