"""Frame envelope and real OpenCV JPEG encoding: round trip and every bad frame."""

from __future__ import annotations

import numpy as np
import pytest

from faillite import envelope as env


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (0, 0, 255)
    img[:, 32:] = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
    return img


def _frame(seq: int = 7) -> bytes:
    jpeg = env.encode_jpeg(_image(), 90)
    return env.pack(
        jpeg, seq=seq, capture_ns=1_700_000_000_123_456_789, width=64, height=48, tag=0xDEADBEEF
    )


def test_round_trip() -> None:
    f = env.unpack(_frame(), max_bytes=1 << 20)
    assert (f.seq, f.width, f.height, f.tag) == (7, 64, 48, 0xDEADBEEF)
    assert f.capture_ts == pytest.approx(1_700_000_000.123456789)
    assert env.check_image(f, max_pixels=64 * 48) == (64, 48, 3)  # header only, before decoding
    img = env.decode_image(f)
    assert img.shape == (48, 64, 3)
    # JPEG is lossy, but the red half stays red.
    assert img[:, :28, 2].mean() > 240 and img[:, :28, 0].mean() < 20


def test_header_is_32_bytes_network_order() -> None:
    raw = _frame(seq=1)
    assert env.HEADER_SIZE == 32
    assert raw[:4] == b"FLF1"
    assert raw[8:16] == (1).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b[:10], env.MalformedEnvelopeError),
        (lambda b: b"XXXX" + b[4:], env.MalformedEnvelopeError),
        (lambda b: b[:4] + b"\x09" + b[5:], env.MalformedEnvelopeError),
        (lambda b: b[:5] + b"\x07" + b[6:], env.MalformedEnvelopeError),
        (lambda b: b[:6] + (4).to_bytes(2, "big") + b[8:], env.MalformedEnvelopeError),
        (lambda b: b + b"\0" * 5000, env.OversizedFrameError),
    ],
    ids=["short", "magic", "version", "encoding", "header_len", "oversized"],
)
def test_bad_envelopes(mutate, error) -> None:  # type: ignore[no-untyped-def]
    good = _frame()
    with pytest.raises(error):
        env.unpack(mutate(good), max_bytes=len(good) + 1000)


def test_corrupt_jpeg_detected() -> None:
    raw = bytearray(_frame())
    raw[env.HEADER_SIZE :] = b"\x00" * (len(raw) - env.HEADER_SIZE)
    f = env.unpack(bytes(raw), max_bytes=1 << 20)
    with pytest.raises(env.CorruptImageError):
        env.decode_image(f)
    with pytest.raises(env.JpegHeaderError) as info:  # no SOI: refused before decoding too
        env.check_image(f, max_pixels=1 << 20)
    assert info.value.reason == "corrupt_image"


def test_size_mismatch_detected() -> None:
    jpeg = env.encode_jpeg(_image())
    f = env.unpack(env.pack(jpeg, seq=0, capture_ns=0, width=640, height=480), max_bytes=1 << 20)
    with pytest.raises(env.CorruptImageError, match="header says 640x480") as info:
        env.decode_image(f)
    assert info.value.reason == "image_size_mismatch"
    with pytest.raises(env.ImageSizeMismatchError, match="JPEG says 64x48"):
        env.check_image(f, max_pixels=640 * 480)  # found from the header alone


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scaled_decode_rounds_each_side_up(scale: int) -> None:
    """libjpeg's scaled sizes are ceil(side / scale); a 1001x751 frame at 1/4 is 251x188."""
    image = np.random.default_rng(1).integers(0, 255, (751, 1001, 3), dtype=np.uint8)
    jpeg = env.encode_jpeg(image)
    f = env.unpack(env.pack(jpeg, seq=0, capture_ns=0, width=1001, height=751), max_bytes=1 << 22)
    assert env.decode_image(f, scale).shape == (-(-751 // scale), -(-1001 // scale), 3)


def test_scaled_decode_still_checks_the_declared_size() -> None:
    jpeg = env.encode_jpeg(np.zeros((480, 640, 3), np.uint8))
    f = env.unpack(env.pack(jpeg, seq=3, capture_ns=0, width=640, height=360), max_bytes=1 << 20)
    with pytest.raises(env.ImageSizeMismatchError, match="image is 160x120 at 1/4 scale"):
        env.decode_image(f, 4)
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        env.decode_image(f, 3)
