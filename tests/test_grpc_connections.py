"""The gRPC port against hostile HTTP/2 peers (marveld/grpc/connections.py), each played
with raw frames over a real socket to a real daemon: rapid reset, CONTINUATION floods,
oversized and malformed headers, connections that never become useful, too many
connections. Asserted: what the peer receives (statuses, RST_STREAM and GOAWAY codes, the
connection closed) and that the daemon keeps serving everyone else, with no ERROR logged."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from grpclib.const import Status
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from marveld.listen import BACKLOG
from marveld.services.security import MAX_TOKEN_BYTES
from marveld.sim import SimHandle
from tests.calls import raw_call, status_of
from tests.conftest import Clock, Running, running_daemon
from tests.h2raw import RawH2, grpc_request, message

HEALTH = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture
async def daemon(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[Running]:
    env = {
        "MARVELD_GRPC_MAX_RESETS": "50",
        "MARVELD_GRPC_MAX_CONCURRENT_STREAMS": "8",
        "MARVELD_GRPC_HANDSHAKE_TIMEOUT": "0.5s",
        "MARVELD_GRPC_IDLE_TIMEOUT": "1s",
        "MARVELD_GRPC_MAX_CONNECTIONS": "40",
    }
    async with running_daemon(nursery, sim, tmp_path, clock, **env) as m:
        yield m
        for stream in OPENED:
            await stream.aclose()
        OPENED.clear()


OPENED: list[trio.SocketStream] = []  # closed by the daemon fixture, whatever the test did


async def connect(m: Running) -> RawH2:
    peer = await RawH2.connect(m.endpoints.grpc_port)
    OPENED.append(peer.stream)
    return peer


async def tcp(m: Running) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", m.endpoints.grpc_port)
    OPENED.append(stream)
    return stream


async def health_still_serves(m: Running) -> None:
    peer = await connect(m)
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    await peer.aclose()


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_the_server_advertises_its_stream_and_header_limits(daemon: Running) -> None:
    peer = await connect(daemon)
    settings = await peer.settings()
    assert settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 8
    assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 16384
    await peer.aclose()


async def test_rapid_reset_gets_goaway_enhance_your_calm(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await connect(daemon)
    for _ in range(2000):
        peer.headers_then_reset(grpc_request(HEALTH))
    await peer.flush()
    with trio.fail_after(10):
        await peer.until_closed()
    assert peer.goaway is not None
    assert peer.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert b"grpc.max_resets" in (peer.goaway.additional_data or b"")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("GOAWAY ENHANCE_YOUR_CALM" in w for w in warnings), warnings
    await health_still_serves(daemon)
    no_errors(caplog)


async def test_reset_streams_still_count_until_their_handlers_end(daemon: Running) -> None:
    """Twenty HEADERS+RST pairs and a real call in one write: the pairs' handlers still
    count against the advertised 8 streams until they have unwound, so the call is refused
    (REFUSED_STREAM: safe to retry); retried, it is served."""
    peer = await connect(daemon)
    await peer.settings()
    for _ in range(20):
        peer.headers_then_reset(grpc_request(HEALTH))
    call = peer.new_stream()
    peer.h2.send_headers(call, grpc_request(HEALTH))
    peer.h2.send_data(call, message(), end_stream=True)
    await peer.flush()
    with trio.fail_after(10):
        answer = await peer.until_answered(call)
    assert answer.reset == ErrorCodes.REFUSED_STREAM
    with trio.fail_after(10):
        answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    assert not peer.closed  # 20 resets and a refusal are within the budget of 50
    await peer.aclose()


async def test_a_continuation_flood_is_cut_off(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await connect(daemon)
    stream_id = peer.new_stream()
    await peer.send_raw(peer.header_block_without_end(stream_id, b"\x00\x03abc\x03xyz"))
    junk = RawH2.continuation(stream_id, b"\x00\x03abc\x03xyz" * 100)
    with trio.fail_after(10):
        try:
            for _ in range(1000):
                await peer.send_raw(junk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closed by the server while we were still sending
        await peer.until_closed()
    assert peer.goaway is None or peer.goaway.error_code != ErrorCodes.NO_ERROR
    await health_still_serves(daemon)
    no_errors(caplog)


async def test_an_oversized_token_is_unauthenticated_and_the_connection_lives_on(
    daemon: Running,
) -> None:
    peer = await connect(daemon)
    for size in (20_000, 100_000, 1_000_000):
        token = ("authorization", "Bearer " + "A" * size)
        answer = await peer.until_answered(
            await peer.request(grpc_request("/marvel.v1.UserService/GetMyProfile", token))
        )
        assert answer.status == str(Status.UNAUTHENTICATED.value), answer
        assert f"at most {MAX_TOKEN_BYTES} are accepted" in answer.message
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    assert not peer.closed
    await peer.aclose()


async def test_oversized_headers_are_resource_exhausted(daemon: Running) -> None:
    peer = await connect(daemon)
    extra = [(f"x-pad-{i}", "p" * 1000) for i in range(20)]
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH, *extra)))
    assert answer.status == str(Status.RESOURCE_EXHAUSTED.value)
    assert "grpc.max_header_list_size" in answer.message
    assert not peer.closed
    await peer.aclose()


@pytest.mark.parametrize(
    ("header", "status", "named"),
    [
        (("grpc-timeout", "soon"), Status.INVALID_ARGUMENT, "grpc-timeout"),
        (("grpc-timeout", "123456789S"), Status.INVALID_ARGUMENT, "grpc-timeout"),
        (("grpc-timeout", "-1S"), Status.INVALID_ARGUMENT, "grpc-timeout"),
        (("x-trace-bin", "not base64!"), Status.INVALID_ARGUMENT, "x-trace-bin"),
        (("x-trace-bin", "QUJDR"), Status.INVALID_ARGUMENT, "x-trace-bin"),
        (("grpc-encoding", "gzip"), Status.UNIMPLEMENTED, "gzip"),
        (("grpc-encoding", "br"), Status.UNIMPLEMENTED, "br"),
    ],
)
async def test_malformed_metadata_gets_a_clear_status(
    daemon: Running,
    caplog: pytest.LogCaptureFixture,
    header: tuple[str, str],
    status: Status,
    named: str,
) -> None:
    peer = await connect(daemon)
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH, header)))
    assert answer.status == str(status.value), answer
    assert named in answer.message
    if status is Status.UNIMPLEMENTED:
        assert answer.headers["grpc-accept-encoding"] == "identity"
    # The connection is still good for the next call.
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    await peer.aclose()
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("m")]
    assert len([r for r in lines if HEALTH in r.getMessage()]) <= 2  # one access line each
    no_errors(caplog)


async def test_well_formed_metadata_is_served(daemon: Running) -> None:
    peer = await connect(daemon)
    extra = [("grpc-timeout", "10S"), ("x-trace-bin", "QUJD"), ("grpc-encoding", "identity")]
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH, *extra)))
    assert answer.status == "0"
    await peer.aclose()


async def test_requests_that_are_not_grpc_get_a_status_not_unknown(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await connect(daemon)
    no_te = [h for h in grpc_request(HEALTH) if h[0] != "te"]
    answer = await peer.until_answered(await peer.request(no_te))
    assert answer.status == str(Status.INVALID_ARGUMENT.value)
    json = [(k, "application/json" if k == "content-type" else v) for k, v in grpc_request()]
    answer = await peer.until_answered(await peer.request(json))
    assert answer.headers[":status"] == "415"
    assert answer.status == str(Status.INVALID_ARGUMENT.value)
    no_path = [h for h in grpc_request(HEALTH) if h[0] != ":path"]
    answer = await peer.until_answered(await peer.request(no_path))
    assert answer.reset == ErrorCodes.PROTOCOL_ERROR
    assert not peer.closed
    await peer.aclose()
    no_errors(caplog)


async def test_header_bytes_that_are_not_ascii_close_only_that_connection(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await connect(daemon)
    await peer.request(grpc_request(HEALTH, ("x-name", "caf\u00e9")))
    with trio.fail_after(10):
        await peer.until_closed()
    assert peer.goaway is not None
    assert peer.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    await health_still_serves(daemon)
    no_errors(caplog)


async def test_silent_and_half_preface_connections_are_closed_after_the_handshake_timeout(
    daemon: Running,
) -> None:
    silent = [await tcp(daemon) for _ in range(30)]
    half = [await tcp(daemon) for _ in range(5)]
    for stream in half:
        await stream.send_all(b"PRI * HTTP/2.0\r\n")
    with trio.fail_after(10):
        for stream in silent + half:
            while await _receive(stream):  # the server's SETTINGS, then EOF
                pass
    await health_still_serves(daemon)


async def test_a_silent_connection_is_sent_nothing_before_it_is_closed(daemon: Running) -> None:
    """The server's SETTINGS wait for the client's preface: nothing of HTTP/2 is built for
    a connection that never sends it (marveld/grpc/connections.py)."""
    stream = await tcp(daemon)
    with trio.fail_after(10):
        assert await _receive(stream) == b""


async def test_a_client_trickling_its_preface_and_call_a_byte_at_a_time_is_served(
    daemon: Running,
) -> None:
    peer = RawH2(await tcp(daemon))
    peer.h2.initiate_connection()
    stream_id = peer.new_stream()
    peer.h2.send_headers(stream_id, grpc_request(HEALTH))
    peer.h2.send_data(stream_id, message(), end_stream=True)
    with trio.fail_after(10):
        for byte in peer.h2.data_to_send():
            await peer.send_raw(bytes([byte]))
        answer = await peer.until_answered(stream_id)
    assert answer.status == "0"


async def test_bytes_that_are_not_the_preface_get_goaway_protocol_error(daemon: Running) -> None:
    peer = RawH2(await tcp(daemon))
    await peer.send_raw(b"PRI * HTTP/1.1\r\n")  # a preface's first bytes, then not one
    with trio.fail_after(10):
        await peer.until_closed()
    assert peer.goaway is not None
    assert peer.goaway.error_code == ErrorCodes.PROTOCOL_ERROR


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


async def test_an_idle_connection_gets_goaway_no_error(daemon: Running) -> None:
    peer = await connect(daemon)
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    with trio.fail_after(10):
        await peer.until_closed()
    assert peer.goaway is not None
    assert peer.goaway.error_code == ErrorCodes.NO_ERROR


async def test_a_connection_with_an_open_stream_is_not_idle(daemon: Running) -> None:
    """A Health/Watch stream stays open past the idle timeout (1 s): the server only
    pings it. The test waits for the server's first keepalive PING... which with the 30 s
    default does not come, so it waits for the stream to outlive the idle timeout by
    watching the health of a second connection close idle first."""
    watching = await connect(daemon)
    await watching.request(grpc_request(WATCH), end=False)
    other = await connect(daemon)
    with trio.fail_after(10):
        await other.until_closed()  # idle: closed after 1 s
    assert other.goaway is not None
    assert not watching.closed
    await watching.aclose()


async def test_connections_past_the_cap_are_refused_with_one_warning(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    peers = [await connect(daemon) for _ in range(40)]
    for peer in peers:
        await peer.settings()
    extra = [await tcp(daemon) for _ in range(5)]
    with trio.fail_after(10):
        for stream in extra:
            assert await _receive(stream) == b""  # closed at once: not even SETTINGS
    warnings = [r.getMessage() for r in caplog.records if "grpc.max_connections" in r.getMessage()]
    assert len(warnings) == 1, warnings
    await peers.pop().aclose()
    with trio.fail_after(10):
        while True:  # the slot frees once the server has seen the close
            peer = await connect(daemon)
            await peer.read()
            if not peer.closed:
                break
    answer = await peer.until_answered(await peer.request(grpc_request(HEALTH)))
    assert answer.status == "0"
    for peer in peers:
        await peer.aclose()


async def test_a_peer_that_stops_answering_pings_is_closed(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    env = {"MARVELD_GRPC_KEEPALIVE_TIME": "0.2s", "MARVELD_GRPC_KEEPALIVE_TIMEOUT": "0.3s"}
    async with running_daemon(nursery, sim, tmp_path, clock, **env) as m:
        peer = await RawH2.connect(m.endpoints.grpc_port)
        await peer.request(grpc_request(WATCH), end=False)
        # Read without acknowledging: the raw bytes, not h2 (which would answer PINGs).
        with trio.fail_after(10):
            while await _receive(peer.stream):
                pass
        await peer.aclose()


async def test_ordinary_clients_are_unaffected(daemon: Running) -> None:
    for _ in range(20):
        reply = await daemon.client.call(raw_call(HEALTH, b""))
        assert reply is not None
        assert reply.data == b"\x08\x01"  # status: SERVING
    error = await status_of(daemon, raw_call("/marvel.v1.Nothing/Here", b""))
    assert error.status is Status.UNIMPLEMENTED


ASYNCIO_BACKLOG = 100  # what loop.create_server listens with unless told


def somaxconn() -> int | None:
    """The kernel's cap on a listen backlog; None where /proc/sys is hidden (the unit's
    ProcSubset=pid, as .ci/sandbox.py applies it)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except FileNotFoundError:
        return None


def listen_backlog(port: int) -> int | None:
    """The accept-queue length a listening socket on ``port`` was given (``ss``'s Send-Q
    for a listener), or None where ``ss`` is missing."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


async def test_both_ports_queue_a_burst_of_connections(daemon: Running) -> None:
    """asyncio listens again on the socket it is given, with a backlog of 100 unless told:
    1,500 clients connecting at once (after a restart, say) overflowed the kernel's queue
    and one in three was reset. Both ports queue as many as the system allows."""
    cap = somaxconn()
    for port in (daemon.endpoints.grpc_port, daemon.endpoints.http_port):
        backlog = listen_backlog(port)
        if backlog is None:
            pytest.skip("ss (iproute2) is not installed: the listen backlog cannot be read")
        if cap is None:  # the kernel's cap unknown: at least more than asyncio's default
            assert backlog > ASYNCIO_BACKLOG, port
        else:
            assert backlog == min(BACKLOG, cap), port
