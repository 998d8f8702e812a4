"""Dataset registry: config `dataset.name` → adapter constructor, so a new benchmark is one file + one yaml.

`build_dataset(cfg)` is the only way the engine makes a dataset. It passes the config keys to the
constructor by name and rejects keys the constructor does not take: a typo such as
`dataset.varaint=voc20` must fail loudly instead of silently evaluating the default variant.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from carbench.data.base import SemanticDataset

__all__ = ["DATASETS", "IGNORED_KEYS", "register_dataset", "build_dataset"]

#: name → constructor (a SemanticDataset subclass or a function returning one).
DATASETS: dict[str, Callable[..., SemanticDataset]] = {}

#: Keys of `cfg.dataset` that are read by other layers, not by the constructor. Only `name`
#: (which selects the constructor) today; add here, with the reason, rather than swallowing typos.
IGNORED_KEYS: frozenset[str] = frozenset({"name"})

F = TypeVar("F", bound=Callable[..., SemanticDataset])


def register_dataset(name: str) -> Callable[[F], F]:
    """Class/function decorator: make `build_dataset({'name': name, ...})` call the decorated object.

    Registering a second, different object under a taken name is an error (two adapters fighting
    over one config name is always a bug); re-registering the same qualified name (a module reload)
    replaces the entry.
    """

    def deco(obj: F) -> F:
        old = DATASETS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (obj.__module__, obj.__qualname__):
            raise ValueError(
                f"dataset name {name!r} is already registered to {old.__module__}.{old.__qualname__}"
            )
        DATASETS[name] = obj
        return obj

    return deco


def _to_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Plain dict from a dict or an OmegaConf DictConfig (interpolations resolved, lists as lists)."""
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    if not isinstance(cfg, Mapping):
        raise TypeError(f"build_dataset expects a mapping with a 'name' key, got {type(cfg).__name__}")
    return dict(cfg)


def build_dataset(cfg: Mapping[str, Any]) -> SemanticDataset:
    """Build the dataset named by `cfg['name']`, passing the other keys as constructor arguments.

    Raises:
        ValueError: unknown name (the message lists the registered names), or keys the
            constructor does not accept (the message lists the accepted ones), or missing
            required arguments.
    """
    kwargs = _to_dict(cfg)
    name = kwargs.get("name")
    if name is None:
        raise ValueError(f"dataset config has no 'name'; registered datasets: {sorted(DATASETS)}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {sorted(DATASETS)}")
    factory = DATASETS[name]
    kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_KEYS}

    sig = inspect.signature(factory)
    params = sig.parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [
        p.name for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_var_kw:
        raise ValueError(
            f"dataset {name!r} does not take config key(s) {unknown}; it accepts {accepted} "
            f"(plus {sorted(IGNORED_KEYS)}, read elsewhere). Check the spelling in your dataset config "
            f"or override (e.g. dataset.{accepted[0] if accepted else 'root'}=...)."
        )
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"dataset {name!r}: {e}; accepted keys: {accepted}") from e
    return factory(**kwargs)
