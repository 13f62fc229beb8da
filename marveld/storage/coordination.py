"""What replicas on one database tell each other, and the locks that make one of them the
leader, backend-neutral; the PostgreSQL side is marveld/storage/postgres/coordination.py.

On SQLite there is one process and so nothing to coordinate: :class:`LocalCoordination`
is always the leader, never hears a signal, and its cluster locks are always free. On
PostgreSQL a write that other replicas must hear of (a cache entry replaced or dropped,
notifications written, a webhook delivery recorded) sends a NOTIFY in its own
transaction, so the signal goes out exactly when, and only if, the write commits.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio


@dataclass(frozen=True, slots=True)
class Signal:
    """What a replica committed that the others must hear of (sent and received)."""

    keys: tuple[str, ...] = ()  # cache keys whose answers changed or went
    every_key: bool = False  # ... all of them (a purge, or too many keys to name)
    position: int | None = None  # the notification saga reached this cursor
    webhook: bool = False  # a webhook delivery waits to be applied


class Hearing(enum.Enum):
    """Whether this replica hears the others' signals."""

    LISTENING = "listening"
    # The database answers but this replica does not listen (yet): another replica's
    # write may go unheard, so what it keeps in memory may be stale.
    LOST = "lost"
    # The database cannot be reached at all: nothing can commit there, so nothing is
    # missed (what was missed before is made up for when listening resumes).
    UNREACHABLE = "unreachable"


OnSignal = Callable[[Signal], None]
OnHearing = Callable[[Hearing], None]


class Lease:
    """Leadership held: :meth:`lost` returns when it is not any more (the database
    connection that holds it failed)."""

    def __init__(self) -> None:
        self._lost = trio.Event()

    def end(self) -> None:
        self._lost.set()

    async def lost(self) -> None:
        await self._lost.wait()


T = TypeVar("T")

Decide = Callable[[Mapping[str, float]], tuple[Mapping[str, float | None], T]]
"""Given the stored values of some keys (absent ones left out): the values to store
(None: delete the key) and a result."""


class SharedRates(Protocol):
    """Numbers by key that every replica reads and changes, one change at a time per key:
    the login throttle's counts (each a GCRA time, seconds since the epoch)."""

    async def change(self, keys: Sequence[str], decide: Decide[T], *, expired: float) -> T:
        """In one transaction with ``keys`` locked: store what ``decide`` says, return its
        result. A few keys whose value is below ``expired`` are deleted on the way."""


class Coordination(Protocol):
    """The store's coordination: signals between replicas, the leader, cluster locks."""

    @property
    def shared(self) -> bool:
        """Whether other processes may use the same database."""

    async def watch(
        self,
        on_signal: OnSignal,
        on_hearing: OnHearing,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_signal`` (synchronously, in trio) for each signal another replica
        sends, until cancelled, and ``on_hearing`` each time the :class:`Hearing` changes
        (LISTENING again after anything else: signals may have been missed)."""

    def leadership(self) -> AbstractAsyncContextManager[Lease]:
        """Wait until this replica is the leader; leadership lasts until the block ends
        or :meth:`Lease.lost` returns."""

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Try the cluster-wide lock ``name`` (e.g. ``"sync"``): True when taken (held
        until the block ends), False when another replica holds it."""

    def rates(self) -> SharedRates | None:
        """The shared rate counts; None when no other process shares the database."""


class LocalCoordination:
    """SQLite: one process, so always the leader, no signals, every lock free."""

    shared = False

    async def watch(
        self,
        on_signal: OnSignal,
        on_hearing: OnHearing,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        on_hearing(Hearing.LISTENING)
        task_status.started()
        await trio.sleep_forever()

    @asynccontextmanager
    async def leadership(self) -> AsyncIterator[Lease]:
        yield Lease()

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        yield True

    def rates(self) -> None:
        return None


class Announcing:
    """What a repository writes that other replicas must hear of, said in the writing
    transaction. The SQLite twins say nothing (one process); the PostgreSQL twins send a
    NOTIFY (``postgres.coordination.PgAnnouncing``)."""

    def _announce(self, conn: object, signal: Signal) -> None:
        return None
