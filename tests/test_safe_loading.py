"""A run never executes code from a checkpoint or data file.

Every CLIP checkpoint — a local path, a tag found in the Hugging Face cache, a fresh download — is
read by `carbench.models.backbones.checkpoint_io.read_checkpoint`: safetensors, or `torch.load(weights_only=True)` with
no fallback. (open_clip's own loader retries a failed weights-only load with a plain `torch.load`,
which under `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` unpickles everything: the crafted file below runs
code through it.) An audit test pins every loader call in src/.
"""

from __future__ import annotations

import ast
import collections
import re
from pathlib import Path

import pytest
import torch

from carbench.models.backbones import weights as weights_mod
from carbench.models.backbones.checkpoint_io import UnsafeCheckpointError, read_checkpoint
from carbench.models.backbones.registry import load_clip

SRC = Path(__file__).resolve().parents[1] / "src" / "carbench"


class _RunsCode:
    """Pickles to 'call exec(code)' — what a malicious checkpoint does on a full unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


class _FailsOnlyWhenRestricted:
    """An OrderedDict whose BUILD state makes torch's weights-only unpickler raise TypeError (it calls
    ``inst.__dict__.update(state)``) while plain pickle accepts it (state, slotstate). That TypeError
    is what open_clip's loader answers with a plain torch.load."""

    def __reduce__(self):
        return (collections.OrderedDict, (), (None, {"x": 1}))


def _evil(tmp_path: Path, name: str = "evil.pt", bypass: bool = False) -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.PWNED"
    payload = [_FailsOnlyWhenRestricted(), _RunsCode(marker)] if bypass else _RunsCode(marker)
    path = tmp_path / name
    torch.save({"visual.proj": payload}, path)
    return path, marker


@pytest.mark.parametrize("bypass", [False, True], ids=["plain_payload", "open_clip_fallback_trigger"])
def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path, monkeypatch, bypass):
    # Users set this to load old checkpoints; it must not weaken carbench's loading.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = _evil(tmp_path, bypass=bypass)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_clip("tiny_random", pretrained=str(path))
    assert not marker.exists(), "code from the checkpoint ran"
    msg = str(err.value)
    assert str(path) in msg and "weights_only=True" in msg and "refused" in msg
    assert ".safetensors" in msg and "_pretrained" in msg  # the fix: convert once, point at the result
    assert isinstance(err.value, ValueError)  # config-style error, caught by callers of ValueError


def test_tag_weights_from_the_cache_and_from_a_download_are_read_safely(tmp_path, monkeypatch):
    """The tag paths must not hand the file to open_clip's loader either."""
    path, marker = _evil(tmp_path, bypass=True)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(weights_mod.open_clip, "list_pretrained_tags_by_model", lambda arch: ["fake"])
    monkeypatch.setattr(weights_mod.open_clip, "get_pretrained_cfg", lambda arch, tag: {"hf_hub": "org/repo/"})
    monkeypatch.setattr(weights_mod, "cached_tag_file", lambda arch, tag, cache: (str(path), ["here"]))
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        load_clip("tiny_random", pretrained="fake")
    # not cached, online: the downloaded file goes through the same reader
    monkeypatch.setattr(weights_mod, "cached_tag_file", lambda arch, tag, cache: (None, ["here"]))
    monkeypatch.setattr(weights_mod, "is_offline", lambda: False)
    monkeypatch.setattr(weights_mod.open_clip, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        load_clip("tiny_random", pretrained="fake")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.* deprecation notices
def test_torchscript_archive_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_clip("tiny_random", pretrained=str(path))
    msg = str(err.value)
    assert str(path) in msg and "TorchScript" in msg and "'openai'" in msg and "torch.jit.load" in msg


def test_safetensors_and_wrapped_state_dicts_load_exactly(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    sd = {k: v.detach().clone().contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("w.safetensors", "wrapped.pt"):
        got = read_checkpoint(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
        loaded = load_clip("tiny_random", pretrained=str(tmp_path / name), seed=99)  # seed 99 ≠ the init of sd
        for k, v in loaded.model.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.safetensors")) + ".*download it again"):
        read_checkpoint(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------------------- audit of src/

#: Loader calls in src/ that can execute code from a file, with the reason they are still there.
#: The audit below fails when one is added, and when one is fixed (then delete it from this list).
KNOWN_UNSAFE: dict[tuple[str, str, str], str] = {}


def _loader_calls() -> set[tuple[str, str, str]]:
    """(file, call, weights_only keyword) of every torch.load / pickle / yaml / numpy / jit load in src/."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if not re.fullmatch(
                r"(torch\.load|torch\.jit\.load|pickle\.loads?|pickle\.Unpickler|cloudpickle\.loads?|dill\.loads?"
                r"|yaml\.(load|unsafe_load|full_load|load_all)|np\.load|numpy\.load|joblib\.load|marshal\.loads?)",
                name,
            ):
                continue
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            rel = str(path.relative_to(SRC))
            if name == "torch.load":
                found.add((rel, name, f"weights_only={kw.get('weights_only', '<default>')}"))
            elif name in ("np.load", "numpy.load"):
                found.add((rel, name, f"allow_pickle={kw.get('allow_pickle', 'False')}"))
            elif name.startswith("yaml."):
                found.add((rel, name, f"Loader={kw.get('Loader', '<none>')}"))
            else:
                found.add((rel, name, ""))
    return found


def test_every_loader_call_in_src_is_safe_or_a_known_exception():
    calls = _loader_calls()
    safe = {
        c for c in calls
        if (c[1] == "torch.load" and c[2] == "weights_only=True")
        or (c[1] in ("np.load", "numpy.load") and c[2] == "allow_pickle=False")
        or (c[1].startswith("yaml.") and "SafeLoader" in c[2])
    }
    unsafe = calls - safe
    new = {c for c in unsafe if c not in KNOWN_UNSAFE}
    assert not new, f"loader calls that can run code from a file: {sorted(new)}; use weights_only=True / safetensors"
    fixed = set(KNOWN_UNSAFE) - unsafe
    assert not fixed, f"fixed, remove from KNOWN_UNSAFE: {sorted(fixed)}"
    # the CLIP loader itself: one torch.load, weights-only, and open_clip never gets a checkpoint path
    assert ("models/backbones/checkpoint_io.py", "torch.load", "weights_only=True") in calls
    creates = [
        n for f in sorted((SRC / "models" / "backbones").glob("*.py"))
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("create_model")
    ]
    assert creates and all(
        any(k.arg == "pretrained" and ast.unparse(k.value) == "None" for k in n.keywords) for n in creates
    ), [ast.unparse(n) for n in creates]
