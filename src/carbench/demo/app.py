"""The browser demo: one image, your queries, CaR's recurrence drawn step by step (Gradio).

Thin on purpose: the model comes from `build_segmenter` (the builder evaluate.py uses) with the
page's settings written into the composed model config, the answer is one `segment()` call, and
the pictures are `carbench.viz` drawing the returned `Prediction` and its trace. The handler is a
pure function of the page's inputs, so two browser tabs never see each other's results; the only
shared object is the cache of built models, used under a lock (Grad-CAM's hooks and backward
passes must not interleave).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from carbench import viz
from carbench.demo.config import CONFIG_BACKGROUND, DemoConfig
from carbench.demo.inputs import MAX_SIDE, InputError, load_image, parse_queries, toy_scenes
from carbench.models.factory import CAM_TYPES, build_segmenter
from carbench.models.prompts import PROMPT_ORDER
from carbench.toy.scenes import CLASS_NAMES
from carbench.types import Prediction, Segmenter

#: Errors a bad setting or missing weights raise while building or running the model; shown in the page.
MODEL_ERRORS = (ValueError, FileNotFoundError, TypeError, NotImplementedError)
CUSTOM = "your own"


class SegmenterCache:
    """Built segmenters keyed by their full config (a few kept), and the lock every use takes."""

    def __init__(self, build: Callable[[dict, dict], Segmenter], size: int = 3) -> None:
        self.build, self.size = build, size
        self.lock = threading.RLock()
        self._built: OrderedDict[str, Segmenter] = OrderedDict()

    def get(self, model_cfg: dict, post_cfg: dict) -> tuple[Segmenter, float]:
        """The segmenter of these configs (built on first use) and the seconds building it took."""
        key = json.dumps([model_cfg, post_cfg], sort_keys=True)
        with self.lock:
            t0 = time.perf_counter()
            if key not in self._built:
                self._built[key] = self.build(model_cfg, post_cfg)
                while len(self._built) > self.size:
                    self._built.popitem(last=False)
            self._built.move_to_end(key)
            return self._built[key], time.perf_counter() - t0

    def segment(self, model_cfg: dict, post_cfg: dict, image: np.ndarray,
                queries: list[str]) -> tuple[Prediction, float]:
        """Run the segmenter of these configs on one image; returns the prediction and the build seconds."""
        with self.lock:
            segmenter, t_build = self.get(model_cfg, post_cfg)
            return segmenter.segment(image, queries), t_build


def settings_to_configs(cfg: DemoConfig, background: str, custom_background: str, eta: float, theta: float,
                        lam: float, prompts: list[str], cam: str, post: str) -> tuple[dict, dict]:
    """The page's settings written into copies of the composed model / post-processing configs."""
    if background == CUSTOM:
        bg = parse_queries(custom_background, "background query") if custom_background.strip() else []
    elif background in cfg.background_lists:
        bg = cfg.background_lists[background]
    else:
        raise InputError(f"Unknown background list {background!r}; pick one of the listed choices.")
    if not prompts:
        raise InputError(f"Pick at least one visual prompt ({', '.join(PROMPT_ORDER)}).")
    if post not in ("none", "crf"):
        raise InputError(f"Post-processing must be none or crf, got {post!r}.")
    model = {**cfg.model, "mask_threshold": float(eta), "confidence_threshold": float(theta),
             "clipes_threshold": float(lam), "visual_prompts": list(prompts), "cam": cam,
             "background_queries": list(bg)}
    post_cfg = {"name": "none"} if post == "none" else (cfg.postprocess if cfg.postprocess.get("name") == "crf"
                                                         else cfg.crf)
    return model, dict(post_cfg)


def stage_times(pred: Prediction, t_build: float, t_render: float, t_total: float) -> str:
    """Markdown table of seconds per stage: model build, the trace's stages summed over steps, drawing."""
    times: dict[str, float] = defaultdict(float)
    for step in pred.trace:
        for k, v in step.get("time", {}).items():
            times[k] += v
    rows = [("model build / load", t_build), *times.items(), ("drawing", t_render), ("total", t_total)]
    return "| stage | seconds |\n|---|---|\n" + "\n".join(f"| {k} | {v:.3f} |" for k, v in rows)


def render(image: np.ndarray, queries: list[str], pred: Prediction, theta: float,
           ) -> tuple[Image.Image, list[tuple[Image.Image, str]]]:
    """The final overlay with its legend, and one captioned panel per recurrent step."""
    palette_ids = viz.query_palette_ids(pred.labels)
    names = {k + 1: f"{q} ({pred.scores[k]:.2f})" for k, q in enumerate(queries)}
    height = max(256, min(image.shape[0], 512))
    overlay = viz.overlay_figure(image, palette_ids, names, height=height)
    colors = {k: viz.palette_color(k + 1) for k in range(len(queries))}
    tile = 112 if len(queries) <= 24 else 72
    panels = viz.step_panels(image, pred.trace, queries, theta, colors, tile=tile, columns=3 if tile > 100 else 6)
    captions = [
        f"step {s['step']}: kept {', '.join(queries[k] for k in s['kept'])}; dropped "
        f"{', '.join(queries[k] for k in s['alive'] if k not in s['kept']) or 'none'}"
        for s in pred.trace
    ]
    return overlay, list(zip(panels, captions, strict=True))


NO_SCENE = "(upload instead)"


def pick_image(upload: str | None, scene: str, scenes: dict[str, np.ndarray],
               max_side: int) -> tuple[np.ndarray, str | None]:
    """The image to segment: the picked toy scene, else the uploaded file (downscaled, with a note)."""
    if scene and scene != NO_SCENE:
        if scene not in scenes:
            raise InputError(f"Unknown toy scene {scene!r}; pick one of the listed scenes.")
        return scenes[scene], None
    return load_image(upload, max_side)


def run_once(cache: SegmenterCache, cfg: DemoConfig, scenes: dict[str, np.ndarray], upload: str | None,
             scene: str, queries_text: str, background: str, custom_background: str, eta: float, theta: float,
             lam: float, prompts: list[str], cam: str, post: str,
             max_side: int = MAX_SIDE) -> tuple[Any, Any, list, str, str, str]:
    """One press of *Segment*: (input shown, overlay, step panels, kept queries, time table, status)."""
    t0 = time.perf_counter()
    image = None
    try:
        queries = parse_queries(queries_text)
        image, note = pick_image(upload, scene, scenes, max_side)
        model_cfg, post_cfg = settings_to_configs(cfg, background, custom_background, eta, theta, lam, prompts,
                                                  cam, post)
        pred, t_build = cache.segment(model_cfg, post_cfg, image, queries)
    except InputError as err:
        return image, None, [], "", "", f"**Input problem:** {err}"
    except MODEL_ERRORS as err:
        return image, None, [], "", "", f"**The model could not run:** {type(err).__name__}: {err}"
    t1 = time.perf_counter()
    overlay, panels = render(image, queries, pred, float(theta))
    t_render = time.perf_counter() - t1
    kept = ", ".join(queries[k] for k in pred.kept)
    status = f"Done: {len(pred.trace)} step(s), kept {len(pred.kept)} of {len(queries)} queries."
    if note:
        status += f" **Note:** {note}"
    return image, overlay, panels, kept, stage_times(pred, t_build, t_render, time.perf_counter() - t0), status


def build_app(cfg: DemoConfig, cache: SegmenterCache | None = None, max_side: int = MAX_SIDE,
              startup_error: str | None = None) -> gr.Blocks:
    """The page. `startup_error` (e.g. missing weights found at launch) is shown until a run replaces it."""
    if cache is None:
        cache = SegmenterCache(lambda m, p: build_segmenter(m, p, device=cfg.device, seed=cfg.seed))
    scenes = toy_scenes()
    m = cfg.model
    with gr.Blocks(title="CaR demo - carbench", analytics_enabled=False) as app:  # no phoning home
        gr.Markdown(
            "# CLIP as RNN, step by step\nUpload an image (or pick a toy scene), type comma-separated "
            "queries and press **Segment**. Each recurrent step shows every alive query's proposal map, the "
            f"prompted image the classifier saw and its score against θ. Model: proposal `{m['proposal']}`, "
            f"classifier `{m['classifier']}`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="upload an image", type="filepath", elem_id="upload")
                scene = gr.Dropdown([NO_SCENE, *scenes], value=NO_SCENE, label="or pick a toy scene",
                                    elem_id="scene")
                shown = gr.Image(label="input", type="numpy", format="png", interactive=False, height=220,
                                 elem_id="shown")
                queries = gr.Textbox(", ".join(CLASS_NAMES), label="queries (comma-separated)", elem_id="queries")
                background = gr.Dropdown([*cfg.background_lists, CUSTOM], value=CONFIG_BACKGROUND,
                                         label="background queries (CAM softmax only)", elem_id="background")
                custom_bg = gr.Textbox("", label="your own background queries (comma-separated)",
                                       elem_id="custom_bg")
                with gr.Accordion("settings", open=False):
                    eta = gr.Slider(0, 1, value=m["mask_threshold"], step=0.01, label="η mask threshold")
                    theta = gr.Slider(0, 1, value=m["confidence_threshold"], step=0.01, label="θ confidence")
                    lam = gr.Slider(0, 1, value=m["clipes_threshold"], step=0.01, label="λ CLIP-ES threshold")
                    prompts = gr.CheckboxGroup(list(PROMPT_ORDER), value=list(m["visual_prompts"]),
                                               label="visual prompts")
                    cam = gr.Radio(list(CAM_TYPES), value=m.get("cam", "clip_es"), label="CAM")
                    post = gr.Radio(["none", "crf"], value=cfg.postprocess.get("name", "none"),
                                    label="post-processing")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown(f"**The model could not be built:** {startup_error}" if startup_error
                                     else "Ready.", elem_id="status")
                kept = gr.Textbox("", label="kept queries", interactive=False, elem_id="kept")
                overlay = gr.Image(label="final segmentation", type="pil", format="png", interactive=False,
                                   elem_id="overlay")
                steps = gr.Gallery(label="recurrent steps", columns=1, object_fit="contain", height="auto",
                                   format="png", elem_id="steps")
                times = gr.Markdown("", elem_id="times")

        def on_upload(path: str | None):
            return NO_SCENE  # an upload replaces a picked scene

        upload.upload(on_upload, upload, scene, api_name=False)

        def segment(*args):
            return run_once(cache, cfg, scenes, *args, max_side=max_side)

        run.click(segment, [upload, scene, queries, background, custom_bg, eta, theta, lam, prompts, cam, post],
                  [shown, overlay, steps, kept, times, status], api_name="segment")
    return app
