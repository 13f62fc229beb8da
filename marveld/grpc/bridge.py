"""From a grpclib handler (asyncio) into trio code, once per call, and back with a status.

Domain errors become gRPC statuses here, in one place. Nothing crosses the bridge as an
exception but ``GRPCError``: trio code returns either the reply or the status to raise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpclib.const
import grpclib.server
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from marveld import correlation
from marveld.domain import errors
from marveld.grpc import wire

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Reply = TypeVar("Reply")

# A call without a client deadline still ends: no handler runs longer than this.
MAX_CALL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may know of the call besides its message."""

    authorization: str | None
    peer: str
    correlation_id: str | None = None


TrioHandler = Callable[[Any, CallContext], Awaitable[Any]]
"""Runs in trio: the reply (a message, or bytes already encoded), or a MarveldError."""

FastPath = Callable[[Any, CallContext], bytes | None]
"""Runs on the asyncio side, synchronously: the encoded reply when it can answer without
entering trio (a fresh cached answer), else None. It must not block and should not raise."""


def status_for(exc: errors.MarveldError) -> GRPCError:
    """The one translation from domain errors to gRPC statuses."""
    match exc:
        case errors.InvalidArgument():
            return GRPCError(Status.INVALID_ARGUMENT, str(exc))
        case errors.NotFound():
            return GRPCError(Status.NOT_FOUND, str(exc))
        case errors.AlreadyExists():
            return GRPCError(Status.ALREADY_EXISTS, str(exc))
        case errors.Unauthenticated():
            return GRPCError(Status.UNAUTHENTICATED, str(exc))
        case errors.PermissionDenied():
            return GRPCError(Status.PERMISSION_DENIED, str(exc))
        case errors.CursorExpired():
            return GRPCError(Status.FAILED_PRECONDITION, str(exc))
        case errors.ShuttingDown():
            return GRPCError(Status.UNAVAILABLE, str(exc))
        case errors.DatabaseUnavailable():
            return GRPCError(
                Status.UNAVAILABLE,
                f"the database is unavailable; retry in {exc.retry_after:g} s",
                [wire.retry_info(exc.retry_after)],
            )
        case errors.ResourceExhausted():
            return wire.rate_limited(str(exc), exc.retry_after)
        case errors.UpstreamRejected() if exc.is_credentials_problem:
            log.error("the Marvel API refused marveld's keys: %s", exc)
            return GRPCError(Status.UNAVAILABLE, "the Marvel API refused marveld's credentials")
        case errors.UpstreamRejected():
            return GRPCError(Status.INVALID_ARGUMENT, f"the Marvel API refused the query: {exc}")
        case errors.UpstreamError():
            return GRPCError(Status.UNAVAILABLE, f"the Marvel API is unavailable: {exc}")
        case _:
            log.error("unmapped error %r", exc)
            return GRPCError(Status.INTERNAL, "internal error")


def _domain_error(exc: BaseException) -> errors.MarveldError | None:
    """The MarveldError in ``exc``, looking inside exception groups."""
    if isinstance(exc, errors.MarveldError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _domain_error(inner)) is not None:
                return found
    return None


async def _call_in_trio(
    fn: TrioHandler, request: Any, ctx: CallContext, seconds: float
) -> tuple[Any, GRPCError | None]:
    """Runs in trio: the reply, or the status the asyncio side should raise."""
    # trio-asyncio copies the asyncio task's context into this task today; set the id
    # anyway so the services' log lines carry it whatever the bridge does.
    correlation.CORRELATION_ID.set(ctx.correlation_id)
    try:
        with trio.move_on_after(seconds) as scope:
            return await fn(request, ctx), None
    except Exception as exc:
        domain = _domain_error(exc)
        if domain is None:
            log.exception("handler failed")
            return None, GRPCError(Status.INTERNAL, "internal error")
        return None, status_for(domain)
    assert scope.cancelled_caught
    return None, GRPCError(Status.DEADLINE_EXCEEDED, "deadline exceeded")


def unary(
    fn: TrioHandler, request_type: type, reply_type: type, *, fast: FastPath | None = None
) -> grpclib.const.Handler:
    """A grpclib unary handler: reads the request, tries ``fast`` (no trio), else hops into
    trio once, and replies."""
    reader = wire.Request(request_type)

    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await reader.receive(stream)
        ctx = context_of(stream)
        if fast is not None and (encoded := _try_fast(fast, request, ctx)) is not None:
            await stream.send_message(encoded)
            return
        seconds = MAX_CALL_SECONDS
        if stream.deadline is not None:
            seconds = min(seconds, stream.deadline.time_remaining())
        reply, error = await trio_asyncio.trio_as_aio(_call_in_trio)(fn, request, ctx, seconds)
        if error is not None:
            await wire.refuse(stream, error)  # with a retry-after trailer when there is one
            return
        await stream.send_message(reply)

    return grpclib.const.Handler(
        handle, grpclib.const.Cardinality.UNARY_UNARY, request_type, reply_type
    )


def context_of(stream: grpclib.server.Stream[Any, Any]) -> CallContext:
    value = stream.metadata.get("authorization") if stream.metadata else None
    return CallContext(
        authorization=value if isinstance(value, str) else None,
        peer=_peer(stream),
        correlation_id=correlation.CORRELATION_ID.get(),
    )


def _try_fast(fast: FastPath, request: Any, ctx: CallContext) -> bytes | None:
    try:
        return fast(request, ctx)
    except Exception:
        log.exception("fast path failed; taking the slow path")
        return None


class PassthroughCodec(ProtoCodec):
    """grpclib's protobuf codec, except that ``bytes`` go out as they are: a cached answer
    is encoded once and sent many times."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return super().encode(message, message_type)


def _peer(stream: grpclib.server.Stream[Any, Any]) -> str:
    addr = stream.peer.addr() if stream.peer is not None else None
    return str(addr[0]) if addr else "unknown"


class Service:
    """An IServable grpclib accepts: a name and its methods' handlers."""

    def __init__(self, name: str, methods: dict[str, grpclib.const.Handler]) -> None:
        self.name = name
        self._mapping = {f"/{name}/{method}": h for method, h in methods.items()}

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping
