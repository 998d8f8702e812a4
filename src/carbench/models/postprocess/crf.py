"""Dense-CRF post-processing of CaR's final proposals (docs/method.md §1.5).

CaR sharpens the coarse (patch-resolution, upsampled) CAM proposals with a fully connected CRF
(pydensecrf, Krähenbühl & Koltun) using the CLIP-ES / deeplab-pytorch defaults: 10 mean-field
iterations, Gaussian kernel sxy=1 compat=3, bilateral kernel sxy=67 srgb=3 compat=4.

Semantic mode: channels = [background ; the K surviving queries' maps], with
background = (1 − max_k map_k) ** bg_factor; unary = −log(clip(p, 1e-5)); the per-pixel argmax
after inference gives mutually exclusive masks. Referring mode (`crf_binary`): each map is CRF'd
alone as [(1 − y) ** bg_factor, y].

Quirks (both switchable or fixed, never silent):
- C (`CRFParams.caffe_wrap`): the official code feeds the bilateral term BGR minus the Caffe
  mean (104.008, 116.669, 122.675) cast to uint8, so negative values wrap around (dark pixels
  become bright). `caffe_wrap=True` reproduces that byte for byte (C truncation toward zero,
  then modulo 256, which is what NumPy's float→uint8 cast does on x86); `False` feeds raw RGB.
- D: the official one-hot infers its class count from the labels present, so when the
  highest-index queries win no pixel it returns fewer channels, and those trailing queries lose
  their mask and their score. The functions here always return exactly K masks (an empty one for
  a query that wins nothing); `one_hot_channels` says how many the official code would have
  returned, and the model applies that loss when `model.crf_one_hot_quirk` is on
  (docs/method.md §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf

#: Caffe / ImageNet BGR mean used by CLIP-ES and CaR when building the CRF image (quirk C).
CAFFE_BGR_MEAN = np.array([104.008, 116.669, 122.675])

#: Lower clip of the probabilities before −log, as pydensecrf's `unary_from_softmax` default.
PROB_CLIP = 1e-5


@dataclass
class CRFParams:
    """Dense-CRF hyper-parameters; defaults are the official CaR / CLIP-ES values."""

    iterations: int = 10
    gaussian_sxy: float = 1
    gaussian_compat: float = 3
    bilateral_sxy: float = 67
    bilateral_srgb: float = 3
    bilateral_compat: float = 4
    bg_factor: float = 1.0
    caffe_wrap: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be ≥ 1, got {self.iterations}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.bg_factor <= 0:
            raise ValueError(f"bg_factor must be > 0, got {self.bg_factor}")


def crf_image(image: np.ndarray, caffe_wrap: bool = True) -> np.ndarray:
    """The C-contiguous uint8 H×W×3 image given to the bilateral term (see quirk C)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if not caffe_wrap:
        return np.ascontiguousarray(image)
    shifted = image[..., ::-1].astype(np.float64) - CAFFE_BGR_MEAN
    # Deterministic version of the official `astype(np.uint8)` on negative floats (UB in C).
    wrapped = np.trunc(shifted).astype(np.int64) % 256
    return np.ascontiguousarray(wrapped.astype(np.uint8))


def _unary(maps: np.ndarray, hw: tuple[int, int], bg_factor: float, what: str) -> np.ndarray:
    """−log of the CRF's (1 + K) channel probabilities [background ; maps] as a float32 (1+K)×(H·W) array.

    background = (1 − max_k clip(map_k, 0, 1)) ** bg_factor. Built one channel at a time in float64
    (each value rounded to float32 exactly as a whole-stack float64 computation would round it), so
    the only K-sized array is the float32 unary pydensecrf takes anyway: with 847 queries on a large
    image a float64 copy of the stack would cost gigabytes for nothing.
    """
    if maps.shape[-2:] != hw:
        raise ValueError(f"{what} spatial size {maps.shape[-2:]} must match the image {hw}")
    k = maps.shape[0]
    unary = np.empty((k + 1, hw[0] * hw[1]), dtype=np.float32)
    top = np.zeros(hw, dtype=np.float64)
    for i in range(k):
        ch = np.asarray(maps[i], dtype=np.float64)
        if np.isnan(ch).any():
            raise ValueError(f"{what} contains NaN (channel {i})")
        if ch.size and (ch.min() < -1e-6 or ch.max() > 1 + 1e-6):
            raise ValueError(f"{what} must lie in [0, 1], got range [{ch.min()}, {ch.max()}] in channel {i}")
        ch = np.clip(ch, 0.0, 1.0)
        np.maximum(top, ch, out=top)
        unary[i + 1] = -np.log(np.clip(ch, PROB_CLIP, None)).reshape(-1)
    unary[0] = -np.log(np.clip((1.0 - top) ** bg_factor, PROB_CLIP, None)).reshape(-1)
    return unary


def _infer(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Run the dense CRF on a C×(H·W) float32 unary; return the H×W int argmax label map."""
    n = unary.shape[0]
    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=crf_image(image, params.caffe_wrap),
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(n, h, w)
    return q.argmax(0)  # ties go to the lower channel, i.e. background first


def crf_semantic(image: np.ndarray, maps: np.ndarray, params: CRFParams) -> np.ndarray:
    """K×H×W soft maps → K×H×W mutually exclusive bool masks (background channel dropped).

    image: H×W×3 uint8 RGB. maps: K×H×W in [0, 1], K ≥ 1, at image resolution. Always returns
    exactly K masks (quirk D fixed): a query that wins no pixel gets an all-False mask.
    """
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be K×H×W with K ≥ 1, got shape {maps.shape}")
    labels = _infer(image, _unary(maps, image.shape[:2], params.bg_factor, "maps"), params)
    return labels[None] == np.arange(1, maps.shape[0] + 1)[:, None, None]


def one_hot_channels(masks: np.ndarray) -> int:
    """Number of query masks the official one-hot keeps for K exclusive masks (quirk D).

    It is the index of the last query that wins at least one pixel, plus one (0 when no query wins
    any: the official code then has no mask at all and fails; carbench draws nothing).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be K×H×W, got shape {masks.shape}")
    won = np.flatnonzero(masks.reshape(masks.shape[0], -1).any(1))
    return int(won[-1]) + 1 if won.size else 0


def crf_binary(image: np.ndarray, prob: np.ndarray, params: CRFParams) -> np.ndarray:
    """Referring mode: one H×W soft map → H×W bool foreground, CRF'd as [(1 − y)^bf, y]."""
    if prob.ndim != 2:
        raise ValueError(f"prob must be H×W, got shape {prob.shape}")
    # with one channel the background (1 − max) ** bf is exactly (1 − y) ** bf
    labels = _infer(image, _unary(prob[None], image.shape[:2], params.bg_factor, "prob"), params)
    return labels == 1


class DenseCRF:
    """Post-processor object: ``DenseCRF(params)(image, maps)`` → K×H×W exclusive bool masks.

    Wraps `crf_semantic` so the model holds one configured callable (built by the factory from
    the `postprocess` config); "no post-processing" is handled by the caller, not here.
    """

    def __init__(self, params: CRFParams | None = None) -> None:
        self.params = params if params is not None else CRFParams()

    def __call__(self, image: np.ndarray, maps: np.ndarray) -> np.ndarray:
        return crf_semantic(image, maps, self.params)

    def binary(self, image: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Referring mode for one map (see `crf_binary`)."""
        return crf_binary(image, prob, self.params)

    def __repr__(self) -> str:
        return f"DenseCRF({self.params!r})"
