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

Image bombs: a few hundred bytes of JPEG can declare 32767x32767 pixels, and the decoder
allocates (gigabytes) and works (seconds) for what the header declares. :func:`check_image` reads
the JPEG header only (:func:`read_jpeg_header`: its markers up to the SOF, the frame header; no
OpenCV, nothing allocated in proportion to the image) and refuses, before anything decodes, an
image that declares more pixels than its sensor is configured for, a size other than the
envelope's, or no pixels at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

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


class JpegHeaderError(CorruptImageError):
    """The JPEG header cannot be read up to its SOF: no SOI, truncated, garbled, a segment
    running past the end, or too many markers. Counted as ``corrupt_image``: like an image that
    does not decode, it is not a JPEG the worker can read (found out before decoding)."""


class ImageTooLargeError(FrameError):
    """The image declares more pixels than allowed (its sensor's configured size)."""

    reason = "image_too_large"


class CostlyImageError(FrameError):
    """A JPEG whose structure (scans, coding process) would cost far more to decode than a
    camera's frame of its size: refused before the decoder runs."""

    reason = "costly_image"


class ImageSizeMismatchError(CorruptImageError):
    """The image's size differs from the envelope's width and height."""

    reason = "image_size_mismatch"


class EmptyImageError(FrameError):
    """The image, or the envelope, declares a width or a height of 0."""

    reason = "empty_image"


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


# -- JPEG header ------------------------------------------------------------------------------

# Markers read before the SOF, fill bytes (0xFF padding) included: a camera's JPEG has
# about 5 to 20 (APPn, DQT, DHT, DRI, COM), and a 2 MiB frame has room for at most about 32
# segments of 64 KiB. The bound keeps a crafted header (thousands of 4-byte segments) cheap.
MAX_JPEG_MARKERS: Final = 256

_SOI: Final = 0xD8
_TEM: Final = 0x01  # standalone, no length
# Start of frame, every coding process; not C4 (DHT), C8 (JPG), CC (DAC).
_SOF: Final = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)
# Segments that may come before SOF and are skipped by their length: DHT, DAC, DQT, DNL, DRI,
# APP0-APP15, COM. Anything else before SOF (SOS, EOI, RSTn, a second SOI, JPG/JPGn, DHP, EXP,
# reserved codes) is not a JPEG the decoder would read: refused.
_SKIPPED: Final = frozenset((0xC4, 0xCC, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE))


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int


# What a frame may cost to decode, known from its structure before libjpeg runs. Every scan is
# one more pass of the decoder over the blocks of the components it holds, so a JPEG costs about
# (scans x blocks): a baseline frame has 1 scan, libjpeg's progressive script 10 (YCbCr), and
# nothing a camera makes has more than 32. At this bound a frame decodes in at most ~3 times
# the passes of a camera's progressive frame of its size (the time, measured by
# bench/frame_check.py: 7x at most); a crafted one with 174,000 scans cost libjpeg 36 s.
MAX_JPEG_SCANS: Final = 32
# Coding processes a camera uses: baseline, extended and progressive Huffman. Arithmetic coding,
# lossless and hierarchical (several frames) JPEGs are slower per pixel, and no camera sends them.
CODINGS: Final[dict[int, str]] = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}


def read_jpeg_header(data: bytes | bytearray | memoryview) -> JpegHeader:
    """The (width, height, components) that a JPEG's SOF declares, from its header alone: see
    :func:`read_jpeg_frame`."""
    return read_jpeg_frame(data)[0]


def read_jpeg_frame(data: bytes | bytearray | memoryview) -> tuple[JpegHeader, int, int]:
    """The header a JPEG's SOF declares, its SOF marker (the coding process) and the offset
    just after the SOF segment.

    Walks the markers from SOI, skipping segments by their length fields, to the first SOF;
    raises :class:`JpegHeaderError` for a missing SOI, a truncated or garbled header, a segment
    running past the end, or more than :data:`MAX_JPEG_MARKERS` markers. Pure Python, at most
    :data:`MAX_JPEG_MARKERS` steps; nothing is copied or decoded."""
    buf = memoryview(data)
    n = len(buf)
    if n < 2 or buf[0] != 0xFF or buf[1] != _SOI:
        raise JpegHeaderError("JPEG header: no SOI (FFD8) at the start of the image")
    pos = 2
    for _ in range(MAX_JPEG_MARKERS):
        if pos + 2 > n:
            raise JpegHeaderError(f"JPEG header: truncated at offset {pos}, before any SOF")
        if buf[pos] != 0xFF:
            raise JpegHeaderError(
                f"JPEG header: byte 0x{buf[pos]:02X} at offset {pos} where a marker should be"
            )
        marker = buf[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        pos += 2
        if marker == _TEM:
            continue
        if marker not in _SOF and marker not in _SKIPPED:
            raise JpegHeaderError(
                f"JPEG header: marker FF{marker:02X} at offset {pos - 2} before any SOF"
            )
        if pos + 2 > n:
            raise JpegHeaderError(f"JPEG header: truncated in the length of marker FF{marker:02X}")
        length = buf[pos] << 8 | buf[pos + 1]
        if length < 2 or pos + length > n:
            raise JpegHeaderError(
                f"JPEG header: segment FF{marker:02X} of length {length} at offset {pos - 2} "
                f"runs past the end of the {n}-byte image"
            )
        if marker in _SOF:
            # P (precision), Y (height), X (width), Nf (components), then 3 bytes a component.
            if length < 8:
                raise JpegHeaderError(f"JPEG header: SOF of length {length} is too short")
            precision = buf[pos + 2]
            height = buf[pos + 3] << 8 | buf[pos + 4]
            width = buf[pos + 5] << 8 | buf[pos + 6]
            components = buf[pos + 7]
            if not 1 <= components <= 4 or length != 8 + 3 * components:
                raise JpegHeaderError(
                    f"JPEG header: SOF with {components} components and length {length}"
                )
            if not 2 <= precision <= 16:
                raise JpegHeaderError(f"JPEG header: SOF with {precision}-bit samples")
            return JpegHeader(width, height, components), marker, pos + length
        pos += length
    raise JpegHeaderError(f"JPEG header: no SOF within the first {MAX_JPEG_MARKERS} markers")


def check_image(frame: Frame, *, max_pixels: int) -> JpegHeader:
    """Refuse, before decoding, an image that its JPEG header says is not worth decoding.

    Raises :class:`JpegHeaderError` (a header that cannot be read), :class:`EmptyImageError`
    (the SOF or the envelope declares a width or height of 0), :class:`ImageTooLargeError`
    (the SOF declares more than ``max_pixels``), :class:`ImageSizeMismatchError` (the SOF's
    size is not the envelope's), :class:`CostlyImageError` (a coding process no camera uses, or
    more than :data:`MAX_JPEG_SCANS` scans). Cheap enough for the network thread: the header
    is walked marker by marker, the scans counted by one vectorized pass (an SOS marker cannot
    appear inside entropy-coded data, where every 0xFF is stuffed or a restart marker): about
    10 µs for a camera's 640x480 frame (bench/frame_check.py)."""
    hdr, coding, body = read_jpeg_frame(frame.data)
    if coding not in CODINGS:
        raise CostlyImageError(
            f"frame {frame.seq}: JPEG coding process FF{coding:02X} (arithmetic, lossless or "
            f"hierarchical): only {', '.join(CODINGS.values())} JPEGs are decoded"
        )
    tail = np.frombuffer(frame.data, dtype=np.uint8)[body:]
    scans = int(np.count_nonzero((tail[:-1] == 0xFF) & (tail[1:] == 0xDA)))  # SOS markers
    if scans > MAX_JPEG_SCANS:
        raise CostlyImageError(
            f"frame {frame.seq}: JPEG with {scans} scans, over the limit of {MAX_JPEG_SCANS} "
            "(a camera's has 1 to 10): refused before decoding"
        )
    if 0 in (hdr.width, hdr.height, frame.width, frame.height):
        raise EmptyImageError(
            f"frame {frame.seq}: empty image: header says {frame.width}x{frame.height}, "
            f"JPEG says {hdr.width}x{hdr.height}"
        )
    if hdr.width * hdr.height > max_pixels:
        raise ImageTooLargeError(
            f"frame {frame.seq}: JPEG declares {hdr.width}x{hdr.height} = "
            f"{hdr.width * hdr.height} pixels, over the limit of {max_pixels}"
        )
    if (hdr.width, hdr.height) != (frame.width, frame.height):
        raise ImageSizeMismatchError(
            f"frame {frame.seq}: header says {frame.width}x{frame.height}, "
            f"JPEG says {hdr.width}x{hdr.height}"
        )
    return hdr


# -- pixels (OpenCV) ----------------------------------------------------------------------------


def encode_jpeg(image_bgr: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    import cv2  # the codec of the roles that make or read pixels (sensor, worker extras)

    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CorruptImageError("OpenCV could not encode the image as JPEG")
    return buf.tobytes()


def decode_image(frame: Frame, scale: int = 1) -> npt.NDArray[np.uint8]:
    """Decode the frame's JPEG to a BGR image; raise :class:`CorruptImageError` if it is bad.

    ``scale`` 2, 4 or 8 decodes at that fraction of the size (libjpeg's scaled IDCT, much
    cheaper than a full decode; each side rounded up): see
    :func:`faillite.models.preprocess.decode_scale`.

    Call :func:`check_image` first: this decodes whatever size the JPEG declares, up to
    OpenCV's own pixel limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, which the worker sets)."""
    arr = np.frombuffer(frame.data, dtype=np.uint8)
    import cv2

    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    if scale not in flags:
        raise ValueError(f"decode scale must be 1, 2, 4 or 8, not {scale}")
    try:
        image = cv2.imdecode(arr, flags[scale])
    except cv2.error as exc:  # OpenCV's size limits raise (an assertion), before allocating
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        if "CV_IO_MAX_IMAGE" in text:
            raise ImageTooLargeError(f"frame {frame.seq}: OpenCV refused: {text}") from None
        raise CorruptImageError(f"frame {frame.seq}: OpenCV refused: {text}") from None
    if image is None:
        raise CorruptImageError(f"frame {frame.seq}: image bytes do not decode as JPEG")
    expected = (-(-frame.height // scale), -(-frame.width // scale))
    if frame.width and frame.height and image.shape[:2] != expected:
        raise ImageSizeMismatchError(
            f"frame {frame.seq}: header says {frame.width}x{frame.height}, "
            f"image is {image.shape[1]}x{image.shape[0]}"
            + (f" at 1/{scale} scale" if scale > 1 else "")
        )
    return np.asarray(image, dtype=np.uint8)
