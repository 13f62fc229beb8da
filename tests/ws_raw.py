"""A raw WebSocket peer's one courtesy: answering the server's pings.

The daemon closes a WebSocket whose peer sends nothing for two ping intervals, so a test's
raw-socket subscriber that must stay open (to be dropped abruptly later) runs
:func:`answer_pings` beside it. Server frames are unmasked (RFC 6455 §5.1); a client's
pong must be masked, with the ping's payload.
"""

from __future__ import annotations

import os
import struct

import trio

PING, PONG = 0x9, 0xA


async def answer_pings(stream: trio.SocketStream) -> None:
    """Read the server's frames until the socket closes (either side), and answer each
    ping with a pong. Every other frame is skipped."""
    buffer = b""
    try:
        while data := await stream.receive_some(65536):
            buffer += data
            while (frame := _frame(buffer)) is not None:
                opcode, payload, size = frame
                buffer = buffer[size:]
                if opcode == PING:
                    await stream.send_all(pong(payload))
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


def pong(payload: bytes) -> bytes:
    """A client's masked pong frame carrying ``payload`` (at most 125 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | PONG, 0x80 | len(payload)]) + mask + masked


def _frame(buffer: bytes) -> tuple[int, bytes, int] | None:
    """The first whole frame in ``buffer``: its opcode, payload and size; None if partial."""
    if len(buffer) < 2:
        return None
    length, start = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), start = struct.unpack("!H", buffer[2:4]), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), start = struct.unpack("!Q", buffer[2:10]), 10
    if len(buffer) < start + length:
        return None
    return buffer[0] & 0x0F, buffer[start : start + length], start + length
