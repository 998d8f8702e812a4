"""The demo's configuration: the same Hydra composition as `evaluate.py`, restricted to what the demo reads.

`python -m carbench.demo model.classifier=vitl14 postprocess=none` composes `conf/config.yaml` with
those overrides exactly as evaluate.py would, so presets, dataset-specific hyperparameters (η, θ, λ,
prompts, templates, background queries) and post-processing are the ones a run would use. An override
of a key the demo never reads (`limit=5`) is an error, not a silent no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from carbench.models.backbones.device import resolve_device

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"

#: Top-level config keys / groups the demo reads; overrides of anything else are refused.
DEMO_KEYS = ("model", "postprocess", "dataset", "protocol", "bg_queries", "seed", "device", "threads")


NO_BACKGROUND = "no background queries"
CONFIG_BACKGROUND = "the config's list"


@dataclass(frozen=True)
class DemoConfig:
    """The composed pieces the app needs (plain containers: safe to share read-only between sessions)."""

    model: dict[str, Any]
    postprocess: dict[str, Any]
    crf: dict[str, Any]
    seed: int
    device: str
    threads: int | None
    background_lists: dict[str, list[str]]


def override_key(override: str) -> str:
    """`+model.x=1` / `~model.x` / `model=car` → `model`."""
    if "=" not in override and not override.startswith("~"):
        raise ValueError(f"override {override!r} is not of the form key=value (e.g. model.classifier=vitl14)")
    return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("@", 1)[0]


def compose_demo(overrides: list[str]) -> DemoConfig:
    """Compose the config evaluate.py would run with `overrides`, and keep what the demo reads."""
    for o in overrides:
        if override_key(o) not in DEMO_KEYS:
            raise ValueError(
                f"override {o!r}: the demo does not read {override_key(o)!r}; it reads {', '.join(DEMO_KEYS)} "
                "(dataset only for its model hyperparameters). Drop it, or use evaluate.py for runs."
            )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
        crf = compose("config", overrides=["postprocess=crf"]).postprocess
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model.get("name", "car") != "car" or model.get("two_pass"):
        raise ValueError(
            f"the demo shows CaR's recurrence step by step; model={model.get('name')!r}"
            f"{' with two passes' if model.get('two_pass') else ''} is not supported. Use model=car."
        )
    post = OmegaConf.to_container(cfg.postprocess, resolve=True) if cfg.get("postprocess") else {"name": "none"}
    if post.get("name") not in ("none", "crf"):
        raise ValueError(f"the demo offers postprocess=none or crf, got {post.get('name')!r}")
    threads = cfg.get("threads")
    return DemoConfig(
        model=model,
        postprocess=post,
        crf=OmegaConf.to_container(crf, resolve=True),
        seed=int(cfg.seed),
        device=str(resolve_device(str(cfg.device))),  # auto → cuda if present, else cpu (as evaluate.py)
        threads=int(threads) if threads else None,
        background_lists=background_lists(list(model.get("background_queries") or [])),
    )


def background_lists(config_default: list[str]) -> dict[str, list[str]]:
    """The background-query choices: none, the composed config's own list, and every conf/bg_queries file."""
    lists = {NO_BACKGROUND: [], CONFIG_BACKGROUND: config_default}
    for path in sorted((CONF_DIR / "bg_queries").glob("*.yaml")):
        words = OmegaConf.load(path).get("model", {}).get("background_queries")
        if words is None:
            raise ValueError(f"{path} has no model.background_queries list; every bg_queries file must set one")
        lists[f"bg_queries={path.stem} ({len(words)} word{'s' if len(words) != 1 else ''})"] = [str(w) for w in words]
    return lists
