"""What the frame-cost check costs per frame, and what it saves: figures side by side.

Run::

    python bench/frame_check.py [--repeat 2000] [--bomb-scans 20000] [--json FILE]

1. ``envelope.check_image`` (envelope, JPEG header walk, scan count) per frame, in µs, for a
   camera's 640x480 baseline and progressive frames, a 1920x1080 frame, and a 2 MiB scan bomb.
2. libjpeg's decode (OpenCV) of the same frames, and of a frame at the scan limit
   (``MAX_JPEG_SCANS``): what a frame may cost once it passed the check, against a camera's.
3. The scan bomb's decode (``--bomb-scans`` scans: the 2 MiB one has ~170,000, tens of
   seconds): what the check refuses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faillite import envelope
from field_kit.drill.attacks import scan_bomb
from sensors.sources import fit, scene_photo


def _photo(width: int, height: int, progressive: bool = False) -> bytes:
    img = fit(scene_photo("chelsea"), width, height)
    params = [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return buf.tobytes()


def _more_scans(jpeg: bytes, scans: int) -> bytes:
    last = jpeg[jpeg.rfind(b"\xff\xda") : -2]
    return jpeg[:-2] + last * (scans - jpeg.count(b"\xff\xda")) + b"\xff\xd9"


def _check_us(payload: bytes, repeat: int) -> tuple[float, str]:
    out = "passed"
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        try:
            frame = envelope.unpack(payload, max_bytes=2 * 2**20)
            envelope.check_image(frame, max_pixels=1920 * 1080)
        except envelope.FrameError as exc:
            out = f"refused ({exc.reason})"
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000, out


def _decode_ms(jpeg: bytes, repeat: int) -> float:
    arr = np.frombuffer(jpeg, np.uint8)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cv2.imdecode(arr, cv2.IMREAD_COLOR)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=2000, help="checks timed per frame")
    p.add_argument("--bomb-scans", type=int, default=20_000, help="scans of the bomb decoded")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    cv2.setNumThreads(1)
    frames = {
        "camera 640x480 baseline": (_photo(640, 480), 640, 480),
        "camera 640x480 progressive": (_photo(640, 480, True), 640, 480),
        "camera 1920x1080 baseline": (_photo(1920, 1080), 1920, 1080),
        f"640x480 at the limit ({envelope.MAX_JPEG_SCANS} scans)": (
            _more_scans(_photo(640, 480, True), envelope.MAX_JPEG_SCANS),
            640,
            480,
        ),
        "scan bomb 640x480, 2 MiB": (scan_bomb(640, 480, 2 * 2**20 - 1024), 640, 480),
    }
    rows: list[dict[str, Any]] = []
    print(f"{'frame':<34} {'bytes':>9} {'scans':>7} {'check µs':>9} {'verdict':<24} decode ms")
    for name, (jpeg, w, h) in frames.items():
        payload = envelope.pack(jpeg, seq=1, capture_ns=0, width=w, height=h)
        us, verdict = _check_us(payload, args.repeat)
        scans = jpeg.count(b"\xff\xda")
        bomb = "bomb" in name
        decode = None if bomb else _decode_ms(jpeg, 20)
        rows.append(
            {"frame": name, "bytes": len(jpeg), "scans": scans, "check_us": round(us, 1),
             "verdict": verdict, "decode_ms": None if decode is None else round(decode, 2)}
        )  # fmt: skip
        shown = "(refused: not decoded)" if decode is None else f"{decode:.2f}"
        print(f"{name:<34} {len(jpeg):>9} {scans:>7} {us:>9.1f} {verdict:<24} {shown}")
    camera = next(r["decode_ms"] for r in rows if r["frame"] == "camera 640x480 progressive")
    limit = next(r["decode_ms"] for r in rows if "at the limit" in r["frame"])
    bomb = _more_scans(_photo(640, 480, True), args.bomb_scans)
    print(f"... decoding a {args.bomb_scans}-scan bomb once", file=sys.stderr, flush=True)
    bomb_ms = _decode_ms(bomb, 1)
    print(
        f"\nworst frame that passes: {limit / camera:.1f}x a camera's progressive frame to decode"
        f"\na {args.bomb_scans}-scan bomb ({len(bomb)} bytes): {bomb_ms:.0f} ms to decode, "
        f"{bomb_ms / camera:.0f}x a camera's frame; refused by the check in "
        f"{rows[-1]['check_us']:.0f} µs (the 2 MiB one)"
    )
    if args.json:
        doc = {
            "frames": rows,
            "limit_over_camera": round(limit / camera, 2),
            "bomb": {"scans": args.bomb_scans, "bytes": len(bomb), "decode_ms": round(bomb_ms)},
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
