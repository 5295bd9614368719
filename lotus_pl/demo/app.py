"""``lotus_pl demo``: a local web page (Gradio, the ``demo`` extra) to try a model on your own photos
and short videos::

    lotus_pl demo --config experiments/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    lotus_pl demo --config exported/quickstart/lotus_pl.yaml                  # an exported folder
    lotus_pl demo --config experiments/released/lotus_g_depth.yaml            # the released weights

The model is built from its configs as ``lotus_pl export`` builds it (configs compose, dotted
overrides work; only the model is instantiated) and runs on the CPU unless ``--device`` says
otherwise. The page: an upload (image or video), the processing resolution (default: the one the
model was trained at) and the seed, then the input beside every task's colour map, a 3D view of
the point cloud, and the downloads (16-bit PNG, NPY, PLY, ...). What happens to an upload is
:class:`~lotus_pl.demo.predictor.DemoPredictor`'s; this module is the page.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

from lightning import Trainer
from lightning.pytorch.cli import LightningArgumentParser

from lotus_pl.data.images import IMAGE_SUFFIXES
from lotus_pl.data.videos import VIDEO_SUFFIXES
from lotus_pl.demo.predictor import DemoPredictor, UploadError
from lotus_pl.export import ExportCLI, build_model, load_weights, resolve_checkpoint

UPLOAD_TYPES = sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES)


def _gradio():
    try:
        import gradio as gr
    except ImportError as exc:
        raise SystemExit("lotus_pl demo needs Gradio: pip install 'lotus_pl[demo]'") from exc
    return gr


def build_app(predictor: DemoPredictor, examples: list[str] | None = None, title: str = "lotus_pl"):
    """The page as a ``gradio.Blocks`` (not launched)."""
    gr = _gradio()
    tasks = ", ".join(t.name for t in predictor.model.tasks)
    default = predictor.default_resolution

    def predict(upload: str | None, resolution: float, seed: float):
        if not upload:
            raise gr.Error("Upload an image or a short video first.")
        try:
            result = predictor.run(upload, int(resolution), int(seed))
        except UploadError as exc:
            raise gr.Error(str(exc)) from exc
        return (result.gallery, str(result.view) if result.view else None, [str(p) for p in result.files],
                str(result.video) if result.video else None, result.message)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}: {tasks}\nUpload a photo or a short video; the model predicts {tasks}. "
                    "Depth is relative (near = bright in the colour map); the 3D view maps it onto a guessed range.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image or short video", file_types=UPLOAD_TYPES, type="filepath",
                                 elem_id="upload")
                resolution = gr.Number(value=default, precision=0, minimum=0, elem_id="resolution",
                                       label="processing resolution, longest edge in px (0 = native; "
                                             f"trained at {predictor.model.training_resolution or 'an unrecorded size'})")
                seed = gr.Number(value=predictor.model.seed, precision=0, label="seed (Lotus-G's noise)", elem_id="seed")
                run = gr.Button("Predict", variant="primary", elem_id="predict")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="input and predictions", columns=len(predictor.model.tasks) + 1,
                                     object_fit="contain", height="auto", elem_id="maps")
                view = gr.Model3D(label="3D (point cloud as a mesh)", elem_id="view", clear_color=(1, 1, 1, 1))
                video = gr.Video(label="video: input and maps, frame by frame", elem_id="video")
                files = gr.File(label="downloads", file_count="multiple", elem_id="downloads")
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=[upload])
        run.click(predict, inputs=[upload, resolution, seed], outputs=[gallery, view, files, video, status])
    return app


class DemoCLI(ExportCLI):
    """The export parser (model configs, ``--ckpt_path``) with the page's options instead of ``--out``."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(**{"prog": "lotus_pl demo", "description": __doc__.split("\n\n")[0], **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="the weights; 'last' or 'resume': the newest of trainer.default_root_dir")
        parser.add_argument("--host", type=str, default="127.0.0.1", help="address to serve on (0.0.0.0: the network)")
        parser.add_argument("--port", type=int, default=7860, help="port to serve on")
        parser.add_argument("--device", type=str, default="cpu", help="torch device for the model")
        parser.add_argument("--examples", type=Optional[str], default="examples/images",
                            help="a folder of example images offered on the page (skipped if missing)")
        parser.add_argument("--max_frames", type=int, default=32, help="frames predicted of an uploaded video")
        parser.add_argument("--out_dir", type=Optional[str], default=None, help="where uploads' outputs go (default: a temp folder)")
        added = {"ckpt_path"}
        for subcommand, skip in self.subcommands().items():
            added.update(parser.add_method_arguments(Trainer, subcommand, skip=set(skip) | added))


def load_predictor(args: list[str]) -> tuple[DemoPredictor, Any]:
    """The predictor for ``lotus_pl demo`` arguments, and the parsed config."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = DemoCLI(args)
    config = cli.config
    model, _ = build_model(cli.model_config)
    ckpt_path = resolve_checkpoint(config.ckpt_path, config.trainer.default_root_dir)
    if ckpt_path is not None:
        load_weights(model, ckpt_path)
    predictor = DemoPredictor(model, config.out_dir, max_frames=config.max_frames, device=config.device)
    return predictor, config


def demo_main(args: list[str], block: bool = True):
    """``lotus_pl demo --config ... [--ckpt_path ...] [--port 7860]``; returns the launched app."""
    predictor, config = load_predictor(args)
    examples = None
    if config.examples and Path(config.examples).is_dir():
        examples = sorted(str(p) for p in Path(config.examples).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:6]
    app = build_app(predictor, examples)
    resolution = predictor.default_resolution
    print(f"[demo] {', '.join(t.name for t in predictor.model.tasks)} at {resolution or 'native'} px by default "
          f"({predictor.model.resolution_reason()}); outputs in {predictor.out_dir}", flush=True)
    app.launch(server_name=config.host, server_port=config.port, prevent_thread_lock=not block,
               allowed_paths=[str(predictor.out_dir)], show_error=True)
    return app
