"""Image bombs: a JPEG header declaring a huge image is refused before anything decodes.

The attack: a 661-byte frame whose SOF declares 32767x32767 made OpenCV allocate 3 GiB and work
for seconds. ``envelope.check_image`` reads the JPEG header only (markers up to SOF, pure Python)
and refuses it in microseconds; OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, set where
the worker process starts) is the second line.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import faillite
from faillite import envelope as env
from faillite.compat import python_code
from faillite.config import MeshConfig, SensorConfig

ROOT = str(Path(faillite.__file__).resolve().parents[1])
MB = 1 << 20
LIMIT = 640 * 480  # a 640x480 sensor


def _jpeg(
    width: int = 64, height: int = 48, *, gray: bool = False, progressive: bool = False
) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (height, width) if gray else (height, width, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return bytes(buf.tobytes())


def _sof_at(jpeg: bytes) -> int:
    """Offset of the SOF marker of an OpenCV-made JPEG (SOF0, or SOF2 when progressive)."""
    at = [i for i in (jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2")) if i > 0]
    assert at, "no SOF0/SOF2 in the JPEG"
    return min(at)


def _patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with the width and height of its SOF replaced: a bomb when they are big."""
    b = bytearray(jpeg)
    i = _sof_at(jpeg)
    b[i + 5 : i + 7] = height.to_bytes(2, "big")
    b[i + 7 : i + 9] = width.to_bytes(2, "big")
    return bytes(b)


def _bomb(width: int = 32767, height: int = 32767) -> bytes:
    return _patch_sof(_jpeg(16, 16), width, height)


def _frame(jpeg: bytes, width: int, height: int) -> env.Frame:
    payload = env.pack(jpeg, seq=3, capture_ns=0, width=width, height=height)
    return env.unpack(payload, max_bytes=2 * MB)


def _refusal(jpeg: bytes, width: int, height: int, max_pixels: int = LIMIT) -> env.FrameError:
    with pytest.raises(env.FrameError) as info:
        env.check_image(_frame(jpeg, width, height), max_pixels=max_pixels)
    return info.value


# -- the bomb ---------------------------------------------------------------------------------


def test_bomb_is_refused_in_microseconds_without_memory_or_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*_a: Any, **_k: Any) -> None:
        raise AssertionError("cv2.imdecode called while checking a header")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    bomb = _bomb()
    assert env.read_jpeg_header(bomb) == (32767, 32767, 3)
    payload = env.pack(bomb, seq=1, capture_ns=0, width=32767, height=32767)
    assert len(payload) < 1000  # the frame was 661 bytes

    def refuse() -> env.FrameError:
        try:
            env.check_image(env.unpack(payload, max_bytes=2 * MB), max_pixels=LIMIT)
        except env.FrameError as exc:
            return exc
        raise AssertionError("the bomb was accepted")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        exc = refuse()
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason == "image_too_large", exc
    assert "32767x32767" in str(exc)
    assert peak < 10 * MB, peak  # Python allocations while refusing (about 1.5 KB measured)

    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        assert refuse().reason == "image_too_large"
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.010, times  # about 5-20 us measured
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024 < 10 * MB


def test_bomb_is_refused_with_the_envelope_claiming_a_normal_size() -> None:
    assert _refusal(_bomb(), 640, 480).reason == "image_too_large"


def test_checking_a_header_loads_no_opencv() -> None:
    """In a fresh interpreter: the check imports no cv2 (so it cannot decode) and the process
    does not grow by the 3 GiB the bomb declares."""
    code = f"""
import sys
if {ROOT!r} not in sys.path: sys.path.insert(0, {ROOT!r})
import json, resource, time
from faillite import envelope as env
payload = bytes.fromhex(sys.stdin.read())
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    env.check_image(env.unpack(payload, max_bytes=1 << 21), max_pixels=640 * 480)
    reason = "accepted"
except env.FrameError as exc:
    reason = exc.reason
dt = time.perf_counter() - t0
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
print(json.dumps({{"reason": reason, "s": dt, "grown": grown, "cv2": "cv2" in sys.modules}}))
"""
    payload = env.pack(_bomb(), seq=1, capture_ns=0, width=32767, height=32767)
    proc = subprocess.run(
        python_code(code),
        input=payload.hex(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["reason"] == "image_too_large"
    assert out["cv2"] is False
    assert out["s"] < 0.010 and out["grown"] < 10 * MB, out


def test_worker_process_sets_opencv_pixel_limit_before_cv2_loads() -> None:
    """OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS when its library loads: imported the way the
    worker process imports it, workers.service sets it first, and cv2.imdecode then refuses a
    bomb instead of allocating it (and still decodes, garbage and all, one under the limit)."""
    code = f"""
import sys
if {ROOT!r} not in sys.path: sys.path.insert(0, {ROOT!r})
import json, os
import faillite.cli, faillite.catalog, workers.cli, workers.plugins  # as workers/cli.py runs
assert "cv2" not in sys.modules, "cv2 loaded before workers.service"
import workers.service
import cv2
import numpy as np
from faillite import envelope as env
bomb, small = (bytes.fromhex(x) for x in sys.stdin.read().split())
out = {{"env": os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"),
        "max": workers.service.MAX_SENSOR_PIXELS, "set": workers.service._OPENCV_LIMIT_SET}}
try:
    cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR)
    out["bomb"] = "decoded"
except cv2.error as exc:
    out["bomb"] = str(exc)
try:
    env.decode_image(env.unpack(env.pack(bomb, seq=0, capture_ns=0, width=8000, height=8000),
                                max_bytes=1 << 21))
except env.FrameError as exc:
    out["decode_image"] = exc.reason
img = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
out["small"] = None if img is None else list(img.shape)
print(json.dumps(out))
"""
    # 8000x8000 = 64 Mpixels, over the 33.2 Mpixel limit (192 MB if the limit were missing);
    # 1000x1000 under it: OpenCV decodes what the header declares (with warnings).
    stdin = f"{_bomb(8000, 8000).hex()} {_bomb(1000, 1000).hex()}"
    proc = subprocess.run(
        python_code(code),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["set"] is True
    assert out["env"] == str(out["max"]) == str(7680 * 4320)
    assert "CV_IO_MAX_IMAGE_PIXELS" in out["bomb"], out
    assert out["decode_image"] == "image_too_large"
    assert out["small"] == [1000, 1000, 3]


def test_sensor_limit_is_its_configured_size_and_the_default_the_config_maximum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)  # restored afterwards
    from workers import service

    # The fallback is the largest sensor the config accepts, and nothing larger is accepted.
    SensorConfig(id="big", width=7680, height=4320)
    for too_big in ({"width": 7681}, {"height": 4321}):
        with pytest.raises(ValidationError):
            SensorConfig(id="big", **too_big)
    assert service.MAX_SENSOR_PIXELS == 7680 * 4320
    mesh = MeshConfig(sensors=(SensorConfig(id="cam1", width=320, height=240),))
    assert service.sensor_max_pixels(mesh, "cam1") == 320 * 240
    assert service.sensor_max_pixels(mesh, "nowhere") == service.MAX_SENSOR_PIXELS


# -- sizes ------------------------------------------------------------------------------------


def test_normal_frame_is_accepted_up_to_the_limit_exactly() -> None:
    jpeg = _jpeg(64, 48)
    assert env.check_image(_frame(jpeg, 64, 48), max_pixels=64 * 48) == (64, 48, 3)
    assert _refusal(jpeg, 64, 48, max_pixels=64 * 48 - 1).reason == "image_too_large"


def test_gray_jpeg_has_one_component() -> None:
    assert env.read_jpeg_header(_jpeg(32, 16, gray=True)) == (32, 16, 1)


@pytest.mark.parametrize(
    ("sof", "header"),
    [((64, 48), (640, 480)), ((64, 48), (48, 64)), ((640, 480), (64, 48))],
    ids=["envelope_bigger", "transposed", "jpeg_bigger"],
)
def test_size_mismatch_is_refused(sof: tuple[int, int], header: tuple[int, int]) -> None:
    exc = _refusal(_patch_sof(_jpeg(64, 48), *sof), *header)
    assert exc.reason == "image_size_mismatch"
    assert isinstance(exc, env.CorruptImageError)
    assert f"header says {header[0]}x{header[1]}" in str(exc)


@pytest.mark.parametrize(
    ("sof", "header"),
    [((0, 0), (0, 0)), ((64, 0), (64, 0)), ((0, 48), (0, 48)), ((64, 48), (0, 0))],
    ids=["both_0x0", "height_0", "width_0", "envelope_0x0"],
)
def test_empty_image_is_refused(sof: tuple[int, int], header: tuple[int, int]) -> None:
    assert _refusal(_patch_sof(_jpeg(64, 48), *sof), *header).reason == "empty_image"


def test_progressive_jpeg_of_normal_size_is_accepted_and_decodes() -> None:
    jpeg = _jpeg(64, 48, progressive=True)
    assert b"\xff\xc2" in jpeg and b"\xff\xc0" not in jpeg  # SOF2, progressive
    frame = _frame(jpeg, 64, 48)
    assert env.check_image(frame, max_pixels=LIMIT) == (64, 48, 3)
    assert env.decode_image(frame).shape == (48, 64, 3)
    assert _refusal(_patch_sof(jpeg, 32767, 32767), 64, 48).reason == "image_too_large"


@pytest.mark.parametrize(
    "code", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
)
def test_every_sof_marker_is_read(code: int) -> None:
    b = bytearray(_bomb())
    b[_sof_at(bytes(b)) + 1] = code
    assert env.read_jpeg_header(bytes(b)) == (32767, 32767, 3)


@pytest.mark.parametrize("code", [0xC4, 0xCC])
def test_dht_and_dac_are_skipped_not_taken_for_a_sof(code: int) -> None:
    """A DHT/DAC segment whose bytes look like a bomb's SOF comes first: the real SOF counts."""
    jpeg = _jpeg(64, 48)
    fake = bytes([0xFF, code, 0, 17, 8, 0x7F, 0xFF, 0x7F, 0xFF, 3]) + bytes(9)
    crafted = jpeg[:2] + fake + jpeg[2:]
    assert env.check_image(_frame(crafted, 64, 48), max_pixels=LIMIT) == (64, 48, 3)


# -- headers that cannot be read: refused as corrupt_image ------------------------------------


def _unreadable(data: bytes) -> env.FrameError:
    with pytest.raises(env.JpegHeaderError) as info:
        env.read_jpeg_header(data)
    assert info.value.reason == "corrupt_image"
    return info.value


def test_truncated_headers_are_refused() -> None:
    jpeg = _jpeg(64, 48)
    sof = _sof_at(jpeg)
    for cut in (0, 1, 2, 3, 4, 5, 10, sof, sof + 1, sof + 3, sof + 8, sof + 18):
        _unreadable(jpeg[:cut])
    # Through the envelope too: a frame whose JPEG stops in its header.
    payload = env.pack(jpeg[: sof + 6], seq=0, capture_ns=0, width=64, height=48)
    with pytest.raises(env.JpegHeaderError):
        env.check_image(env.unpack(payload, max_bytes=MB), max_pixels=LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8garbage that is not a marker",
        b"\xff\xd8\x00\x00\x00\x00",
        b"\xff\xd8\xff\x00\x00\x10",  # a stuffed byte, not a marker
        b"\xff\xd8\xff\xd8\x00\x02",  # a second SOI
        b"\xff\xd8\xff\xda\x00\x08" + bytes(6),  # SOS before any SOF
        b"\xff\xd8\xff\xd9",  # EOI
        b"\xff\xd8\xff\xd0\xff\xc0",  # RST0
        b"\xff\xd8\xff\xc8\x00\x02",  # JPG (reserved), not a SOF
        b"\xff\xd8\xff\xe0\x00\x01",  # a segment length below 2
        b"\xff\xd8\xff\xe0\xff\xff" + bytes(100),  # a segment running past the end
        b"\x89PNG\r\n\x1a\n" + bytes(40),  # no SOI
        b"\xd8\xff\xe0\x00\x10",
    ],
    ids=[
        "text",
        "zeros",
        "stuffed",
        "second_soi",
        "sos",
        "eoi",
        "rst",
        "jpg",
        "short_length",
        "past_end",
        "png",
        "no_soi",
    ],
)
def test_garbled_headers_are_refused(data: bytes) -> None:
    _unreadable(data)


def test_bad_sof_contents_are_refused() -> None:
    jpeg = bytearray(_jpeg(64, 48))
    i = _sof_at(bytes(jpeg))
    for offset, value in ((9, 0), (9, 7), (4, 0), (4, 40)):  # components 0 / 7, precision 0 / 40
        bad = bytearray(jpeg)
        bad[i + offset] = value
        _unreadable(bytes(bad))
    short = jpeg[: i + 2] + b"\x00\x06" + jpeg[i + 4 :]  # a SOF length of 6
    _unreadable(bytes(short))


def test_thousands_of_tiny_segments_are_refused_quickly() -> None:
    jpeg = _jpeg(64, 48)
    many = jpeg[:2] + b"\xff\xfe\x00\x02" * 5000 + jpeg[2:]  # 5000 empty COM segments
    t0 = time.perf_counter()
    exc = _unreadable(many)
    assert time.perf_counter() - t0 < 0.010
    assert f"first {env.MAX_JPEG_MARKERS} markers" in str(exc)
    # Fill bytes count as markers: 1 MiB of 0xFF padding is refused as quickly.
    t0 = time.perf_counter()
    _unreadable(jpeg[:2] + b"\xff" * MB + jpeg[2:])
    assert time.perf_counter() - t0 < 0.010
    # Well under the bound, a crowded but valid header is read.
    some = jpeg[:2] + b"\xff\xfe\x00\x02" * 100 + b"\xff\xff\xff" + jpeg[2:]
    assert env.read_jpeg_header(some) == (64, 48, 3)
    assert env.decode_image(_frame(some, 64, 48)).shape == (48, 64, 3)


def test_mangled_jpegs_only_ever_raise_frame_errors() -> None:
    """Random cuts and byte flips of real JPEGs: a FrameError or a header, never another
    exception, never slow."""
    rng = random.Random(1)
    seeds = [_jpeg(64, 48), _jpeg(40, 30, progressive=True), _jpeg(16, 16, gray=True)]
    worst = 0.0
    for _ in range(3000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(len(b), 700))] = rng.randrange(256)
        data = bytes(b[: rng.randint(0, len(b))]) if rng.random() < 0.3 else bytes(b)
        t0 = time.perf_counter()
        try:
            hdr = env.read_jpeg_header(data)
        except env.FrameError:
            pass
        else:
            assert 1 <= hdr.components <= 4
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.050, worst


# -- scan bombs: the cost of a JPEG is in its scans, counted before decoding --------------------


def _frame_of(jpeg: bytes, width: int = 64, height: int = 48) -> env.Frame:
    return env.unpack(env.pack(jpeg, seq=1, capture_ns=0, width=width, height=height), max_bytes=MB)


def _more_scans(jpeg: bytes, scans: int) -> bytes:
    """``jpeg`` with its last scan repeated until it has ``scans`` scans (libjpeg decodes each:
    it only warns about the bogus progression)."""
    last = jpeg[jpeg.rfind(b"\xff\xda") : -2]
    have = jpeg.count(b"\xff\xda")
    return jpeg[:-2] + last * (scans - have) + b"\xff\xd9"


def test_camera_frames_baseline_and_progressive_pass_the_cost_check() -> None:
    baseline, progressive = _jpeg(), _jpeg(progressive=True)
    assert baseline.count(b"\xff\xda") == 1 and progressive.count(b"\xff\xda") == 10
    assert env.check_image(_frame_of(baseline), max_pixels=LIMIT) == (64, 48, 3)
    assert env.check_image(_frame_of(progressive), max_pixels=LIMIT) == (64, 48, 3)
    gray = _jpeg(gray=True, progressive=True)
    assert env.check_image(_frame_of(gray), max_pixels=LIMIT) == (64, 48, 1)


@pytest.mark.parametrize("scans", [env.MAX_JPEG_SCANS, env.MAX_JPEG_SCANS + 1, 2000])
def test_more_scans_than_a_camera_makes_are_refused_before_decoding(scans: int) -> None:
    jpeg = _more_scans(_jpeg(progressive=True), scans)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None  # real
    frame = _frame_of(jpeg)
    if scans <= env.MAX_JPEG_SCANS:
        assert env.check_image(frame, max_pixels=LIMIT) == (64, 48, 3)
        return
    with pytest.raises(env.CostlyImageError, match=f"JPEG with {scans} scans"):
        env.check_image(frame, max_pixels=LIMIT)


def test_a_scan_marker_in_a_segment_before_the_frame_is_not_counted() -> None:
    """The count starts after the SOF: a comment full of FFDA bytes is the camera's business."""
    jpeg = _jpeg(progressive=True)
    comment = b"\xff\xda" * 100
    crafted = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
    assert env.check_image(_frame_of(crafted), max_pixels=LIMIT) == (64, 48, 3)


@pytest.mark.parametrize("sof", [0xC3, 0xC9, 0xCA, 0xC5])
def test_coding_processes_no_camera_uses_are_refused(sof: int) -> None:
    """Lossless, arithmetic and hierarchical JPEGs: slower per pixel than what cameras send."""
    b = bytearray(_jpeg())
    b[_sof_at(bytes(b)) + 1] = sof
    with pytest.raises(env.CostlyImageError, match=f"coding process FF{sof:02X}"):
        env.check_image(_frame_of(bytes(b)), max_pixels=LIMIT)
