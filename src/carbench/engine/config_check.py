"""Strict config keys: every key of a composed config must be one the config tree itself declares.

Hydra refuses an unknown key only without a leading `+`; with it (`+limt=1`, which is what Hydra's
own error tells a user to type) the key is added and then silently ignored by every reader. So the
schema here is built from the yaml files under conf/ (never a hand-kept list): each file adds the
dotted paths it sets, placed by its package (`# @package _global_` or its group folder). A group
node whose `name` matches a file of that group (model=car, postprocess=crf, dataset=voc …) may hold
only the keys of that file plus the keys other files place under it, so a referring key on a
semantic dataset or a CaR key on dense_clip is refused too. A value that is an interpolation
(`dataset: ${dataset}`) mirrors another node, so anything below it is left to that node's check.

Nested groups (conf/model/proposer/, conf/model/scorer/) are read the same way, placed at
`model.proposer` / `model.scorer`. Their nodes are `_target_` nodes, so a node may hold only the
keys of the files with the same `_target_`; a `_target_` no file names (a user's own class) is
checked by the model builder against the class's constructor instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from carbench.checks import check_whole

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
#: folders under conf/ that are not config groups of a run (published numbers, Hydra's own settings)
NOT_GROUPS = frozenset({"reported", "hydra"})
#: top-level keys Hydra manages itself
HYDRA_KEYS = frozenset({"hydra", "defaults"})


class ConfigKeyError(ValueError):
    """A composed config holds a key nothing reads (usually a typo)."""


@dataclass
class Schema:
    """Dotted paths the config tree declares; `by_choice[(group, name)]` = paths one group option sets."""

    paths: set[str] = field(default_factory=set)
    mirrors: set[str] = field(default_factory=set)  # interpolated nodes: their subtree is not checked
    by_choice: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    from_elsewhere: dict[str, set[str]] = field(default_factory=dict)  # group → its paths set by other files
    by_target: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (package, _target_) → paths
    bools: set[str] = field(default_factory=set)  # paths every file that sets them sets to true / false


def _package(path: Path, group: str | None) -> str:
    """'' for `_global_` files and config.yaml, else the group (the file's folder)."""
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    if group is None or "@package _global_" in first:
        return ""
    return group.replace("/", ".")  # a nested group (model/proposer) is placed at model.proposer


def _walk(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        yield dotted, value
        if isinstance(value, Mapping):
            yield from _walk(value, dotted + ".")


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


@dataclass
class _File:
    group: str | None
    paths: set[str]
    name: str | None
    parents: list[str]
    target: str | None = None  # its `_target_` (nested component groups)  # same-group files named in its `defaults` list (it inherits their keys)
    bool_paths: set[str] = field(default_factory=set)  # the paths this file sets to true / false


def _read(path: Path, group: str | None, schema: Schema) -> _File:
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parents = [d for d in raw.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
    data = {k: v for k, v in raw.items() if k not in HYDRA_KEYS}
    pkg = _package(path, group)
    here: set[str] = {pkg} if pkg else set()
    bool_paths: set[str] = set()
    for dotted, value in _walk(data, f"{pkg}." if pkg else ""):
        here.add(dotted)
        if _is_interpolation(value):
            schema.mirrors.add(dotted)
        if isinstance(value, bool):
            bool_paths.add(dotted)
    own = data if pkg else data.get(group or "")
    name = own.get("name") if isinstance(own, Mapping) and "name" in own else None
    target = own.get("_target_") if isinstance(own, Mapping) else None
    return _File(group, here, None if name is None else str(name), parents, None if target is None else str(target),
                 bool_paths)


@lru_cache(maxsize=4)
def load_schema(conf_dir: Path = CONF_DIR) -> Schema:
    """Read every config file of the tree into a Schema (cached: the tree does not change during a run)."""
    schema = Schema()
    files: dict[tuple[str | None, str], _File] = {(None, "config"): _read(conf_dir / "config.yaml", None, schema)}
    for group_dir in sorted(p for p in conf_dir.iterdir() if p.is_dir() and p.name not in NOT_GROUPS):
        for sub in sorted({f.parent for f in group_dir.rglob("*.yaml")}):
            group = sub.relative_to(conf_dir).as_posix()  # "model" or a nested group such as "model/proposer"
            for f in sorted(sub.glob("*.yaml")):
                files[(group, f.stem)] = _read(f, group, schema)

    def lineage(key: tuple[str | None, str], seen: frozenset = frozenset()) -> list[_File]:
        f = files[key]
        out = [f]
        for parent in f.parents:
            pk = (key[0], parent)
            if pk in files and pk not in seen:
                out += lineage(pk, seen | {key})
        return out

    for (group, stem), f in files.items():
        schema.paths |= f.paths
        if group is not None:
            chain = lineage((group, stem))
            name = next((c.name for c in chain if c.name is not None), stem)
            inherited = set().union(*(c.paths for c in chain))
            pkg = group.replace("/", ".")
            schema.by_choice.setdefault((group, name), set()).update(p for p in inherited if p.startswith(pkg + "."))
            target = next((c.target for c in chain if c.target is not None), None)
            if "/" in group and target is not None:
                schema.by_target.setdefault((pkg, target), set()).update(p for p in inherited if p.startswith(pkg + "."))
        for p in f.paths:
            top = p.split(".", 1)[0]
            if top != group and "." in p:
                schema.from_elsewhere.setdefault(top, set()).add(p)
    # a switch: set to true / false by some file and to nothing else by any
    schema.bools = set().union(*(f.bool_paths for f in files.values())) - set().union(
        *(f.paths - f.bool_paths for f in files.values()))
    return schema


def _allowed_under(schema: Schema, group: str, choice: str | None) -> set[str] | None:
    """The paths a group node may hold given its chosen option, or None when the option is not a file."""
    if choice is None or (group, choice) not in schema.by_choice:
        return None
    return schema.by_choice[(group, choice)] | schema.from_elsewhere.get(group, set())


def _nearest(key: str, candidates: set[str]) -> str:
    match = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    if not match:  # compare the last part only: 'model.confidance_threshold' vs the model's keys
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        leaves = {c[len(parent):]: c for c in candidates if c.startswith(parent) and "." not in c[len(parent):]}
        tail = difflib.get_close_matches(key[len(parent):], sorted(leaves), n=1, cutoff=0.5)
        match = [leaves[tail[0]]] if tail else []
    return f"; did you mean '{match[0]}'?" if match else ""


def check_keys(cfg: Mapping[str, Any], schema: Schema | None = None) -> None:
    """Raise ConfigKeyError naming the first key of `cfg` (a plain, resolved dict) the tree does not declare."""
    schema = schema or load_schema()
    groups = {g for g, _ in schema.by_choice}
    components = {pkg for pkg, _ in schema.by_target}
    unknown: list[tuple[str, set[str]]] = []
    for dotted, _value in _walk({k: v for k, v in cfg.items() if k not in HYDRA_KEYS}, ""):
        if any(dotted.startswith(m + ".") for m in schema.mirrors):
            continue
        pkg = next((c for c in components if dotted.startswith(c + ".")), None)
        if pkg is not None:  # inside a `_target_` node: the keys of the files with that target
            target = str(_lookup(cfg, pkg).get("_target_"))
            if (pkg, target) not in schema.by_target:
                continue  # a user's own class: the model builder checks its constructor's parameters
            if dotted not in schema.by_target[(pkg, target)]:
                unknown.append((dotted, schema.by_target[(pkg, target)]))
            continue
        top = dotted.split(".", 1)[0]
        node = cfg.get(top)
        choice = node.get("name") if isinstance(node, Mapping) and top in groups else None
        allowed = _allowed_under(schema, top, str(choice) if choice is not None else None)
        valid = schema.paths if allowed is None or dotted == top else allowed
        if dotted not in valid:
            unknown.append((dotted, valid))
    if unknown:
        key, valid = unknown[0]
        more = f" (and {len(unknown) - 1} more: {', '.join(k for k, _ in unknown[1:4])})" if len(unknown) > 1 else ""
        raise ConfigKeyError(
            f"unknown config key '{key}'{_nearest(key, valid)} Nothing reads it, so it would be ignored{more}; "
            f"fix the spelling or drop the override{_siblings(key, valid)}."
        )


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    """The node at a dotted path of a plain config ({} where it is missing or not a mapping)."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _siblings(key: str, valid: set[str]) -> str:
    """' (valid keys under model: a, b, …)' — the keys allowed next to `key`, or the general rule at the top."""
    if "." not in key:
        return " (valid keys are the ones the files under conf/ declare)"
    parent = key.rsplit(".", 1)[0]
    names = sorted({v[len(parent) + 1:].split(".", 1)[0] for v in valid if v.startswith(parent + ".")})
    return f" (valid keys under {parent}: {', '.join(names)})" if names else ""


#: keys that must be whole numbers (a float such as seed=1.7 would silently run as int(1.7) = 1)
INT_KEYS: dict[str, tuple[int, bool]] = {"seed": (0, False), "num_workers": (0, False), "threads": (1, True),
                                         "overlays": (0, False)}


def check_int_values(cfg: Mapping[str, Any]) -> None:
    """Raise ValueError naming `seed`, `num_workers`, `threads` or `overlays` when it is not a whole number ≥ its
    minimum."""
    for key, (minimum, nullable) in INT_KEYS.items():
        if key not in cfg:  # a config without the key is check_keys' business, not this check's
            continue
        value = cfg[key]
        if value is None and nullable:
            continue
        check_whole(key, value, minimum, max(minimum, 1), " or null" if nullable else "")



def check_bool_values(cfg: Mapping[str, Any], schema: Schema | None = None) -> None:
    """Raise ValueError naming the first switch (a key the config tree only ever sets to true / false) whose value
    is not a bool: `resume=maybe` or `model.double_softmax=no` is a non-empty string, which every
    `if cfg.…:` reads as true."""
    schema = schema or load_schema()
    for dotted, value in _walk({k: v for k, v in cfg.items() if k not in HYDRA_KEYS}, ""):
        if dotted in schema.bools and not isinstance(value, bool):
            raise ValueError(f"{dotted} is a switch and must be true or false, got {value!r} ({type(value).__name__}); "
                             f"set {dotted}=true or {dotted}=false")
