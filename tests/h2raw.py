"""A raw HTTP/2 peer for the tests that play a hostile client: h2's client state machine
with every check off, over a trio socket, so a test can send what no polite client would
(HEADERS then RST_STREAM at once, endless CONTINUATION frames, bad metadata) and read
exactly what the server answered, frame by frame."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import hpack
import trio
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def grpc_request(
    path: str = "/grpc.health.v1.Health/Check", *extra: tuple[str, str]
) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def message(payload: bytes = b"") -> bytes:
    """One gRPC length-prefixed message."""
    return struct.pack(">?I", False, len(payload)) + payload


@dataclass
class Answer:
    """What the server said on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    reset: ErrorCodes | int | None = None
    ended: bool = False

    @property
    def status(self) -> str | None:
        """grpc-status, from the trailers or a trailers-only response."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    @property
    def message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


class RawH2:
    """One HTTP/2 connection to ``port``. ``events`` keeps every event read so far."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.h2.encoder = _PlainEncoder()
        # A draining server goes on answering the streams up to the GOAWAY's last stream
        # id (RFC 9113 §6.8), but h2's client reads no frame after a GOAWAY: read them.
        on_goaway = self.h2._frame_dispatch_table[GoAwayFrame]

        def goaway_then_open(frame: GoAwayFrame) -> Any:
            found = on_goaway(frame)
            self.h2.state_machine.state = ConnectionState.CLIENT_OPEN
            return found

        self.h2._frame_dispatch_table[GoAwayFrame] = goaway_then_open
        self.events: list[Event] = []
        self.answers: dict[int, Answer] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False

    @classmethod
    async def connect(cls, port: int, *, handshake: bool = True) -> RawH2:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if handshake:
            peer.h2.initiate_connection()
            await peer.flush()
        return peer

    async def flush(self) -> None:
        if data := self.h2.data_to_send():
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def new_stream(self) -> int:
        return int(self.h2.get_next_available_stream_id())

    async def request(
        self, headers: Iterable[tuple[str, str]], body: bytes | None = b"", *, end: bool = True
    ) -> int:
        stream_id = self.new_stream()
        self.h2.send_headers(stream_id, list(headers), end_stream=body is None and end)
        if body is not None:
            self.h2.send_data(stream_id, message(body) if body == b"" else body, end_stream=end)
        await self.flush()
        return stream_id

    def headers_then_reset(self, headers: list[tuple[str, str]]) -> None:
        """Queue HEADERS and at once RST_STREAM(CANCEL) for a new stream (rapid reset)."""
        stream_id = self.new_stream()
        self.h2.send_headers(stream_id, headers)
        self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)

    def header_block_without_end(self, stream_id: int, block: bytes) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = block
        return bytes(frame.serialize())

    @staticmethod
    def continuation(stream_id: int, block: bytes, *, last: bool = False) -> bytes:
        frame = ContinuationFrame(stream_id)
        frame.data = block
        if last:
            frame.flags.add("END_HEADERS")
        return bytes(frame.serialize())

    async def read(self) -> list[Event]:
        """The next events the server sends; [] and ``closed`` once it has closed."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.h2.receive_data(data)
        for event in events:
            self._note(event)
        self.events.extend(events)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.flush()  # SETTINGS and PING acknowledgements
        return events

    def _note(self, event: Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        answer = self.answers.setdefault(stream_id, Answer()) if stream_id else None
        if isinstance(event, ResponseReceived) and answer is not None:
            answer.headers = dict(_text(event.headers))
        elif isinstance(event, TrailersReceived) and answer is not None:
            answer.trailers = dict(_text(event.headers))
        elif isinstance(event, StreamReset) and answer is not None:
            answer.reset = event.error_code
        elif isinstance(event, StreamEnded) and answer is not None:
            answer.ended = True
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event

    async def until_closed(self) -> None:
        """Read until the server closes the connection."""
        while not self.closed:
            await self.read()

    async def until_answered(self, stream_id: int) -> Answer:
        """Read until ``stream_id`` ends or is reset (or the connection closes)."""
        while not self.closed:
            answer = self.answers.get(stream_id)
            if answer is not None and (answer.ended or answer.reset is not None):
                return answer
            await self.read()
        return self.answers.get(stream_id, Answer())

    async def settings(self) -> dict[int, int]:
        """The server's first SETTINGS."""
        while not self.closed:
            for event in self.events:
                if isinstance(event, RemoteSettingsChanged):
                    return {int(k): v.new_value for k, v in event.changed_settings.items()}
            await self.read()
        raise AssertionError("closed before SETTINGS")

    async def aclose(self) -> None:
        await self.stream.aclose()


class _PlainEncoder(hpack.Encoder):
    """No Huffman coding: hpack's pure-Python coder took 170 s for a 1 MB header."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return bytes(super().encode(headers, huffman=False))


def _text(headers: object) -> Iterable[tuple[str, str]]:
    for name, value in headers:  # type: ignore[attr-defined]
        yield (
            name.decode() if isinstance(name, bytes) else name,
            value.decode() if isinstance(value, bytes) else value,
        )
