"""Time from clicking Predict on the demo page to the result, in headless Chromium, against the
same prediction called directly (the page's own overhead is the difference).

    python benchmarks/demo_latency.py [--ckpt_path runs/quickstart/checkpoints/last.ckpt] [--resolution 768]

The model is the quickstart's (experiments/quickstart.yaml: SpaceToDepth codec, 3.9M-parameter
UNet), with the checkpoint's weights when given; the time does not depend on the weights. The input
is an example image enlarged to 768 x 1024 and predicted at ``--resolution`` (longest edge). Prints
medians over ``--repeats`` runs (wall seconds, and the CPU seconds this process spent, which a busy
machine does not inflate; the direct call also by stage), writes ``--json`` and ``--screenshot``
(the page after a result).
Needs the ``demo`` extra, selenium and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def autogroup() -> str:
    """This process's scheduling group and nice (``lowprio`` runs it at nice 15 behind everything else)."""
    try:
        return Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return f"nice {os.nice(0)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--resolution", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "demo_latency.json"))
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "demo.png"))
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import torch
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lotus_pl.demo.app import build_app, load_predictor

    work = Path(tempfile.mkdtemp(prefix="demo_latency_"))
    photo = work / "room.png"
    Image.open(ROOT / "examples" / "images" / "scene_wide.jpg").convert("RGB").resize((1024, 768), Image.Resampling.BICUBIC).save(photo)
    cli = ["--config", args.config, "--out_dir", str(work / "out")] + (["--ckpt_path", args.ckpt_path] if args.ckpt_path else [])
    predictor, _ = load_predictor(cli)
    threads = torch.get_num_threads()

    direct, direct_cpu, stages = [], [], []
    for _ in range(args.repeats):
        cpu = time.process_time()
        run = predictor.run(photo, args.resolution)
        direct_cpu.append(time.process_time() - cpu)  # this process's CPU seconds: what a starved scheduler cannot inflate
        direct.append(run.seconds)
        stages.append(run.extra["stages_s"])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(predictor)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
               allowed_paths=[str(predictor.out_dir)])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options)
    page, page_cpu = [], []
    try:
        wait = WebDriverWait(driver, 300, poll_frequency=0.05)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#resolution input"))
        field = driver.find_element(By.CSS_SELECTOR, "#resolution input")
        field.clear()
        field.send_keys(str(args.resolution))
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(photo))
        wait.until(lambda d: "room" in d.find_element(By.CSS_SELECTOR, "#upload").text)
        for _ in range(args.repeats):
            before = driver.find_element(By.CSS_SELECTOR, "#status").text
            start, cpu = time.perf_counter(), time.process_time()
            driver.find_element(By.CSS_SELECTOR, "#predict").click()
            # done: a new status line (it carries the run's own time), no progress overlay left
            wait.until(lambda d: (text := d.find_element(By.CSS_SELECTOR, "#status").text) != before
                       and "processing" not in text and " s." in text
                       and len(d.find_elements(By.CSS_SELECTOR, "#maps img")) >= 2
                       and d.find_elements(By.CSS_SELECTOR, "#downloads a"))
            page.append(time.perf_counter() - start)
            page_cpu.append(time.process_time() - cpu)  # the server's side (prediction + Gradio), not Chromium's
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        time.sleep(2)  # let the 3D viewer draw before the screenshot
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.screenshot)
    finally:
        driver.quit()
        app.close()

    result = {"config": args.config, "ckpt_path": args.ckpt_path, "input_hw": [768, 1024], "resolution": args.resolution,
              "torch_threads": threads, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "autogroup": autogroup(), "direct_s": direct, "direct_cpu_s": direct_cpu, "page_s": page, "page_server_cpu_s": page_cpu,
              "direct_median_s": statistics.median(direct), "direct_cpu_median_s": statistics.median(direct_cpu),
              "direct_stages_median_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
              "page_median_s": statistics.median(page), "page_over_direct": statistics.median(page) / statistics.median(direct),
              "last_status": status}
    print(f"direct predictor.run: median {result['direct_median_s']:.2f} s ({result['direct_cpu_median_s']:.2f} CPU s); "
          f"upload -> result in the page: median {result['page_median_s']:.2f} s ({result['page_over_direct']:.2f}x the direct "
          f"call), {args.resolution} px, {threads} torch threads, load average {result['load_average'][0]:.1f}")
    print("direct call by stage (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in result["direct_stages_median_s"].items()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
