"""Frame to input tensor, on the worker's hot path, and logits to top-k classes.

For a 640x480 BGR frame into a 224x224 NCHW tensor this takes about 0.2 ms on one core:

- the center crop is a view of the frame (no copy), resized straight to the input size;
- downscaling does the integer part of the factor with INTER_AREA (OpenCV's fast path for whole
  factors, a box filter with no aliasing) and the rest with INTER_LINEAR: nearly INTER_AREA's
  quality at a tenth of the cost of INTER_AREA at a fractional factor (~1.4 ms);
- color order, scale and mean become one ``cv2.addWeighted`` per channel plane, which converts
  to float32 and writes straight into the output tensor.

Larger frames need not be decoded whole: :func:`decode_scale` says at which of the JPEG
decoder's own scales (1/2, 1/4, 1/8, done in the DCT by libjpeg) a frame still has every pixel
the model's input needs. That is the whole-factor part of the downscale above, done while
decoding: a 1920x1080 frame for a 224x224 input decodes at 1/4 and its crop then needs no
INTER_AREA step at all (decode + preprocess 2.7 ms instead of 5.9 ms on one core here:
``bench/decode.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from faillite.catalog import Preprocess

__all__ = ["decode_scale", "preprocess", "softmax", "top_k"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Plan:
    """Everything about a (spec, frame shape) pair that does not depend on the pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    factor: int  # the whole part of the downscale, source pixels per output pixel
    area_size: tuple[int, int] | None  # (width, height) after the whole-factor INTER_AREA step
    out_hw: tuple[int, int]
    src_channel: tuple[int, int, int]  # frame channel (BGR order) feeding each output channel
    scale: tuple[float, float, float]  # 1 / std, per output channel
    bias: tuple[float, float, float]  # -mean / std, per output channel
    nchw: bool


@functools.lru_cache(maxsize=128)
def _plan(spec: Preprocess, height: int, width: int) -> _Plan:
    out_h, out_w = spec.size
    if spec.resize == "center_crop":
        # Source pixels per output pixel, so that the crop is crop_pct of the scaled frame.
        k = min(height * spec.crop_pct / out_h, width * spec.crop_pct / out_w)
        roi_h = min(height, max(1, round(out_h * k)))
        roi_w = min(width, max(1, round(out_w * k)))
    else:
        roi_h, roi_w = height, width
    factor = math.floor(min(roi_h / out_h, roi_w / out_w))
    area_size: tuple[int, int] | None = None
    if factor >= 2:
        # Trim to whole multiples (< factor pixels) so INTER_AREA takes its integer fast path.
        roi_h -= roi_h % factor
        roi_w -= roi_w % factor
        area_size = (roi_w // factor, roi_h // factor)
    y0 = (height - roi_h) // 2
    x0 = (width - roi_w) // 2
    rgb = spec.color == "rgb"
    src = (2, 1, 0) if rgb else (0, 1, 2)
    scale = tuple(1.0 / s for s in spec.std)
    bias = tuple(-m / s for m, s in zip(spec.mean, spec.std, strict=True))
    return _Plan(
        y0,
        y0 + roi_h,
        x0,
        x0 + roi_w,
        factor,
        area_size,
        (out_h, out_w),
        src,
        (scale[0], scale[1], scale[2]),
        (bias[0], bias[1], bias[2]),
        spec.layout == "nchw",
    )


# The scales JPEG decoders decode at directly (libjpeg's scaled IDCT), largest first.
DECODE_SCALES = (8, 4, 2)


def decode_scale(spec: Preprocess, height: int, width: int) -> int:
    """The largest JPEG decode scale (1, 2, 4 or 8) at which a ``width`` x ``height`` frame
    still has at least the model's input resolution in the region :func:`preprocess` uses."""
    factor = _plan(spec, height, width).factor
    return next((s for s in DECODE_SCALES if s <= factor), 1)


def preprocess(
    frame_bgr: npt.NDArray[np.uint8], spec: Preprocess, *, out: FloatArray | None = None
) -> FloatArray:
    """A batch of one float32 tensor, ``[1,3,H,W]`` or ``[1,H,W,3]`` as ``spec.layout`` says.

    ``frame_bgr`` is uint8 BGR (HxWx3), BGRA (HxWx4) or gray (HxW). ``out``, if given, is
    filled and returned, so a caller may reuse one buffer per model.
    """
    if frame_bgr.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, not {frame_bgr.dtype}")
    if frame_bgr.ndim not in (2, 3) or (frame_bgr.ndim == 3 and frame_bgr.shape[2] not in (3, 4)):
        raise ValueError(f"frame must be HxW, HxWx3 or HxWx4, not {frame_bgr.shape}")
    p = _plan(spec, frame_bgr.shape[0], frame_bgr.shape[1])
    out_h, out_w = p.out_hw
    shape = (1, 3, out_h, out_w) if p.nchw else (1, out_h, out_w, 3)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float32 array of shape {shape}")

    img: npt.NDArray[Any] = frame_bgr[p.y0 : p.y1, p.x0 : p.x1]  # a view
    if p.area_size is not None:
        img = cv2.resize(img, p.area_size, interpolation=cv2.INTER_AREA)
    if img.shape[:2] != (out_h, out_w):
        img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)

    planes: tuple[Any, ...] = (img, img, img) if img.ndim == 2 else tuple(cv2.split(img))
    if p.nchw:
        for c in range(3):
            plane = planes[p.src_channel[c]]
            # dst = plane * scale + bias, converted to float32 in one pass, in place in ``out``.
            cv2.addWeighted(
                plane, p.scale[c], plane, 0.0, p.bias[c], dst=out[0, c], dtype=cv2.CV_32F
            )
    else:
        hwc = out[0]
        for c in range(3):
            plane = planes[p.src_channel[c]]
            np.multiply(plane, np.float32(p.scale[c]), out=hwc[:, :, c])
            hwc[:, :, c] += np.float32(p.bias[c])
    return out


def softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    e = np.exp(x - x.max())  # shift for stability; float64 so tiny scores do not underflow
    return np.asarray(e / e.sum(), dtype=np.float64)


def top_k(logits: npt.NDArray[Any], k: int) -> list[tuple[int, float]]:
    """The ``k`` best (class index, softmax score) pairs of one image's logits, best first."""
    scores = softmax(logits)
    if k <= 0:
        return []
    k = min(k, scores.size)
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [(int(i), float(scores[i])) for i in idx]
