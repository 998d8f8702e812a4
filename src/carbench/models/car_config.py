"""CaR's config → components: the model yaml's defaults and `_target_` instantiation with injection.

Two jobs, both for `factory.build_car`:

1. `complete_model_cfg`: a model config given as a partial dict (tests, the demo, scripts) is laid
   over the model's own yaml (conf/model/<name>.yaml with its defaults list, i.e. the default
   proposer and scorer), so every default lives in the yaml, once. A `proposer` / `scorer` node the
   caller gives replaces the default node whole (a dense proposer must not inherit CLIP-ES keys).
2. `build_component`: `hydra.utils.instantiate` of a `model.proposer` / `model.scorer` node. The
   node's `backbone` (a preset name) and `backbone_pretrained` are taken out and replaced by the
   CLIP loaded from the shared `BackbonePool`, so proposer and scorer share weights whenever they
   name the same preset. The builder then offers run-wide settings (e.g. `amp`, the fidelity
   switches, the reference implementation's `query_chunk=1`) to the constructor: each is passed
   only if the constructor has a parameter of that name and the node does not set it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from carbench.models.presets import get_preset

#: conf/model/ of this checkout (the package is installed editable from the repository).
MODEL_CONF = Path(__file__).resolve().parents[3] / "conf" / "model"
#: the component groups of CaR's model config (conf/model/<group>/*.yaml)
COMPONENTS = ("proposer", "scorer")


class LoadsBackbones(Protocol):
    """What `build_component` needs of the backbone pool."""

    def get(self, preset: str, pretrained: str | None) -> Any: ...


def load_group_yaml(folder: Path, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml with its defaults list applied (same-group parents, sub-groups)."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"no config {path}; valid choices there: {', '.join(valid)}")
    raw = OmegaConf.load(path)
    defaults = raw.pop("defaults", None) or []
    base = OmegaConf.create({})
    for entry in defaults:
        if entry == "_self_":
            continue
        if isinstance(entry, str):  # a parent in the same group: its keys first, ours on top
            base = OmegaConf.merge(base, load_group_yaml(folder, entry))
        else:  # `sub_group: choice`
            ((group, choice),) = dict(entry).items()
            base[group] = load_group_yaml(folder / group, str(choice))
    return OmegaConf.merge(base, raw)  # type: ignore[return-value]


def complete_model_cfg(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """`cfg` over conf/model/<name>.yaml, resolved to a plain dict (see the module docstring)."""
    base = load_group_yaml(MODEL_CONF, name)
    given = OmegaConf.create({k: v for k, v in dict(cfg).items() if k != "defaults"})  # a yaml loaded as is
    chosen = {c: given.pop(c) for c in COMPONENTS if c in given}
    merged = OmegaConf.merge(base, given)
    for component, node in chosen.items():
        merged[component] = node
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def build_component(
    node: Mapping[str, Any], role: str, pool: LoadsBackbones, offered: Mapping[str, Any]
) -> Any:
    """Instantiate `model.<role>` (a `_target_` node), injecting the pooled backbone and `offered`."""
    node = dict(node)
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise ValueError(f"model.{role} needs a _target_ (a class path such as mypkg.MyProposer); "
                         f"choose one with model/{role}=<name> (conf/model/{role}/) or set model.{role}._target_")
    try:
        cls = get_class(target)
    except (ImportError, ValueError, InstantiationException) as e:
        raise ValueError(f"model.{role}._target_={target!r} cannot be imported ({e}); check the module path "
                         "and that its package is installed in this environment") from e
    params = inspect.signature(cls).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    if "backbone" in node:  # a preset name: replaced by the pooled CLIP if the class takes one
        preset = node.pop("backbone")
        pretrained = node.pop("backbone_pretrained", None)
        if "backbone" in params or open_kwargs:
            get_preset(preset)  # a bad preset name fails here, before any weights load
            kwargs["backbone"] = pool.get(preset, pretrained)
    unknown = sorted(k for k in node if k != "_target_" and k not in params)
    if unknown and not open_kwargs:
        valid = sorted(k for k in params if k != "self")
        raise ValueError(f"unknown model.{role} key(s) {unknown} for {target}; valid: {', '.join(valid)} "
                         f"(keys left from another {role} choice? start your own class from the bare node: "
                         f"model/{role}=custom model.{role}._target_={target})")
    for key, value in offered.items():
        if key in params and key not in node:
            kwargs[key] = value
    return instantiate(node, **kwargs, _convert_="all")
