"""Reading a checkpoint file into a state dict without ever running code from the file.

Pickle can run arbitrary code while loading, and TorchScript archives carry code. carbench reads
`.safetensors` files with safetensors and every other file with `torch.load(weights_only=True)`,
never falling back to a full unpickle (open_clip's own loader retries without `weights_only` on a
TypeError, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns into code execution). Every model that
reads a file (CaR's backbones, OVSeg, ReCo's dense features) goes through here.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_SUFFIXES", "UnsafeCheckpointError", "read_checkpoint", "safe_torch_load"]

#: File endings that make a `*_pretrained` value a path rather than an open_clip tag.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read as plain tensors without running code from it: refused."""


_CONVERT_HINT = (
    "If you trust the file, convert it once on a trusted machine to a plain state dict, e.g. "
    "python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=False); "
    "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\" "
    "and point model.<proposal|classifier>_pretrained at OUT.safetensors."
)


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold compiled code next to the weights (`constants.pkl`, `code/`)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _first_sentence(err: BaseException, limit: int = 200) -> str:
    """`Type: first sentence` of an exception, without terminal colour codes (torch adds some)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)  # torch hides the real reason further down
    text = reason.group(1) if reason else text
    first = re.split(r"(?<=[.!?])\s", text.splitlines()[0] if text else "", maxsplit=1)[0].rstrip(".")
    return f"{type(err).__name__}: {first[:limit]}"


def safe_torch_load(path: str | os.PathLike[str]) -> object:
    """`torch.load(path, weights_only=True)` on CPU with clear errors, and never a retry without it.

    A file that only a full unpickle could read (pickled objects or code, TorchScript) raises
    `UnsafeCheckpointError`; a truncated file or one that is not a PyTorch checkpoint raises `ValueError`.
    """
    path = Path(path)
    name = str(path)
    if _is_torchscript_archive(path):
        raise UnsafeCheckpointError(
            f"checkpoint {name!r} is a TorchScript archive (e.g. OpenAI's original ViT-*.pt), which carries "
            "code; carbench does not load it. Use the open_clip Hugging Face weights of the same model "
            "(pretrained tag, e.g. 'openai', cached under ~/.cache/huggingface) or a state-dict file. "
            + _CONVERT_HINT.replace("torch.load('IN', weights_only=False)", "torch.jit.load('IN').state_dict()")
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(name, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:  # not a zip / truncated zip / I/O
        raise ValueError(
            f"checkpoint {name!r} cannot be read ({_first_sentence(err)}); it "
            "is truncated or not a PyTorch checkpoint: download it again."
        ) from err
    except Exception as err:  # UnpicklingError, and whatever a crafted stream makes the restricted unpickler raise
        raise UnsafeCheckpointError(
            f"checkpoint {name!r} refused: it cannot be loaded as plain tensors with torch.load(weights_only=True) "
            f"({_first_sentence(err)}). Unpickling it fully could run code from "
            f"the file, which carbench never does. {_CONVERT_HINT}"
        ) from err


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in a checkpoint file, read without ever executing code from the file.

    `.safetensors` is read by safetensors; anything else by `safe_torch_load` (weights_only=True,
    no fallback). A ``{"state_dict": ...}`` wrapper and a DataParallel ``module.`` prefix are undone,
    as open_clip does; anything but a non-empty name → tensor mapping is a `ValueError`.
    """
    path = Path(path)
    name = str(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(name, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"checkpoint {name!r} is not a readable safetensors file ({err}); it is truncated or not a "
                "checkpoint: download it again."
            ) from err
    else:
        obj = safe_torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"checkpoint {name!r} holds a {type(obj).__name__}, not a state dict (name → tensor); save "
            "model.state_dict() and point model.<proposal|classifier>_pretrained at that file."
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {name!r} is not a model state dict: entries {not_tensors[:5]} are not tensors (a training "
            "checkpoint?). Save model.state_dict() (or its 'model' entry) and point "
            "model.<proposal|classifier>_pretrained at that file."
        )
    if all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}
