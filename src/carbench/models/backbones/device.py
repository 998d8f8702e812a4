"""Device choice and mixed precision, shared by CaR and every baseline so "+AMP" means one thing.

`device=auto|cpu|cuda[:i]` is resolved once, with an error when the asked-for device is not
there. `model.amp` picks the autocast dtype for the CLIP work on CUDA ("auto" = bf16 there); CPU
always runs in fp32, so CPU runs are bit-exact whatever `model.amp` says.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_DTYPES", "DEVICE_HINT", "autocast", "check_amp", "resolve_device"]

#: `model.amp` values → autocast dtype on CUDA ("auto" → bf16 on CUDA; None = no autocast).
AMP_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

DEVICE_HINT = "use device=auto (CUDA if available, else CPU), device=cpu, device=cuda or device=cuda:N"


def check_amp(amp: str) -> str:
    """`amp` itself, or a ValueError listing the valid `model.amp` values."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown model.amp {amp!r}; set model.amp to one of: {', '.join(AMP_DTYPES)}")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA ("auto" = bf16 there); a no-op on CPU or with `amp=none`."""
    dtype = AMP_DTYPES[check_amp(amp)] if amp != "auto" else (torch.bfloat16 if device.type == "cuda" else None)
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn `device=auto|cpu|cuda[:i]` into a torch device; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device={device!r} is not a device name; {DEVICE_HINT}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: carbench runs on CPU or CUDA only; {DEVICE_HINT}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={str(device)!r} was asked for but CUDA is not available here; use device=cpu or auto"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise RuntimeError(
                f"device={str(device)!r} was asked for but this machine has {n} CUDA device(s) "
                f"({'cuda:0' if n == 1 else f'cuda:0 … cuda:{n - 1}'}); use one of them, or device=cuda / auto"
            )
    return dev
