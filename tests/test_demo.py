"""``lotus_pl demo``: what an upload produces, and the page itself in a real headless Chromium
(Selenium): it loads, an image is uploaded through the page, the depth map appears and is not
blank, and the 16-bit PNG download is the prediction. The time from clicking Predict to the result
is printed. Needs the ``demo`` extra and Debian's chromium + chromium-driver (the README's test
command installs them)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_UNET
from lotus_pl.codecs import SpaceToDepth
from lotus_pl.demo.glb import read_glb, write_glb
from lotus_pl.demo.predictor import DemoPredictor, UploadError
from lotus_pl.denoisers import SmallUNet
from lotus_pl.geometry.meshio import read_ply
from lotus_pl.model import LotusModel
from lotus_pl.tasks import Depth, Normal

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "images" / "scene_0.png"


def tiny_model(tasks=None) -> LotusModel:
    torch.manual_seed(0)
    return LotusModel(task=tasks or Depth(), denoiser=SmallUNet(**TINY_UNET), codec=SpaceToDepth(2))


def test_glb_round_trip_and_frame():
    vertices = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 2]], dtype=np.float32)  # OpenCV frame
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    gltf, positions, rgba, faces = read_glb(write_glb(Path(os.environ.get("TMPDIR", "/tmp")) / "t.glb", vertices,
                                                      np.array([[0, 2, 1]]), colors, center=False))
    np.testing.assert_array_equal(positions, vertices * [1, -1, -1])  # glTF: y up, z toward the viewer
    np.testing.assert_array_equal(rgba[:, :3], colors)
    np.testing.assert_array_equal(faces, [[0, 2, 1]])
    assert gltf["accessors"][0]["max"] == [1.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="refers to vertex 5"):
        write_glb("/tmp/bad.glb", vertices, np.array([[0, 1, 5]]))


def test_predictor_writes_every_task_and_names_bad_uploads(tmp_path):
    model = tiny_model([Depth(), Normal()])
    model.training_resolution = 32
    predictor = DemoPredictor(model, tmp_path / "out")
    result = predictor.run(EXAMPLE)  # 128 px, predicted at the recorded 32 px
    assert "at 32 px" in result.message and [c for _, c in result.gallery] == ["input", "depth", "normal"]
    stages = result.extra["stages_s"]  # where an upload's time goes (the latency benchmark reports it)
    assert list(stages) == ["read", "predict", "maps_and_files", "ply", "view"]
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= result.seconds
    names = sorted(p.name for p in result.files)
    assert names == sorted(["scene_0_depth.png", "scene_0_depth.npy", "scene_0_depth_color.png", "scene_0_depth.json",
                            "scene_0_normal.png", "scene_0_normal.npy", "scene_0.ply"])
    depth = np.load(next(p for p in result.files if p.name == "scene_0_depth.npy"))
    assert depth.shape == (128, 128)
    png = np.asarray(Image.open(next(p for p in result.files if p.name == "scene_0_depth.png")))
    assert png.dtype == np.uint16 and np.array_equal(png, np.round(np.clip(depth, 0, 1) * 65535).astype(np.uint16))
    _, positions, _, faces = read_glb(result.view)
    assert len(positions) == 128 * 128 and len(faces) > 0  # the view mesh: at most view_size (256) across
    capped = DemoPredictor(model, tmp_path / "capped", view_size=40).run(EXAMPLE)  # the 3D view is bounded ...
    assert len(read_glb(capped.view)[1]) == 40 * 40
    assert len(read_ply(next(p for p in capped.files if p.suffix == ".ply")).points) == 128 * 128  # ... the PLY is not
    native = predictor.run(EXAMPLE, resolution=0, seed=3)
    assert "native size, seed 3" in native.message and model.seed == 3
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(UploadError, match="cannot read broken.png as an image"):
        predictor.run(bad)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 100)
    with pytest.raises(UploadError, match="cannot read clip.mp4 as a video"):
        predictor.run(clip)


def test_predictor_on_a_short_video(tmp_path):
    from lotus_pl.demo.predictor import write_mp4

    frames = [np.asarray(Image.open(EXAMPLE).convert("RGB").resize((48, 32)))[:, ::-1 if i % 2 else 1].copy() for i in range(5)]
    write_mp4(tmp_path / "in.mp4", frames, fps=5)
    predictor = DemoPredictor(tiny_model(), tmp_path / "out", max_frames=4)
    result = predictor.run(tmp_path / "in.mp4", resolution=0)
    stack = np.load(next(p for p in result.files if p.name == "in_depth_frames.npy"))
    assert stack.shape == (4, 1, 32, 48) and "4 frames" in result.message
    assert result.video is not None and result.video.stat().st_size > 0


# ----------------------------------------------------------------------------- the page in Chromium
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser():
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    found = chromium()
    if found is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=found[1]), options=options)
    yield driver
    driver.quit()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_the_page_in_headless_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from lotus_pl.demo.app import build_app

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model = tiny_model()
    model.training_resolution = 32
    predictor = DemoPredictor(model, tmp_path / "out")
    port = free_port()
    app = build_app(predictor, examples=[str(EXAMPLE)])
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
               allowed_paths=[str(predictor.out_dir)], show_error=True)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#resolution input")))
        assert "lotus_pl: depth" in browser.page_source
        resolution = browser.find_element(By.CSS_SELECTOR, "#resolution input")
        assert resolution.get_attribute("value") == "32"  # the recorded training size is the default

        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(EXAMPLE))
        wait.until(lambda d: "scene_0" in d.find_element(By.CSS_SELECTOR, "#upload").text)  # name and suffix: two lines
        start = time.perf_counter()
        browser.find_element(By.CSS_SELECTOR, "#predict").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps img")) >= 2
                   and d.find_elements(By.CSS_SELECTOR, "#downloads a"))
        seconds = time.perf_counter() - start
        print(f"\n[demo] upload -> result in the page: {seconds:.2f} s (tiny model, 128 px input at 32 px)")

        sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#maps img")]
        depth_map = np.asarray(Image.open(io.BytesIO(fetch(sources[1]))).convert("RGB"), dtype=np.float64)
        assert depth_map.shape[:2] == (128, 128) and depth_map.std() > 5  # shown, and not blank
        links = {a.text.strip() or a.get_attribute("href"): a.get_attribute("href")
                 for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
        href = next(url for url in links.values() if url and url.split("?")[0].endswith("scene_0_depth.png"))
        png = Image.open(io.BytesIO(fetch(href)))
        assert png.mode in ("I;16", "I;16B", "I") and png.size == (128, 128)
        expected = DemoPredictor(tiny_model(), tmp_path / "check")  # the same weights, called directly at 32 px
        truth = np.load(next(p for p in expected.run(EXAMPLE, resolution=32).files if p.name == "scene_0_depth.npy"))
        np.testing.assert_array_equal(np.asarray(png), np.round(np.clip(truth, 0, 1) * 65535).astype(np.uint16))
        browser.save_screenshot(str(tmp_path / "page.png"))
        wait.until(lambda d: "scene_0.png: depth at 32 px (longest edge), seed 0" in d.find_element(By.CSS_SELECTOR, "#status").text)

        bad = tmp_path / "broken.png"
        bad.write_bytes(b"not an image at all")
        browser.get(f"http://127.0.0.1:{port}/")  # a fresh page: an empty upload box
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(bad))
        wait.until(lambda d: "broken" in d.find_element(By.CSS_SELECTOR, "#upload").text)
        browser.find_element(By.CSS_SELECTOR, "#predict").click()
        wait.until(lambda d: "cannot read broken.png as an image" in d.page_source)
    finally:
        app.close()
