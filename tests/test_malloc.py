"""The daemon caps glibc's malloc arenas (marveld/malloc.py) unless the operator chose, and
trims its heap after a flood of closed connections."""

from __future__ import annotations

import platform

import pytest
import trio

from marveld.listen import ConnectionCap
from marveld.malloc import HeapReturn, limit_arenas, trimmer

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's"
)


@glibc_only
def test_the_arenas_are_capped_when_the_environment_says_nothing() -> None:
    assert limit_arenas({}) is True


def test_malloc_arena_max_in_the_environment_is_left_to_glibc() -> None:
    assert limit_arenas({"MALLOC_ARENA_MAX": "8"}) is False


@glibc_only
def test_malloc_trim_is_found_and_runs() -> None:
    trim = trimmer()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released


async def test_a_flood_of_closed_connections_trims_the_heap_once() -> None:
    """Told of each closed connection (by the ports' caps), the heap is trimmed once
    ``closes`` have closed since the last trim, and not for fewer."""
    trims: list[int] = []
    second = trio.Event()

    def trim() -> None:
        trims.append(1)
        if len(trims) == 2:
            second.set()

    heap = HeapReturn(interval=0.01, closes=3, trim=trim)
    cap = ConnectionCap("http", 10, "http.max_connections", on_release=heap.closed)
    for _ in range(5):
        assert cap.admit()
    cap.release()
    cap.release()
    assert not heap.trim_if_due()
    cap.release()
    assert heap.trim_if_due()
    assert not heap.trim_if_due()  # the count starts again
    assert trims == [1]
    async with trio.open_nursery() as nursery:
        await nursery.start(heap.run)
        cap.release()
        cap.release()
        for _ in range(3):
            assert cap.admit()
            cap.release()
        with trio.fail_after(5):
            await second.wait()  # the checker's next round
        nursery.cancel_scope.cancel()
    assert heap.trims == 2
    assert cap.open == 0
