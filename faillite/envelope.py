"""The binary frame envelope: a fixed 32-byte header followed by the encoded image.

Layout (network byte order), documented in topics.md::

    offset size field
    0      4    magic  b"FLF1"
    4      1    version (1)
    5      1    encoding (1 = JPEG)
    6      2    header length (32; readers skip unknown header bytes of a longer header)
    8      8    seq (uint64, per sensor incarnation, starts at 0)
    16     8    capture time (int64, ns since the Unix epoch, sensor clock)
    24     2    width (pixels)
    26     2    height (pixels)
    28     4    sensor incarnation tag (uint32, changes when the sensor restarts)
    32     ...  image bytes

Frames are the one binary payload: control traffic stays JSON so MQTT Explorer can show it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import numpy as np
import numpy.typing as npt

MAGIC: Final = b"FLF1"
VERSION: Final = 1
_HEADER = struct.Struct("!4sBBHQqHHI")
HEADER_SIZE: Final = _HEADER.size  # 32


class Encoding(IntEnum):
    JPEG = 1


class FrameError(ValueError):
    """A frame payload that cannot be used."""

    reason = "bad_frame"


class MalformedEnvelopeError(FrameError):
    reason = "malformed_envelope"


class OversizedFrameError(FrameError):
    reason = "oversized_frame"


class CorruptImageError(FrameError):
    reason = "corrupt_image"


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    capture_ns: int
    width: int
    height: int
    encoding: Encoding
    tag: int
    data: memoryview

    @property
    def capture_ts(self) -> float:
        return self.capture_ns / 1e9


def pack(
    image: bytes, *, seq: int, capture_ns: int, width: int, height: int, tag: int = 0
) -> bytes:
    header = _HEADER.pack(
        MAGIC, VERSION, Encoding.JPEG, HEADER_SIZE, seq, capture_ns, width, height, tag
    )
    return header + image


def unpack(payload: bytes | bytearray | memoryview, *, max_bytes: int) -> Frame:
    """Parse an envelope without copying the image bytes; raise a :class:`FrameError`."""
    size = len(payload)
    if size > max_bytes:
        raise OversizedFrameError(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
    if size < HEADER_SIZE:
        raise MalformedEnvelopeError(f"frame of {size} bytes is shorter than the header")
    magic, version, encoding, header_len, seq, capture_ns, width, height, tag = _HEADER.unpack_from(
        payload
    )
    if magic != MAGIC:
        raise MalformedEnvelopeError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MalformedEnvelopeError(f"unknown envelope version {version}")
    if encoding != Encoding.JPEG:
        raise MalformedEnvelopeError(f"unknown image encoding {encoding}")
    if header_len < HEADER_SIZE or header_len >= size:
        raise MalformedEnvelopeError(f"header length {header_len} out of range")
    return Frame(
        seq, capture_ns, width, height, Encoding(encoding), tag, memoryview(payload)[header_len:]
    )


def encode_jpeg(image_bgr: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    import cv2  # the codec of the roles that make or read pixels (sensor, worker extras)

    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CorruptImageError("OpenCV could not encode the image as JPEG")
    return buf.tobytes()


def decode_image(frame: Frame) -> npt.NDArray[np.uint8]:
    """Decode the frame's JPEG to a BGR image; raise :class:`CorruptImageError` if it is bad."""
    arr = np.frombuffer(frame.data, dtype=np.uint8)
    import cv2

    image = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError(f"frame {frame.seq}: image bytes do not decode as JPEG")
    if frame.width and frame.height and image.shape[:2] != (frame.height, frame.width):
        raise CorruptImageError(
            f"frame {frame.seq}: header says {frame.width}x{frame.height}, "
            f"image is {image.shape[1]}x{image.shape[0]}"
        )
    return np.asarray(image, dtype=np.uint8)
