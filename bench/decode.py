"""Decode + preprocess per frame: a whole JPEG decode against a scaled one, side by side.

A worker decodes every frame of every camera before its model sees it; at a GPU's pace that,
not inference, is the cost per frame. ``batching.scaled_decode`` (the default) decodes a JPEG
at 1/2, 1/4 or 1/8 of its size where the model's input still gets every pixel it needs
(:func:`faillite.models.preprocess.decode_scale`). For each camera resolution and
EfficientNet-Lite variant this prints, on one core, the time to decode and preprocess a frame
both ways (alternating, so both see the same machine), the speed-up, how far apart the two
input tensors are (mean absolute difference, in the model's normalised units), and whether the
real model gives the same top-1 class on "chelsea" both ways.

Run: ``python bench/decode.py [--json F] [--reps N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
import skimage.data

from faillite import envelope
from faillite.catalog import load_catalog
from faillite.config import default_models_dir, packaged_config
from faillite.models.build import build_models
from faillite.models.preprocess import decode_scale, preprocess, top_k
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig

SIZES = ((640, 480), (1280, 720), (1920, 1080), (3840, 2160))
VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _frame(width: int, height: int) -> envelope.Frame:
    photo = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)
    payload = envelope.pack(
        envelope.encode_jpeg(image), seq=0, capture_ns=0, width=width, height=height
    )
    return envelope.unpack(payload, max_bytes=1 << 24)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40, help="timed frames per path and case")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one preprocess thread's cost, as each of the worker's pool
    catalog = load_catalog(packaged_config("catalog.yaml"))
    build_models(catalog, args.models_dir, list(VARIANTS), progress=True)
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=1))
    rows: list[dict[str, Any]] = []
    print(
        f"{'frame':>10}  {'variant':<20}{'scale':>6}{'whole ms':>10}{'scaled ms':>11}"
        f"{'speed-up':>10}{'mean |diff|':>13}{'top-1 same':>12}"
    )
    for variant in VARIANTS:
        v = catalog.variant(variant)
        model = backend.load(variant, args.models_dir / v.file)
        for width, height in SIZES:
            frame = _frame(width, height)
            scale = decode_scale(v.preprocess, height, width)
            times: dict[int, list[float]] = {1: [], scale: []}
            for _ in range(args.reps):
                for s in dict.fromkeys((1, scale)):
                    t0 = time.perf_counter()
                    preprocess(envelope.decode_image(frame, s), v.preprocess)
                    times[s].append((time.perf_counter() - t0) * 1000)
            whole = preprocess(envelope.decode_image(frame), v.preprocess)
            scaled = preprocess(envelope.decode_image(frame, scale), v.preprocess)
            tops = [top_k(model.infer(x), 1)[0][0] for x in (whole, scaled)]
            row = {
                "frame": f"{width}x{height}",
                "variant": variant,
                "scale": scale,
                "whole_ms": statistics.median(times[1]),
                "scaled_ms": statistics.median(times[scale]),
                "mean_abs_diff": float(np.abs(whole - scaled).mean()),
                "top1": tops,
            }
            row["speedup"] = row["whole_ms"] / row["scaled_ms"]
            rows.append(row)
            print(
                f"{row['frame']:>10}  {variant:<20}{scale:>6}{row['whole_ms']:10.2f}"
                f"{row['scaled_ms']:11.2f}{row['speedup']:9.2f}x{row['mean_abs_diff']:13.4f}"
                f"{'yes' if tops[0] == tops[1] else 'NO':>12}"
            )
    if args.json:
        args.json.write_bytes(orjson.dumps({"rows": rows}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
