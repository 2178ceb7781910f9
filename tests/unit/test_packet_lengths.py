"""The embedded broker's packet-length guard, on byte streams cut every way."""

from __future__ import annotations

import pytest

from broker._amqtt_hooks import PacketLengths


def _packet(length: int, kind: int = 0x30) -> bytes:
    out = bytearray([kind])
    n = length
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + b"x" * length


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_packets_within_the_limit_pass_however_the_stream_is_cut(chunk: int) -> None:
    stream = b"".join(_packet(n) for n in (0, 1, 127, 128, 300, 16383, 16384, 1000))
    lengths = PacketLengths(limit=20_000)
    for i in range(0, len(stream), chunk):
        assert lengths.feed(stream[i : i + chunk]) is None


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_a_declared_length_over_the_limit_is_caught_from_the_header(chunk: int) -> None:
    head = _packet(25 * 1024 * 1024)[:5]  # type and length only: the body never comes
    stream = _packet(10) + head
    lengths = PacketLengths(limit=1024 * 1024)
    verdicts = [lengths.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk)]
    assert verdicts[-1] is not None and "26214400 bytes" in verdicts[-1]
    assert all(v is None for v in verdicts[:-1])


def test_a_fifth_length_byte_is_malformed() -> None:
    assert PacketLengths(limit=10**9).feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])) == (
        "malformed remaining length"
    )
