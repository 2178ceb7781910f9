"""Hand-built MQTT 3.1.1 packets, for the tools that must say what no well-behaved client says:
the attack drills, the attack benchmark and the broker tests (a wrong password under a live
client's id, a CONNECT trickled byte by byte, a packet whose length header lies).

Only the encoding lives here (§2.2.3 remaining length, §1.5.3 strings, CONNECT §3.1, PUBLISH
§3.3); sockets stay with the callers.
"""

from __future__ import annotations

import socket
import struct

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30


def mqtt_string(value: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string (§1.5.3)."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def remaining_length(n: int) -> bytes:
    """The variable-length "remaining length" of a fixed header (§2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    keepalive_s: int = 60,
    *,
    clean: bool = True,
    will: tuple[str, bytes] | None = None,
    will_qos: int = 1,
    will_retain: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT (§3.1)."""
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if will is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += mqtt_string(will[0]) + mqtt_string(will[1])
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    body = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return packet(CONNECT, body)


def publish_packet(
    topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, packet_id: int = 1
) -> bytes:
    """A PUBLISH (§3.3); ``packet_id`` is sent only with QoS 1 or 2."""
    body = mqtt_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(PUBLISH | (qos << 1) | int(retain), body)


def read_connack(sock: socket.socket) -> int:
    """The CONNACK's return code from ``sock`` (-1: the broker closed or sent something else)."""
    ack = b""
    while len(ack) < 4:
        try:
            chunk = sock.recv(4 - len(ack))
        except OSError:
            return -1
        if not chunk:
            break
        ack += chunk
    return ack[3] if len(ack) == 4 and ack[0] == CONNACK else -1
