"""`python -m carbench.demo [--port N] [--host H] [hydra overrides…]`: start the browser demo.

Overrides are evaluate.py's (`model.classifier=vitl14`, `postprocess=none`, `dataset=voc` for its
hyperparameters). The model is built once at launch so a problem (e.g. weights that are not on
disk) is printed here and shown in the page, where the server keeps running so the settings can
be changed and tried again.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from carbench.demo.app import MODEL_ERRORS, SegmenterCache, build_app
from carbench.demo.config import compose_demo
from carbench.demo.inputs import MAX_SIDE
from carbench.models.factory import build_segmenter


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m carbench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE,
                        help=f"longest image side; larger uploads are downscaled (default {MAX_SIDE})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for evaluate.py")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535 (0 = any free port), got {args.port}")
    if args.max_side < 16:
        parser.error(f"--max-side must be at least 16 pixels, got {args.max_side}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        cfg = compose_demo(args.overrides)
    except ValueError as err:  # hydra's override errors are ValueErrors too
        raise SystemExit(f"carbench.demo: {err}") from err
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = SegmenterCache(lambda m, p: build_segmenter(m, p, device=cfg.device, seed=cfg.seed))
    startup_error = None
    try:
        cache.get(cfg.model, cfg.postprocess)
    except MODEL_ERRORS as err:
        startup_error = f"{type(err).__name__}: {err}"
        print(f"carbench.demo: the model could not be built: {startup_error}", file=sys.stderr)
    app = build_app(cfg, cache, max_side=args.max_side, startup_error=startup_error)
    app.queue(default_concurrency_limit=2)
    app.launch(server_name=args.host, server_port=args.port or None, prevent_thread_lock=True, show_error=True)
    print(f"carbench.demo: ready at {app.local_url} ({time.perf_counter() - t0:.1f} s after launch)", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
