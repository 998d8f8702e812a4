"""Visual prompts: how CaR shows the mask classifier *which* region a query's proposal covers.

CaR scores a proposal by drawing it onto the image and asking CLIP which query the prompted
image shows (docs/method.md §1.4). The prompts are applied to the full-resolution RGB uint8
image, always in the official order `PROMPT_ORDER` whatever order the config lists them in
(so ``["circle", "blur"]`` and ``["blur", "circle"]`` give the same image — blurring after the
circle would soften the red outline, which the official code never does).

- blur: whole image Gaussian-blurred (k×k, σ = OpenCV's default for k), mask interior kept sharp.
- gray: pixels outside the mask become grayscale. ``gray_bgr_quirk=True`` reproduces the
  official code, which converts the RGB array with OpenCV's BGR→GRAY weights (R and B weights
  swapped); ``False`` uses the correct RGB→GRAY weights.
- black: pixels outside the mask set to 0 ("mask" in the paper).
- circle: ellipse outline centred at the mask's pixel centroid, semi-axes (bbox_w//2, bbox_h//2).
  ``centroid_trunc_quirk=True`` reproduces the official code, which truncates the centroid to an
  integer (``int(mean)``); ``False`` rounds it to the nearest pixel (docs/method.md §5.2).
- rectangle: box outline of the same half-sizes around the centroid (same centroid rule).
- contour: holes filled, then the mask's outer contours drawn.

Empty mask: circle / rectangle / contour draw nothing (there is nothing to outline), while
blur / gray / black treat every pixel as "outside" and so alter the whole image — this is what
the official masking arithmetic does with an all-zero mask, kept for fidelity. Drawing nothing
for the outlines is a deliberate departure: the official centroid of an empty mask is
``int(nan)``, which raises, so that code cannot process such a proposal at all (docs/method.md §5.4).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Official application order (docs/method.md §1.4). "crop" from the paper is not in the code.
OFFICIAL_ORDER: tuple[str, ...] = ("blur", "gray", "black", "circle", "rectangle", "contour")
PROMPT_ORDER = OFFICIAL_ORDER  # the name the demo and older code use

#: Red in RGB, the colour of every outline prompt in the official code.
RED = (255, 0, 0)


@dataclass(frozen=True)
class PromptContext:
    """What a prompt function may use besides the image so far and the mask."""

    geometry: tuple[tuple[int, int], tuple[int, int]] | None  # (centre x, y), (half w, half h); None = empty mask
    gray_bgr_quirk: bool
    blur_kernel: int
    color: tuple[int, int, int]
    thickness: int


#: prompt function: (image so far H×W×3 uint8, mask H×W bool, context) → new H×W×3 uint8 image
PromptFn = Callable[[np.ndarray, np.ndarray, PromptContext], np.ndarray]
#: name → (position in the application order, function). Filled by `register_prompt`.
PROMPTS: dict[str, tuple[float, PromptFn]] = {}


def register_prompt(name: str, order: float) -> Callable[[PromptFn], PromptFn]:
    """Decorator: make `fn` the visual prompt `name`, applied at position `order` (built-ins: 0..5
    in `OFFICIAL_ORDER`, so e.g. 3.5 runs after circle and before rectangle).

    A prompt defined outside carbench registers itself when its module is imported; list that
    module in `model.prompt_modules` and the prompt's name in `model.visual_prompts`.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a visual prompt needs a non-empty name, got {name!r}")

    def add(fn: PromptFn) -> PromptFn:
        if name in PROMPTS and PROMPTS[name][1] is not fn:
            raise ValueError(f"visual prompt {name!r} is already registered by {PROMPTS[name][1].__module__}; "
                             "pick another name")
        PROMPTS[name] = (float(order), fn)
        return fn

    return add


def import_prompt_modules(modules: Sequence[str]) -> None:
    """Import each module of `model.prompt_modules` (they register their prompts on import)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"model.prompt_modules: cannot import {module!r} ({e}); it must be importable "
                             "in this environment (installed, or on PYTHONPATH)") from e


def _ordered() -> list[str]:
    return sorted(PROMPTS, key=lambda n: PROMPTS[n][0])


def validate_prompts(prompts: Sequence[str]) -> tuple[str, ...]:
    """Check prompt names and return them de-duplicated in the registered order (`OFFICIAL_ORDER` for the built-ins).

    Sorting here (rather than trusting the config order) is what makes the result independent of
    how a config lists the prompts, matching the official fixed application order.
    """
    if isinstance(prompts, str):  # a bare string would otherwise be split into letters
        prompts = [prompts]
    names = list(prompts)
    valid = ", ".join(_ordered())
    if not names:
        raise ValueError(f"at least one visual prompt is required; set model.visual_prompts to a list of: {valid}")
    unknown = sorted({p for p in names if p not in PROMPTS}, key=str)
    if unknown:
        raise ValueError(
            f"unknown visual prompt(s) {unknown}; valid: {valid} "
            "(set model.visual_prompts to a list of these, e.g. [circle, blur]; a prompt of your own must be "
            "registered with register_prompt in a module listed in model.prompt_modules)"
        )
    present = set(names)
    return tuple(p for p in _ordered() if p in present)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> None:
    _check_image(image)
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be H×W matching the image {image.shape[:2]}, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        # Refuse soft maps: silently treating 0.3 as "inside" would hide a missing binarisation.
        raise ValueError(
            f"mask must be bool (binarise soft maps first, e.g. with prompt_images), got {mask.dtype}"
        )


def _centre_and_half_sizes(
    mask: np.ndarray, trunc: bool = True
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pixel centroid (x, y) as int, and (bbox_w//2, bbox_h//2) of a non-empty mask.

    `trunc=True` truncates the centroid (the official ``int(mean)``; coordinates are ≥ 0, so this
    is a floor), False rounds it. The bbox width/height are pixel extents (x_max − x_min + 1), as
    `cv2.boundingRect` reports.
    """
    ys, xs = np.nonzero(mask)
    mx, my = float(xs.mean()), float(ys.mean())
    cx, cy = (int(mx), int(my)) if trunc else (int(round(mx)), int(round(my)))
    bw = int(xs.max() - xs.min() + 1)
    bh = int(ys.max() - ys.min() + 1)
    return (cx, cy), (bw // 2, bh // 2)


def _fill_holes(mask_u8: np.ndarray) -> np.ndarray:
    """Fill every hole of a 0/1 uint8 mask by painting its outer contours solid."""
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask_u8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled | mask_u8  # keep any original pixel the contour fill might miss


def apply_visual_prompts(
    image: np.ndarray,
    mask: np.ndarray,
    prompts: Sequence[str],
    *,
    gray_bgr_quirk: bool = True,
    centroid_trunc_quirk: bool = True,
    blur_kernel: int = 15,
    color: tuple[int, int, int] = RED,
    thickness: int = 1,
) -> np.ndarray:
    """Return a NEW H×W×3 uint8 image with `prompts` applied for `mask`, in the registered order.

    image: H×W×3 uint8 RGB (never modified). mask: H×W bool, True = the proposal's region.
    Each prompt acts on the output of the previous one (e.g. gray after blur grays the blurred
    background), as in the official code. See the module docstring for the empty-mask behaviour.
    """
    _check_inputs(image, mask)
    order = validate_prompts(prompts)
    if blur_kernel < 1 or blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel}")
    if thickness < 1:
        raise ValueError(f"thickness must be ≥ 1, got {thickness}")
    color = tuple(int(c) for c in color)
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f"color must be three values in [0, 255], got {color}")

    out = np.ascontiguousarray(image).copy()
    geometry = _centre_and_half_sizes(mask, centroid_trunc_quirk) if mask.any() else None
    ctx = PromptContext(geometry, gray_bgr_quirk, blur_kernel, color, thickness)
    for name in order:
        out = PROMPTS[name][1](out, mask, ctx)
    return out.astype(np.uint8, copy=False)


def prompt_images(
    image: np.ndarray,
    masks: np.ndarray,
    prompts: Sequence[str],
    eta: float,
    **kw,
) -> list[np.ndarray]:
    """One prompted image per proposal: binarise each K×H×W soft map at ``> eta`` and prompt.

    Official rule: if a SOFT map sums to ≤ 1 (an essentially empty proposal), the classifier gets
    an unprompted copy of the image instead. A map that sums to more than 1 but has no value above
    η still goes through the prompts with an empty mask (see the module docstring). `kw` is
    forwarded to `apply_visual_prompts`.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating, np.integer)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta (mask threshold η, model.mask_threshold) must be a number in [0, 1], got {eta!r}")
    _check_image(image)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be K×H×W with H×W = image {image.shape[:2]}, got shape {masks.shape}")
    order = validate_prompts(prompts)
    out: list[np.ndarray] = []
    for soft in masks:
        if float(soft.sum()) <= 1.0:
            out.append(image.copy())
        else:
            out.append(apply_visual_prompts(image, soft > eta, order, **kw))
    return out


# ------------------------------------------------------------------ the built-in prompts, official order


@register_prompt("blur", 0)
def _blur(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    blurred = cv2.GaussianBlur(out, (ctx.blur_kernel, ctx.blur_kernel), 0)
    return np.where(mask[..., None], out, blurred)


@register_prompt("gray", 1)
def _gray(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    code = cv2.COLOR_BGR2GRAY if ctx.gray_bgr_quirk else cv2.COLOR_RGB2GRAY
    gray = cv2.cvtColor(np.ascontiguousarray(out), code)
    return np.where(mask[..., None], out, np.repeat(gray[..., None], 3, axis=2))


@register_prompt("black", 2)
def _black(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    return np.where(mask[..., None], out, np.uint8(0))


@register_prompt("circle", 3)
def _circle(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    if ctx.geometry is None:
        return out  # nothing to outline on an empty mask
    (cx, cy), (ax, ay) = ctx.geometry
    out = np.ascontiguousarray(out)
    cv2.ellipse(out, (cx, cy), (ax, ay), 0, 0, 360, ctx.color, ctx.thickness)
    return out


@register_prompt("rectangle", 4)
def _rectangle(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    if ctx.geometry is None:
        return out
    (cx, cy), (ax, ay) = ctx.geometry
    out = np.ascontiguousarray(out)
    cv2.rectangle(out, (cx - ax, cy - ay), (cx + ax, cy + ay), ctx.color, ctx.thickness)
    return out


@register_prompt("contour", 5)
def _contour(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    if ctx.geometry is None:
        return out
    filled = _fill_holes(mask.astype(np.uint8))
    contours, _ = cv2.findContours(filled, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, ctx.color, ctx.thickness)
    return out
